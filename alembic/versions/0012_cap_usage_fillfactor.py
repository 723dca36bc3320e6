"""ingestion: room on each page of ``ingest_cap_usage`` for its rows' next versions.

Every worker batch adds to the day and year usage rows of its citizens (two updates per
citizen and behaviour). With full pages an update cannot stay on its page, so it also inserts
into the primary key and the table bloats (measured: 1,004 pages against 66 after 200 batches
of 2,000 updates, and ~20 % more database CPU per update). At fillfactor 70 the updates are
HOT, as on ``points_accounts``. New pages only; a ``VACUUM FULL`` would repack old ones.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE ingest_cap_usage SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE ingest_cap_usage RESET (fillfactor)")
