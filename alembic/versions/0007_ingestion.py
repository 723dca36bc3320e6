"""ingestion: dead letters and per-citizen cap usage.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("scene_id", sa.Uuid, nullable=True),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_ingest_dead_letters_open", "ingest_dead_letters", ["id"],
                    postgresql_where=sa.text("replayed_at IS NULL"))
    op.create_index("uq_ingest_dead_letters_open_event", "ingest_dead_letters",
                    ["scene_id", "event_id", "reason_code"], unique=True,
                    postgresql_where=sa.text("replayed_at IS NULL AND event_id IS NOT NULL"))
    op.create_table(
        "ingest_cap_usage",
        sa.Column("citizen_id", sa.Uuid, nullable=False),
        sa.Column("scene_id", sa.Uuid, nullable=False),
        sa.Column("behaviour", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("period", sa.Date, nullable=False),
        sa.Column("used_grams", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("citizen_id", "scene_id", "behaviour", "kind", "period",
                                name="pk_ingest_cap_usage"),
        sa.CheckConstraint("used_grams >= 0", name="ck_ingest_cap_usage_used_non_negative"),
        sa.CheckConstraint("kind IN ('d', 'y')", name="ck_ingest_cap_usage_kind_known"),
    )


def downgrade() -> None:
    op.drop_table("ingest_cap_usage")
    op.drop_index("uq_ingest_dead_letters_open_event", table_name="ingest_dead_letters")
    op.drop_index("ix_ingest_dead_letters_open", table_name="ingest_dead_letters")
    op.drop_table("ingest_dead_letters")
