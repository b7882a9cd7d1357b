"""The monitoring database (SQLAlchemy: SQLite by default, PostgreSQL by URL).

Tables: predictions (one row per served text), generations (one row per answer of a causal LM: prompt,
completion, token counts, time to first token), feedback (the true label of a prediction; "good"/"bad" for an
answer), checks (each drift/accuracy figure computed, for charts and reports), alerts (firing and resolved events).
Predictions and generations are written by a `PredictionLog` each: the request path appends to a list, a thread writes the list
in one transaction every flush_interval (or, durable, as soon as a request waits on it); stop() writes what
is left. A new SQLite file is created readable by its owner only: it holds the served texts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, InvalidStateError
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

log = logging.getLogger("tunelab.monitor")
metadata = sa.MetaData()

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("text_sha256", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("label", sa.Text, nullable=False),  # multi-label: the chosen labels joined by '|'
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("tokens", sa.Integer, nullable=False),
)
generations = sa.Table(
    "generations", metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the response id without its prefix (last 2 digits: the choice)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("endpoint", sa.String(32), nullable=False),  # chat | completion
    sa.Column("prompt_sha256", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text, nullable=True),  # what the model read (through the chat template for chat)
    sa.Column("completion", sa.Text, nullable=True),
    sa.Column("finish_reason", sa.String(16), nullable=False),  # stop | length | error
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("ttft_ms", sa.Float, nullable=True),  # none when no token came
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("tokens_per_s", sa.Float, nullable=True),  # decoding rate after the first token
)
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("predicted", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
checks = sa.Table(
    "checks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("window", sa.Integer, nullable=False),
)
alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("rule", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("limit_value", sa.Float, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def open_database(url: str) -> sa.Engine:
    """Engine for `url`, tables created if missing. SQLite gets WAL (readers do not block the writer)."""
    from tunelab.errors import TunelabError

    try:
        _create_private(sa.engine.make_url(url))
        engine = sa.create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            @sa.event.listens_for(engine, "connect")
            def _pragmas(connection, _record):
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()
        metadata.create_all(engine)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise TunelabError(f"monitor database {_safe(url)}: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0]}") from None
    return engine


def _create_private(url: sa.URL) -> None:
    """Create a new SQLite database file with mode 0600 (the umask's usual 0644 would let every local user read
    the logged texts); SQLite gives its -wal and -shm files the database file's mode. An existing file keeps the
    mode its owner gave it."""
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:  # it exists; or its folder does not, which SQLite reports in its own words below
        pass


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


class PredictionLog:
    """Batched, off-request-path writer of prediction rows.

    Not durable (serve.monitor.durability: async): add() returns at once and a thread writes what is pending every
    flush_interval_s, so a kill -9 loses up to about that much of what was answered. Durable (sync): add() returns
    a Future done once its rows are committed, and the thread writes as soon as rows wait, all of them in one
    transaction: requests that arrive during a write share the next one (group commit).
    """

    MAX_PENDING = 200_000  # rows kept while the database is away; beyond it the oldest are dropped (and counted)

    def __init__(self, engine: sa.Engine, flush_interval_s: float = 1.0, retention_days: float | None = None,
                 durable: bool = False, table: sa.Table = predictions):
        self.engine, self.interval, self.retention, self.durable = engine, flush_interval_s, retention_days, durable
        self.table = table
        self.pending: list[dict] = []
        self.waiting: list[tuple[Future, set[str]]] = []  # durable: each add()'s Future and its rows' ids
        self.lock = threading.Lock()
        self.wake = threading.Event()  # durable: rows wait; also set to stop
        self.stopping = threading.Event()
        self.written = 0
        self.commits = 0  # transactions that wrote rows (durable: written / commits = requests sharing one commit)
        self.dropped = 0  # rows the database refused (bad data) or that overflowed MAX_PENDING
        self.thread = threading.Thread(target=self._run, name=f"{table.name}-log", daemon=True)
        self.last_purge = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def add(self, rows: list[dict]) -> Future | None:
        """Queue rows for writing; durable: the Future that says when they are committed (or why not)."""
        with self.lock:
            self.pending.extend(rows)
            if not self.durable:
                over = len(self.pending) - self.MAX_PENDING
                if over > 0:
                    del self.pending[:over]
                    self.dropped += over
                return None
            written: Future = Future()
            self.waiting.append((written, {row["id"] for row in rows}))
        self.wake.set()
        return written

    def flush(self) -> int:
        """Write what is pending in one transaction; return how many rows were written."""
        with self.lock:
            rows, self.pending = self.pending, []
            waiting, self.waiting = self.waiting, []
        try:
            written, refused = self._write(rows, keep_on_failure=not self.durable)
        except BaseException as exc:  # whatever happened, no request may wait for ever
            _settle(waiting, failed=exc)
            if isinstance(exc, sa.exc.SQLAlchemyError):  # the database is away (logged): the next round retries
                return 0
            raise
        _settle(waiting, refused=refused)
        return written

    def _write(self, rows: list[dict], keep_on_failure: bool) -> tuple[int, set[str]]:
        """-> (rows written, ids of rows the database refused). The database away: raise -- after putting the rows
        back for the next try when `keep_on_failure` (durable rows are not: their requests are answered with an error)."""
        if not rows:
            return 0, set()
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), rows)
        except (sa.exc.DataError, sa.exc.IntegrityError, ValueError):  # a row the database refuses: write the others
            return self._one_by_one(rows)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("prediction log: write of %d rows failed (%s); %s", len(rows), type(exc).__name__,
                        "retrying" if keep_on_failure else "their requests get 503")
            if keep_on_failure:
                with self.lock:
                    self.pending[:0] = rows
            raise
        self.written += len(rows)
        self.commits += 1
        return len(rows), set()

    def _one_by_one(self, rows: list[dict]) -> tuple[int, set[str]]:
        done, refused = 0, set()
        for row in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.table.insert(), [row])
                done += 1
            except (sa.exc.DataError, sa.exc.IntegrityError, ValueError) as exc:
                self.dropped += 1
                refused.add(row.get("id"))
                log.warning("prediction log: row %s refused by the database (%s); dropped", row.get("id"), type(exc).__name__)
        self.written += done
        return done, refused

    def purge(self) -> int:
        """Delete rows older than the retention (this log's rows; the predictions' log: feedback, checks, alerts too)."""
        if not self.retention:
            return 0
        cutoff = now() - timedelta(days=self.retention)
        with self.engine.begin() as conn:
            gone = conn.execute(self.table.delete().where(self.table.c.created_at < cutoff)).rowcount
            for table in (feedback, checks, alerts) if self.table is predictions else ():
                conn.execute(table.delete().where(table.c.created_at < cutoff))
        return gone

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)  # durable: woken by each add(), so a request waits one write, not an interval
            self.wake.clear()  # before flush() takes the rows: a later add() wakes the next round
            try:
                self.flush()
                if time.monotonic() - self.last_purge > 3600:  # hourly is plenty for a retention in days
                    self.last_purge = time.monotonic()
                    self.purge()
            except Exception:  # noqa: BLE001 -- the writer must outlive any one failure
                log.exception("prediction log: write failed; retrying")

    def stop(self) -> None:
        """Write everything still pending (graceful shutdown loses nothing)."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join()
        for _ in range(3):
            self.flush()
            if not self.pending:
                break


def _settle(waiting: list[tuple[Future, set[str]]], refused: set[str] = frozenset(), failed: BaseException | None = None) -> None:
    """Tell each waiting request whether its rows are committed."""
    for written, ids in waiting:
        try:
            if failed is not None:
                written.set_exception(failed)
            elif ids & refused:
                written.set_exception(RuntimeError(f"the database refused {len(ids & refused)} of its rows"))
            else:
                written.set_result(None)
        except InvalidStateError:  # its request was cancelled (the client went away)
            pass
