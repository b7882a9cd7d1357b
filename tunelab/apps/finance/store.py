"""The finance app's tables, in the monitor's database (SQLite by default, PostgreSQL by URL).

finance_texts     one row per distinct text (dedup key: SHA-256 of the text with whitespace folded), its scores;
                  the integer id is the arrival order, which the detector replays after a restart
finance_mentions  one row per (text, company) with the text's time, sector, negative flag and score: the
                  index is one GROUP BY over this table
finance_alerts    negative surges, with the ids of the texts that caused them
"""

from __future__ import annotations

import hashlib
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

metadata = sa.MetaData()
texts = sa.Table(
    "finance_texts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("text_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("published_s", sa.BigInteger, nullable=False, index=True),  # the item's timestamp, Unix seconds
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(200), nullable=True),
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("score", sa.Float, nullable=False),  # p(positive) - p(negative)
    sa.Column("probabilities", sa.JSON, nullable=False),
)
mentions = sa.Table(
    "finance_mentions", metadata,
    sa.Column("text_id", sa.Integer, primary_key=True),
    sa.Column("company", sa.String(200), primary_key=True),
    sa.Column("sector", sa.String(200), nullable=True, index=True),
    sa.Column("published_s", sa.BigInteger, nullable=False, index=True),
    sa.Column("negative", sa.Boolean, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
)
alerts = sa.Table(
    "finance_alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("company", sa.String(200), nullable=False, index=True),
    sa.Column("sector", sa.String(200), nullable=True),
    sa.Column("at_s", sa.BigInteger, nullable=False, index=True),  # timestamp of the text that tipped the sum
    sa.Column("cusum", sa.Float, nullable=False),
    sa.Column("baseline", sa.Float, nullable=False),
    sa.Column("share_negative", sa.Float, nullable=False),
    sa.Column("texts", sa.Integer, nullable=False),
    sa.Column("negative", sa.Integer, nullable=False),
    sa.Column("text_ids", sa.JSON, nullable=False),
)
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}


def text_key(text: str) -> str:
    """The dedup key: the same words from two sources count once, whatever their spacing."""
    return hashlib.sha256(" ".join(unicodedata.normalize("NFKC", text).split()).encode("utf-8")).hexdigest()


@dataclass
class Scored:
    """One accepted item, scored: what the store writes."""

    text: str
    published_s: int
    source: str | None
    url: str | None
    label: str
    score: float
    probabilities: dict
    negative: bool
    companies: list[tuple[str, str | None]]  # (company, sector)


class FinanceStore:
    def __init__(self, url: str):
        from tunelab.monitor.store import open_database

        self.engine = open_database(url)  # the monitor's tables too: one database for the server
        metadata.create_all(self.engine)
        self.lock = threading.Lock()  # one writer per process: the dedup check and the insert are one step
        self._last_purge = 0.0

    def add(self, items: list[Scored]) -> list[tuple[int, bool]]:
        """Store `items` in one transaction (committed when this returns); (text id, new) per item, where a text
        already stored, or earlier in the same batch, is not new and keeps its first id."""
        keys = [text_key(i.text) for i in items]
        received = datetime.now(timezone.utc)
        with self.lock, self.engine.begin() as db:
            known = dict(db.execute(sa.select(texts.c.text_sha256, texts.c.id).where(
                texts.c.text_sha256.in_(set(keys)))).all()) if keys else {}
            out = []
            for item, key in zip(items, keys):
                if key in known:
                    out.append((known[key], False))
                    continue
                text_id = db.execute(texts.insert().values(
                    text_sha256=key, text=item.text, published_s=item.published_s, received_at=received,
                    source=item.source, url=item.url, label=item.label, score=item.score,
                    probabilities=item.probabilities)).inserted_primary_key[0]
                known[key] = text_id
                if item.companies:
                    db.execute(mentions.insert(), [dict(text_id=text_id, company=c, sector=s, published_s=item.published_s,
                                                        negative=item.negative, score=item.score) for c, s in item.companies])
                out.append((text_id, True))
        return out

    def add_alert(self, surge, sector: str | None) -> int:
        with self.engine.begin() as db:
            return db.execute(alerts.insert().values(
                created_at=datetime.now(timezone.utc), company=surge.company, sector=sector, at_s=int(surge.at),
                cusum=surge.cusum, baseline=surge.baseline, share_negative=surge.share_negative, texts=surge.texts,
                negative=surge.negative, text_ids=surge.text_ids)).inserted_primary_key[0]

    def purge(self, retention_days: float, every_s: float = 3600.0) -> int:
        """Delete texts (and their mentions) whose timestamp is older than the retention; at most once per `every_s`."""
        if time.monotonic() - self._last_purge < every_s:
            return 0
        self._last_purge = time.monotonic()
        cutoff = int(time.time() - retention_days * 86400)
        with self.lock, self.engine.begin() as db:
            db.execute(mentions.delete().where(mentions.c.published_s < cutoff))
            return db.execute(texts.delete().where(texts.c.published_s < cutoff)).rowcount

    # ---- reading ---------------------------------------------------------------------------------------------

    def latest_s(self) -> int | None:
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.max(texts.c.published_s))).scalar()

    def index(self, by: str = "company", bucket: str = "hour", since_s: int | None = None,
              until_s: int | None = None, names: list[str] | None = None) -> list[dict]:
        """Per company (or sector) and time bucket: texts, negative texts, share negative, mean score."""
        width = BUCKETS[bucket]
        key = mentions.c.company if by == "company" else mentions.c.sector
        start = (mentions.c.published_s // width).label("bucket")  # floor division, in SQL on both dialects
        query = (sa.select(key.label("name"), start, sa.func.count().label("texts"),
                           sa.func.sum(sa.cast(mentions.c.negative, sa.Integer)).label("negative"),
                           sa.func.avg(mentions.c.score).label("score"))
                 .where(key.is_not(None)).group_by(key, start).order_by(start, key))
        if since_s is not None:
            query = query.where(mentions.c.published_s >= since_s)
        if until_s is not None:
            query = query.where(mentions.c.published_s < until_s)
        if names:
            query = query.where(key.in_(names))
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        return [{"name": r.name, "start_s": int(r.bucket) * width, "texts": r.texts, "negative": int(r.negative or 0),
                 "share_negative": round(int(r.negative or 0) / r.texts, 4), "score": round(float(r.score), 4)}
                for r in rows]

    def totals(self, since_s: int, until_s: int | None = None) -> dict[str, dict]:
        """Per company over a period: texts, share negative, mean score."""
        query = (sa.select(mentions.c.company, sa.func.count(), sa.func.sum(sa.cast(mentions.c.negative, sa.Integer)),
                           sa.func.avg(mentions.c.score)).where(mentions.c.published_s >= since_s)
                 .group_by(mentions.c.company))
        if until_s is not None:
            query = query.where(mentions.c.published_s < until_s)
        with self.engine.connect() as db:
            return {c: {"texts": n, "share_negative": int(neg or 0) / n, "score": float(s)} for c, n, neg, s in db.execute(query)}

    def alerts(self, limit: int = 50, company: str | None = None) -> list[dict]:
        query = sa.select(alerts).order_by(alerts.c.at_s.desc(), alerts.c.id.desc()).limit(limit)
        if company:
            query = query.where(alerts.c.company == company)
        with self.engine.connect() as db:
            return [_alert(r) for r in db.execute(query).mappings()]

    def alert(self, alert_id: int) -> dict | None:
        """One alert with the texts that caused it."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().first()
            if row is None:
                return None
            ids = list(row["text_ids"])
            found = {r.id: r for r in db.execute(sa.select(texts).where(texts.c.id.in_(ids)))} if ids else {}
        return {**_alert(row), "texts": [_text(found[i]) for i in ids if i in found]}

    def texts(self, company: str | None = None, limit: int = 50) -> list[dict]:
        """The latest texts (by timestamp), optionally about one company."""
        query = sa.select(texts).order_by(texts.c.published_s.desc(), texts.c.id.desc()).limit(limit)
        if company:
            query = query.where(texts.c.id.in_(sa.select(mentions.c.text_id).where(mentions.c.company == company)))
        with self.engine.connect() as db:
            rows = db.execute(query).all()
            ids = [r.id for r in rows]
            named: dict[int, list[str]] = {}
            if ids:
                for text_id, name in db.execute(sa.select(mentions.c.text_id, mentions.c.company).where(mentions.c.text_id.in_(ids))):
                    named.setdefault(text_id, []).append(name)
        return [{**_text(r), "companies": named.get(r.id, [])} for r in rows]

    def replay(self, limit: int = 200_000):
        """(text id, company, negative, published_s) of the latest `limit` mentions, in arrival order: the detector's
        state is rebuilt from them after a restart."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(mentions.c.text_id, mentions.c.company, mentions.c.negative, mentions.c.published_s)
                              .order_by(mentions.c.text_id.desc(), mentions.c.company.desc()).limit(limit)).all()
        return list(reversed(rows))

    def last_alerts(self) -> dict[str, int]:
        with self.engine.connect() as db:
            return dict(db.execute(sa.select(alerts.c.company, sa.func.max(alerts.c.at_s)).group_by(alerts.c.company)).all())

    def count(self, table: sa.Table | None = None) -> int:
        """Rows of `table` (default: the stored texts)."""
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.count()).select_from(texts if table is None else table)).scalar()


def _alert(row) -> dict:
    return {"id": row["id"], "company": row["company"], "sector": row["sector"], "at": _iso(row["at_s"]),
            "at_s": row["at_s"], "cusum": round(row["cusum"], 3), "baseline": round(row["baseline"], 4),
            "share_negative": round(row["share_negative"], 4), "texts": row["texts"], "negative": row["negative"],
            "created_at": row["created_at"].isoformat() if row["created_at"] else None}


def _text(row) -> dict:
    return {"id": row.id, "text": row.text, "published": _iso(row.published_s), "source": row.source, "url": row.url,
            "label": row.label, "score": round(row.score, 4)}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")
