"""Factories of the points tests: credits, counts of ledger rows, reconciliation per citizen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import text

from app import clock
from app.db import Database
from points import service
from points.service import AccountDiff, CreditIn, CreditResult

SCENE = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
REDUCTION_RULE = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
CONVERSION_RULE = uuid.UUID("00000000-0000-4000-8000-0000000000b1")
T0 = datetime(2025, 3, 1, 1, 0, tzinfo=UTC)  # 09:00 in Chongqing

TABLES = ("points_accounts", "points_entries", "points_lots", "points_holds",
          "points_hold_allocations")


def make_credit(
    citizen: UUID,
    grams: int,
    *,
    gpp: int = 100,
    scene: UUID = SCENE,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    behaviour: str = "metro_ride",
) -> CreditIn:
    return CreditIn(
        citizen_id=citizen, scene_id=scene, event_id=event_id or uuid.uuid4().hex,
        behaviour=behaviour, occurred_at=occurred_at or clock.now(), grams=grams,
        grams_per_point=gpp, reduction_rule_version_id=REDUCTION_RULE,
        conversion_rule_version_id=CONVERSION_RULE,
    )


async def credit(
    db: Database, citizen: UUID, points: int, *, now: datetime | None = None, gpp: int = 100
) -> CreditResult:
    """Credit ``points`` whole points (``points * gpp`` grams) in one transaction."""
    async with db.transaction() as s:
        return await service.credit_batch(s, [make_credit(citizen, points * gpp, gpp=gpp)],
                                          now=now)


async def counts(db: Database) -> dict[str, int]:
    async with db.session() as s:
        return {t: int((await s.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one())
                for t in TABLES}


async def diffs(db: Database, *citizens: UUID) -> list[AccountDiff]:
    """Reconciliation differences of these citizens' accounts (others may be corrupt on
    purpose in another test)."""
    async with db.transaction() as s:
        found = await service.check(s)
    wanted = set(citizens)
    return [d for d in found if d.citizen_id in wanted]


async def assert_reconciled(db: Database, *citizens: UUID) -> None:
    found = await diffs(db, *citizens)
    assert found == [], found


def new_citizen() -> UUID:
    return uuid.uuid4()
