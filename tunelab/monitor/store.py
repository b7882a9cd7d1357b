"""The monitoring database (SQLAlchemy: SQLite by default, PostgreSQL by URL).

Tables: predictions (one row per served text), feedback (the true label of a prediction), checks (each
drift/accuracy figure computed, for charts and reports), alerts (firing and resolved events).
Predictions are written by `PredictionLog`: the request path appends to a list, a thread writes the list
in one transaction every flush_interval; stop() writes what is left.
"""

from __future__ import annotations

import logging
import threading
import time
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


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


class PredictionLog:
    """Batched, off-request-path writer of prediction rows."""

    MAX_PENDING = 200_000  # rows kept while the database is away; beyond it the oldest are dropped (and counted)

    def __init__(self, engine: sa.Engine, flush_interval_s: float = 1.0, retention_days: float | None = None):
        self.engine, self.interval, self.retention = engine, flush_interval_s, retention_days
        self.pending: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.written = 0
        self.dropped = 0  # rows the database refused (bad data) or that overflowed MAX_PENDING
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.last_purge = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def add(self, rows: list[dict]) -> None:
        with self.lock:
            self.pending.extend(rows)
            over = len(self.pending) - self.MAX_PENDING
            if over > 0:
                del self.pending[:over]
                self.dropped += over

    def flush(self) -> int:
        with self.lock:
            rows, self.pending = self.pending, []
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)
        except (sa.exc.DataError, sa.exc.IntegrityError, ValueError):  # a row the database refuses: write the others
            return self._one_by_one(rows)
        except sa.exc.SQLAlchemyError as exc:  # the database is away: keep the rows for the next try
            log.warning("prediction log: write of %d rows failed (%s); retrying", len(rows), type(exc).__name__)
            with self.lock:
                self.pending[:0] = rows
            return 0
        self.written += len(rows)
        return len(rows)

    def _one_by_one(self, rows: list[dict]) -> int:
        done = 0
        for row in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(predictions.insert(), [row])
                done += 1
            except (sa.exc.DataError, sa.exc.IntegrityError, ValueError) as exc:
                self.dropped += 1
                log.warning("prediction log: row %s refused by the database (%s); dropped", row.get("id"), type(exc).__name__)
        self.written += done
        return done

    def purge(self) -> int:
        """Delete rows older than the retention (predictions, their feedback, checks, alerts)."""
        if not self.retention:
            return 0
        cutoff = now() - timedelta(days=self.retention)
        with self.engine.begin() as conn:
            gone = conn.execute(predictions.delete().where(predictions.c.created_at < cutoff)).rowcount
            for table in (feedback, checks, alerts):
                conn.execute(table.delete().where(table.c.created_at < cutoff))
        return gone

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
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
        if self.thread.is_alive():
            self.thread.join()
        for _ in range(3):
            self.flush()
            if not self.pending:
                break
