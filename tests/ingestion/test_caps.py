"""Caps per citizen per day and per year, computed set-based for a whole batch."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from sqlalchemy import text

from app.runtime import Runtime
from ingestion.crediting import Priced, apply_caps, business_date
from ingestion.schemas import RawBusEvent

SCENE = uuid.uuid4()
RULE = uuid.uuid4()
CONV = uuid.uuid4()


Row = tuple[RawBusEvent, int, int | None, int | None]


def priced(citizen: uuid.UUID, event_id: str, at: dt.datetime, grams: int, *,
           day_cap: int | None, year_cap: int | None, behaviour: str = "bus_ride") -> Row:
    ev = RawBusEvent(SCENE.bytes, event_id, citizen.bytes, behaviour, 1000, at, at)
    return ev, grams, day_cap, year_cap


def batch_of(rows: list[Row]) -> Priced:
    out = Priced()
    for ev, grams, day_cap, year_cap in rows:
        out.add(ev, grams, day_cap, year_cap, 10, RULE, CONV)
    return out


def test_business_date_is_shanghai() -> None:
    assert business_date(dt.datetime(2025, 3, 1, 15, 59, 59, tzinfo=dt.UTC)) == \
        dt.date(2025, 3, 1)
    assert business_date(dt.datetime(2025, 3, 1, 16, 0, tzinfo=dt.UTC)) == dt.date(2025, 3, 2)
    tokyo = dt.timezone(dt.timedelta(hours=9))
    assert business_date(dt.datetime(2025, 3, 2, 0, 30, tzinfo=tokyo)) == dt.date(2025, 3, 1)


async def test_day_cap_is_greedy_in_occurred_order_and_remembered(runtime: Runtime) -> None:
    citizen = uuid.uuid4()
    t0 = dt.datetime(2025, 5, 1, 1, 0, tzinfo=dt.UTC)
    batch = [
        priced(citizen, "b", t0 + dt.timedelta(hours=2), 400, day_cap=1000, year_cap=None),
        priced(citizen, "a", t0, 500, day_cap=1000, year_cap=None),
        priced(citizen, "c", t0 + dt.timedelta(hours=3), 300, day_cap=1000, year_cap=None),
        # the next Shanghai day starts at 16:00 UTC: a fresh cap
        priced(citizen, "d", t0 + dt.timedelta(hours=15), 700, day_cap=1000, year_cap=None),
    ]
    async with runtime.db.transaction() as s:
        granted = await apply_caps(s, batch_of(batch))
    assert granted == [400, 500, 100, 700]
    async with runtime.db.transaction() as s:
        again = await apply_caps(s, batch_of(
            [priced(citizen, "e", t0, 250, day_cap=1000, year_cap=None)]))
        assert again == [0]
        used = (await s.execute(text(
            "SELECT period, used_grams FROM ingest_cap_usage WHERE citizen_id = :c "
            "ORDER BY period"), {"c": citizen})).all()
    assert [(r.period, r.used_grams) for r in used] == [
        (dt.date(2025, 5, 1), 1000), (dt.date(2025, 5, 2), 700)]


async def test_year_cap_applies_over_day_caps(runtime: Runtime) -> None:
    citizen = uuid.uuid4()
    t0 = dt.datetime(2025, 6, 1, 1, 0, tzinfo=dt.UTC)
    batch = [priced(citizen, f"e{i}", t0 + dt.timedelta(days=i), 800, day_cap=500,
                    year_cap=1200) for i in range(4)]
    async with runtime.db.transaction() as s:
        granted = await apply_caps(s, batch_of(batch))
    assert granted == [500, 500, 200, 0]


async def test_uncapped_events_pass_untouched(runtime: Runtime) -> None:
    citizen = uuid.uuid4()
    t0 = dt.datetime(2025, 6, 1, 1, 0, tzinfo=dt.UTC)
    async with runtime.db.transaction() as s:
        granted = await apply_caps(s, batch_of([priced(citizen, "x", t0, 10**9, day_cap=None,
                                                       year_cap=None)]))
    assert granted == [10**9]


async def test_concurrent_batches_of_one_citizen_never_exceed_the_cap(runtime: Runtime) -> None:
    """Two workers crediting the same citizen at once (the PostgreSQL queue has no partitions)
    serialize on the usage rows: together they never grant more than the cap."""
    citizen = uuid.uuid4()
    t0 = dt.datetime(2025, 7, 1, 1, 0, tzinfo=dt.UTC)

    async def one(prefix: str) -> int:
        batch = [priced(citizen, f"{prefix}{i}", t0 + dt.timedelta(minutes=i), 100,
                        day_cap=1500, year_cap=10_000) for i in range(10)]
        async with runtime.db.transaction() as s:
            return sum(await apply_caps(s, batch_of(batch)))

    totals = await asyncio.gather(*(one(p) for p in "abcd"))
    assert sum(totals) == 1500
