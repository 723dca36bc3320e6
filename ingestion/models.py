"""Tables of ingestion: dead letters (死信) and per-citizen cap usage (封顶用量).

Both are written set-based by the points worker; no ORM object is built per event on the
hot path (the tables are declared here so Alembic and the CLI share one definition).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
    func,
)

from app.db import Base

dead_letters = Table(
    "ingest_dead_letters",
    Base.metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    # A MessagePack envelope (``Envelope``) when the event decoded, else the raw message.
    Column("payload", LargeBinary, nullable=False),
    Column("key", LargeBinary, nullable=False),
    Column("scene_id", Uuid, nullable=True),
    Column("event_id", Text, nullable=True),
    Column("reason_code", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
    Column("replays", Integer, nullable=False, server_default="0"),
    Index("ix_ingest_dead_letters_open", "id", postgresql_where="replayed_at IS NULL"),
    # A redelivered batch must not park the same event twice.
    Index("uq_ingest_dead_letters_open_event", "scene_id", "event_id", "reason_code",
          unique=True, postgresql_where="replayed_at IS NULL AND event_id IS NOT NULL"),
)

cap_usage = Table(
    "ingest_cap_usage",
    Base.metadata,
    Column("citizen_id", Uuid, nullable=False),
    Column("scene_id", Uuid, nullable=False),
    Column("behaviour", Text, nullable=False),
    # 'd': the Asia/Shanghai business date; 'y': 1 January of the business year.
    Column("kind", Text, nullable=False),
    Column("period", Date, nullable=False),
    Column("used_grams", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("citizen_id", "scene_id", "behaviour", "kind", "period"),
    CheckConstraint("used_grams >= 0", name="used_non_negative"),
    CheckConstraint("kind IN ('d', 'y')", name="kind_known"),
    postgresql_with={"fillfactor": 70},  # room for HOT updates (migration 0012)
)
