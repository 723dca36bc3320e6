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
           day_cap: int | None, year_cap: int | None, behaviour: str = "bus_ride",
           scene: uuid.UUID = SCENE) -> Row:
    ev = RawBusEvent(scene.bytes, event_id, citizen.bytes, behaviour, 1000, at, at)
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


async def test_a_batch_of_many_citizens_scenes_and_behaviours_keeps_each_key_apart(
        runtime: Runtime) -> None:
    """The usage keys travel as positions among the batch's distinct citizens and scenes: in a
    batch that interleaves them (with usage from an earlier batch on some keys), each
    (citizen, scene, behaviour, day) and (…, year) gets its own cap and its own usage row."""
    citizens = [uuid.uuid4() for _ in range(3)]
    scenes = [uuid.uuid4(), uuid.uuid4()]
    t0 = dt.datetime(2025, 8, 1, 1, 0, tzinfo=dt.UTC)
    keys = [(c, sc, b) for c in citizens for sc in scenes for b in ("bus_ride", "步行")]

    def row(n: int, key: tuple[uuid.UUID, uuid.UUID, str], grams: int) -> Row:
        c, sc, b = key
        return priced(c, f"m{n}", t0 + dt.timedelta(minutes=n), grams, day_cap=1000,
                      year_cap=1500, behaviour=b, scene=sc)

    # An earlier batch used 600 g of the day on every other key.
    async with runtime.db.transaction() as s:
        assert await apply_caps(s, batch_of([row(i, k, 600) for i, k in enumerate(keys)
                                             if i % 2 == 0])) == [600] * (len(keys) // 2)
    # Now 700 g on every key, twice over, interleaved across keys.
    batch = [row(100 + n, keys[n % len(keys)], 700) for n in range(2 * len(keys))]
    async with runtime.db.transaction() as s:
        granted = await apply_caps(s, batch_of(batch))
        used = {(r.citizen_id, r.scene_id, r.behaviour, r.kind): r.used_grams
                for r in (await s.execute(text(
                    "SELECT citizen_id, scene_id, behaviour, kind, used_grams "
                    "FROM ingest_cap_usage WHERE citizen_id = ANY(:c)"),
                    {"c": citizens})).all()}
    for n, g in enumerate(granted):
        first = n < len(keys)
        if n % len(keys) % 2 == 0:  # 400 g left of the day, then none
            assert g == (400 if first else 0), n
        else:  # 1000 g left of the day: 700, then 300
            assert g == (700 if first else 300), n
    for i, (c, sc, b) in enumerate(keys):
        assert used[(c, sc, b, "d")] == 1000 and used[(c, sc, b, "y")] == 1000, (i, used)
