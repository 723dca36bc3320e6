"""Tables of the carbon points ledger (碳积分账本): accounts, entries, lots, holds.

- ``points_accounts``: one carbon account (碳账户) per citizen, with its balances
  (``available``, ``held``) and the gram carry (grams credited but not yet a whole point).
- ``points_entries``: the immutable journal (credit, hold, release, redemption, expiry); the
  database refuses UPDATE and DELETE of an entry (trigger ``points_entries_immutable``).
- ``points_lots``: one lot per credit of at least one point, spent first-expiring-first and
  valid at most 5 years (Art. 34, a CHECK constraint).
- ``points_holds`` / ``points_hold_allocations``: a citizen-initiated hold and how much it
  took from which lot.

Points, grams: integers. No column anywhere here gives points a money value (Art. 34).
The hot tables (entries, lots) carry no foreign keys: they are written only by
``points.service`` and reconciled by ``tanhui points check``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

TS = DateTime(timezone=True)

ENTRY_KINDS = ("credit", "hold", "release", "redemption", "expiry")
HOLD_STATUSES = ("active", "released", "redeemed")


class Account(Base):
    """A citizen's carbon account (碳账户) and its balances, kept in the same transaction as
    every entry that moves them."""

    __tablename__ = "points_accounts"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_nonnegative"),
        CheckConstraint("held >= 0", name="held_nonnegative"),
        CheckConstraint("gram_carry >= 0", name="gram_carry_nonnegative"),
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    citizen_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    available: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    held: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Art. 31/34: grams below one whole point wait here for the next credit, never lost.
    gram_carry: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=text("now()"))


class Entry(Base):
    """One immutable ledger entry (账本分录). ``points`` is never negative; ``kind`` says
    which way it moved the balances. A credit entry names its source: scene, event id,
    behaviour, reduction and conversion rule versions and grams."""

    __tablename__ = "points_entries"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('credit','hold','release','redemption','expiry')", name="kind_known"
        ),
        CheckConstraint("points > 0 OR (kind = 'credit' AND points = 0)", name="points_positive"),
        CheckConstraint(
            "kind <> 'credit' OR (scene_id IS NOT NULL AND event_id IS NOT NULL"
            " AND behaviour IS NOT NULL AND occurred_at IS NOT NULL AND grams >= 0"
            " AND grams_per_point > 0 AND reduction_rule_version_id IS NOT NULL"
            " AND conversion_rule_version_id IS NOT NULL)",
            name="credit_has_source",
        ),
        CheckConstraint(
            "kind NOT IN ('hold','release','redemption') OR hold_id IS NOT NULL",
            name="hold_entry_has_hold",
        ),
        UniqueConstraint("scene_id", "event_id", name="uq_points_entries_scene_event"),
    )

    # Keyed by account: the ledger is read per account, and each index is one more insert
    # per credited event (migration 0013). ``id`` is unique and ascends per account.
    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    points: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TS)
    hold_id: Mapped[uuid.UUID | None]
    reference: Mapped[str | None] = mapped_column(Text)
    scene_id: Mapped[uuid.UUID | None]
    # Byte order: the unique (scene, event id) index is probed for every credited event.
    event_id: Mapped[str | None] = mapped_column(Text(collation="C"))
    behaviour: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime | None] = mapped_column(TS)
    grams: Mapped[int | None] = mapped_column(BigInteger)
    grams_per_point: Mapped[int | None] = mapped_column(Integer)
    reduction_rule_version_id: Mapped[uuid.UUID | None]
    conversion_rule_version_id: Mapped[uuid.UUID | None]


class Lot(Base):
    """Points of one credit (积分批次), valid until ``expires_at`` (Art. 34: at most 5 years).

    ``points = remaining + (held or redeemed out of it) + expired``."""

    __tablename__ = "points_lots"
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
        CheckConstraint("expired >= 0 AND expired <= points", name="expired_in_range"),
        # Art. 34: a point is valid at most 5 years.
        CheckConstraint(
            "expires_at > credited_at AND expires_at <= credited_at + interval '5 years'",
            name="valid_at_most_5_years",
        ),
        # The key is the order an account's lots are spent in (first-expiring-first);
        # ``remaining`` is included so the live ones are found in the index.
        PrimaryKeyConstraint("account_id", "expires_at", "id", name="pk_points_lots",
                             postgresql_include=["remaining"]),
        Index("ix_points_lots_due", "expires_at", postgresql_where=text("remaining > 0")),
    )

    account_id: Mapped[uuid.UUID]
    expires_at: Mapped[datetime] = mapped_column(TS)
    # The id of the credit entry whose points the lot holds.
    id: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expired: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    credited_at: Mapped[datetime] = mapped_column(TS)
    expired_at: Mapped[datetime | None] = mapped_column(TS)


class Hold(Base):
    """Points set aside by the citizen for a redemption (冻结), until redeemed (注销),
    released, or its own ``expires_at`` passes (then released by the expiry job)."""

    __tablename__ = "points_holds"
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint("status IN ('active','released','redeemed')", name="status_known"),
        Index("ix_points_holds_due", "expires_at", postgresql_where=text("status = 'active'")),
        Index("ix_points_holds_account_id", "account_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("points_accounts.id"))
    points: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    expires_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)


class HoldAllocation(Base):
    """How many points a hold took from one lot (first-expiring-first). The lot is named by
    its whole key, so a release finds it by one primary-key probe."""

    __tablename__ = "points_hold_allocations"
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        ForeignKeyConstraint(
            ["account_id", "lot_expires_at", "lot_id"],
            ["points_lots.account_id", "points_lots.expires_at", "points_lots.id"],
            name="fk_points_hold_allocations_lot_points_lots",
        ),
    )

    hold_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("points_holds.id"), primary_key=True
    )
    lot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[uuid.UUID]
    lot_expires_at: Mapped[datetime] = mapped_column(TS)
    points: Mapped[int] = mapped_column(BigInteger)
