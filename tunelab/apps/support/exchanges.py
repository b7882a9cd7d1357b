"""The support app's table, in the monitor's database: one row per answered message, grouped by conversation.

The monitor logs each FAQ match and intent as a prediction (its id is the exchange's id, and feedback on it --
POST /v1/feedback with the right entry's id -- gives live accuracy); this table adds what a person taking over a
conversation needs: its messages in order, with what was answered and what was handed off.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

metadata = sa.MetaData()
exchanges = sa.Table(
    "support_exchanges", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the FAQ match's prediction id
    sa.Column("conversation_id", sa.String(200), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("faq_id", sa.String(200), nullable=False),  # the best entry, answered or not
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("handed_off", sa.Boolean, nullable=False),
    sa.Column("intent", sa.String(200), nullable=True),
    sa.Column("answer", sa.Text, nullable=True),  # what the customer was told (none: handed off)
    sa.Column("generated", sa.Boolean, nullable=False, default=False),  # written by the generator
)


class ExchangeStore:
    def __init__(self, url: str):
        from tunelab.monitor.store import open_database

        self.engine = open_database(url)
        metadata.create_all(self.engine)
        have = {c["name"] for c in sa.inspect(self.engine).get_columns("support_exchanges")}
        with self.engine.begin() as db:  # a table from before the generated answers: their two columns added
            for column in (c for c in exchanges.columns if c.name not in have):
                kind = column.type.compile(self.engine.dialect)
                default = " NOT NULL DEFAULT FALSE" if column.name == "generated" else ""
                db.execute(sa.text(f"ALTER TABLE support_exchanges ADD COLUMN {column.name} {kind}{default}"))

    def add(self, row: dict) -> None:
        with self.engine.begin() as db:
            db.execute(exchanges.insert().values(created_at=datetime.now(timezone.utc), **row))

    def conversation(self, conversation_id: str, limit: int = 200) -> list[dict]:
        """The conversation's exchanges, oldest first."""
        c = exchanges.c
        with self.engine.connect() as db:
            found = db.execute(sa.select(exchanges).where(c.conversation_id == conversation_id)
                               .order_by(c.created_at.desc()).limit(limit)).mappings().all()
        return [{**r, "created_at": r["created_at"].isoformat()} for r in reversed(found)]

    def totals(self) -> dict:
        c = exchanges.c
        with self.engine.connect() as db:
            total, handed = db.execute(sa.select(sa.func.count(), sa.func.sum(sa.cast(c.handed_off, sa.Integer)))).one()
        return {"exchanges": int(total), "handed_off": int(handed or 0),
                "handed_off_share": (handed or 0) / total if total else None}

    def close(self) -> None:
        self.engine.dispose()
