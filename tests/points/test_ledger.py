"""The ledger's rules, through the service (no HTTP): credits, lots, holds, expiry."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db import Database
from app.errors import DomainError
from app.settings import get_settings
from points import service, sql
from tests.points.factories import (
    CONVERSION_RULE,
    REDUCTION_RULE,
    SCENE,
    T0,
    assert_reconciled,
    counts,
    credit,
    make_credit,
    new_citizen,
)


async def test_credit_names_its_source_and_a_repeat_is_a_no_op(db: Database) -> None:
    """Art. 34: each credit traces to scene, event, rule versions and grams; the
    database is the final dedupe on (scene, event id)."""
    citizen = new_citizen()
    c = make_credit(citizen, 730, gpp=100, event_id="ev-1", occurred_at=T0)
    async with db.transaction() as s:
        first = await service.credit_batch(s, [c, c], now=T0)
    assert first.new == [(SCENE, "ev-1")] and first.duplicates == [(SCENE, "ev-1")]
    assert first.points == 7
    before = await counts(db)
    async with db.transaction() as s:
        again = await service.credit_batch(s, [c], now=T0 + timedelta(hours=1))
    assert again.new == [] and again.duplicates == [(SCENE, "ev-1")] and again.points == 0
    assert await counts(db) == before
    async with db.transaction() as s:
        page = await service.statement(s, citizen)
        bal = await service.balance(s, citizen, now=T0)
    (entry,) = page.items
    assert (entry.kind, entry.points, entry.scene_id, entry.event_id, entry.grams,
            entry.grams_per_point, entry.reduction_rule_version_id,
            entry.conversion_rule_version_id, entry.behaviour) == (
        "credit", 7, SCENE, "ev-1", 730, 100, REDUCTION_RULE, CONVERSION_RULE, "metro_ride")
    assert (bal.available, bal.held) == (7, 0)
    await assert_reconciled(db, citizen)


async def test_art34_gram_carry_never_loses_a_citizens_grams(db: Database) -> None:
    """Art. 31/34: after any sequence of credits at one rate, points == floor(grams/rate)."""
    citizen = new_citizen()
    grams = [37, 0, 99, 250, 1, 63, 480, 5, 5, 60]
    batches = [grams[:3], grams[3:4], grams[4:9], grams[9:]]
    total_points = 0
    for i, batch in enumerate(batches):
        async with db.transaction() as s:
            r = await service.credit_batch(
                s, [make_credit(citizen, g, gpp=100, occurred_at=T0 + timedelta(minutes=i * 10 + k))
                    for k, g in enumerate(batch)], now=T0)
        total_points += r.points
    assert total_points == sum(grams) // 100
    async with db.session() as s:
        carry = (await s.execute(text(
            "SELECT gram_carry FROM points_accounts WHERE citizen_id = :c"), {"c": citizen}
        )).scalar_one()
    assert carry == sum(grams) % 100
    await assert_reconciled(db, citizen)


async def test_art34_rate_change_keeps_grams_exact(db: Database) -> None:
    """The carry is in grams: grams left at an old rate are converted at the next rate, and
    points x rate + carry always equals the grams credited."""
    citizen = new_citizen()
    async with db.transaction() as s:
        await service.credit_batch(s, [make_credit(citizen, 150, gpp=100)], now=T0)  # 1 pt, 50 g
        mixed = [make_credit(citizen, 170, gpp=100, occurred_at=T0),
                 make_credit(citizen, 30, gpp=40, occurred_at=T0 + timedelta(minutes=5))]
        r = await service.credit_batch(s, mixed, now=T0)
    async with db.session() as s:
        rows = (await s.execute(text(
            "SELECT sum(e.points * e.grams_per_point), sum(e.grams), min(a.gram_carry)"
            " FROM points_entries e JOIN points_accounts a ON a.id = e.account_id"
            " WHERE a.citizen_id = :c"), {"c": citizen})).one()
    converted, grams, carry = rows
    assert grams == 350 and converted + carry == grams
    # 170 g at 100 leaves 70 g; with the carried 50 g and 30 g they meet the new rate 40.
    assert r.points == 1 + 150 // 40 and carry == 150 % 40
    await assert_reconciled(db, citizen)


async def test_zero_point_credit_is_recorded_without_a_lot(db: Database) -> None:
    citizen = new_citizen()
    async with db.transaction() as s:
        r = await service.credit_batch(s, [make_credit(citizen, 40, gpp=100)], now=T0)
        lots = await service.list_lots(s, citizen, include_spent=True, now=T0)
        page = await service.statement(s, citizen)
    assert r.points == 0 and len(r.new) == 1 and lots == []
    assert [(e.kind, e.points, e.grams) for e in page.items] == [("credit", 0, 40)]


async def test_art34_lot_expires_at_most_5_years_after_credit(db: Database) -> None:
    """Art. 34: a point is valid at most 5 years; the database refuses a 6-year lot."""
    citizen = new_citizen()
    await credit(db, citizen, 3, now=T0)
    async with db.transaction() as s:
        (lot,) = await service.list_lots(s, citizen, now=T0)
    assert lot.expires_at == T0 + timedelta(days=get_settings().points_validity_days)
    assert lot.expires_at <= T0.replace(year=T0.year + 5)
    with pytest.raises(DBAPIError) as info:
        async with db.transaction() as s:
            await s.execute(text(
                "INSERT INTO points_lots (account_id, id, points, remaining, credited_at,"
                " expires_at) SELECT account_id, id + 1000000, 1, 1, CAST(:t AS timestamptz),"
                " CAST(:t AS timestamptz) + interval '6 years'"
                " FROM points_lots WHERE id = :id"), {"t": T0, "id": lot.id})
    assert "valid_at_most_5_years" in str(info.value)


async def test_entries_are_immutable(db: Database) -> None:
    """The database refuses UPDATE and DELETE of a ledger entry (a correction is a new one)."""
    citizen = new_citizen()
    await credit(db, citizen, 2, now=T0)
    for statement in (
        "UPDATE points_entries SET points = 1000 WHERE account_id ="
        " (SELECT id FROM points_accounts WHERE citizen_id = :c)",
        "DELETE FROM points_entries WHERE account_id ="
        " (SELECT id FROM points_accounts WHERE citizen_id = :c)",
    ):
        with pytest.raises(DBAPIError) as info:
            async with db.transaction() as s:
                await s.execute(text(statement), {"c": citizen})
        assert info.value.orig is not None
        assert isinstance(info.value.orig.__cause__, asyncpg.RestrictViolationError)
    await assert_reconciled(db, citizen)


async def test_hold_takes_lots_first_expiring_first(db: Database) -> None:
    citizen = new_citizen()
    for day, pts in ((0, 5), (1, 3), (2, 4)):
        await credit(db, citizen, pts, now=T0 + timedelta(days=day))
    now = T0 + timedelta(days=3)
    async with db.transaction() as s:
        h = await service.hold(s, citizen, 7, reference="order-1", now=now)
        lots = await service.list_lots(s, citizen, include_spent=True, now=now)
        bal = await service.balance(s, citizen, now=now)
    assert [lot.remaining for lot in lots] == [0, 1, 4]
    assert (bal.available, bal.held) == (5, 7) and h.status == "active"
    async with db.transaction() as s:
        await service.release(s, h.id, now=now)
        lots = await service.list_lots(s, citizen, now=now)
    assert [lot.remaining for lot in lots] == [5, 3, 4]
    await assert_reconciled(db, citizen)


@pytest.mark.parametrize("amount", [0, -5])
async def test_zero_or_negative_hold_is_refused_and_changes_nothing(
    db: Database, amount: int
) -> None:
    citizen = new_citizen()
    await credit(db, citizen, 5, now=T0)
    before = await counts(db)
    with pytest.raises(DomainError) as info:
        async with db.transaction() as s:
            await service.hold(s, citizen, amount, reference="x", now=T0)
    assert info.value.code == "points.amount_invalid" and info.value.status == 422
    assert await counts(db) == before


async def test_bad_holds_are_refused_with_stable_codes_and_change_nothing(db: Database) -> None:
    citizen = new_citizen()
    await credit(db, citizen, 5, now=T0)
    before = await counts(db)
    cases = [
        (lambda s: service.hold(s, new_citizen(), 1, reference="x", now=T0),
         "points.account_not_found", 404),
        (lambda s: service.hold(s, citizen, 6, reference="x", now=T0), "points.insufficient", 409),
        (lambda s: service.hold(s, citizen, 1, reference="", now=T0), "points.hold_invalid", 422),
        (lambda s: service.release(s, new_citizen(), now=T0), "points.hold_not_found", 404),
    ]
    for call, code, status in cases:
        with pytest.raises(DomainError) as info:
            async with db.transaction() as s:
                await call(s)
        assert (info.value.code, info.value.status) == (code, status)
    assert await counts(db) == before


async def test_another_citizens_hold_is_not_found(db: Database) -> None:
    owner, other = new_citizen(), new_citizen()
    await credit(db, owner, 5, now=T0)
    async with db.transaction() as s:
        h = await service.hold(s, owner, 2, reference="x", now=T0)
    with pytest.raises(DomainError) as info:
        async with db.transaction() as s:
            await service.release(s, h.id, citizen_id=other, now=T0)
    assert info.value.code == "points.hold_not_found"
    async with db.transaction() as s:
        assert (await service.get_hold(s, h.id)).status == "active"


async def test_a_redeemed_or_released_hold_cannot_be_used_again(db: Database) -> None:
    citizen = new_citizen()
    await credit(db, citizen, 10, now=T0)
    async with db.transaction() as s:
        redeemed = await service.hold(s, citizen, 3, reference="a", now=T0)
        released = await service.hold(s, citizen, 2, reference="b", now=T0)
        await service.redeem(s, redeemed.id, now=T0)
        await service.release(s, released.id, now=T0)
    before = await counts(db)
    for call in (
        lambda s: service.redeem(s, redeemed.id, now=T0),
        lambda s: service.release(s, redeemed.id, now=T0),
        lambda s: service.redeem(s, released.id, now=T0),
        lambda s: service.release(s, released.id, now=T0),
    ):
        with pytest.raises(DomainError) as info:
            async with db.transaction() as s:
                await call(s)
        assert (info.value.code, info.value.status) == ("points.hold_not_active", 409)
    assert await counts(db) == before
    async with db.transaction() as s:
        bal = await service.balance(s, citizen, now=T0)
    assert (bal.available, bal.held) == (7, 0)
    await assert_reconciled(db, citizen)


async def test_art34_redeem_refuses_a_hold_that_was_never_placed(db: Database) -> None:
    """Art. 34: points leave an account only through a citizen-initiated hold."""
    citizen = new_citizen()
    await credit(db, citizen, 5, now=T0)
    before = await counts(db)
    with pytest.raises(DomainError) as info:
        async with db.transaction() as s:
            await service.redeem(s, new_citizen(), now=T0)
    assert info.value.code == "points.hold_not_found"
    assert await counts(db) == before


def test_art34_service_has_no_transfer_or_adjust_function() -> None:
    """Art. 34: no service function moves points between accounts or lets the operator
    remove them; the only ways out are redeem (of a citizen's hold) and expiry."""
    public = {n for n in dir(service) if not n.startswith("_") and callable(getattr(service, n))}
    forbidden = ("transfer", "adjust", "debit", "deduct", "move", "send", "gift", "grant",
                 "withdraw", "cancel", "void", "revoke", "set_balance", "correct", "trade",
                 "sell", "price")
    assert not [n for n in public if any(w in n.lower() for w in forbidden)]
    # What lowers a balance at all: exactly these.
    lowering = {"hold", "redeem", "expire_due"}
    assert lowering <= public


async def test_art34_points_have_no_money_value(db: Database) -> None:
    """Art. 34: no column of the points tables gives points a price or money value."""
    async with db.session() as s:
        cols = (await s.execute(text(
            "SELECT table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_name LIKE 'points\\_%'"))).scalars().all()
    assert cols
    money = ("price", "money", "fen", "yuan", "cny", "rmb", "cash", "value", "amount")
    assert [c for c in cols if any(w in c.split(".")[1] for w in money)] == []


async def test_lot_expiring_today(db: Database) -> None:
    """A lot expiring later today is still spendable and shows as expiring soon; once its
    time passes no hold can take it and the expiry job expires it."""
    citizen = new_citizen()
    validity = timedelta(days=get_settings().points_validity_days)
    await credit(db, citizen, 4, now=T0)
    expires = T0 + validity
    morning = expires - timedelta(hours=6)
    async with db.transaction() as s:
        bal = await service.balance(s, citizen, now=morning)
    assert (bal.available, bal.expiring_30d) == (4, 4)
    after = expires + timedelta(minutes=1)
    async with db.transaction() as s:
        bal = await service.balance(s, citizen, now=after)
    assert bal.available == 0
    with pytest.raises(DomainError) as info:
        async with db.transaction() as s:
            await service.hold(s, citizen, 1, reference="late", now=after)
    assert info.value.code == "points.insufficient"
    async with db.transaction() as s:
        assert await service.expire_due(s, now=after) >= 1
    async with db.transaction() as s:
        page = await service.statement(s, citizen)
        assert (await service.expire_due(s, now=after)) == 0  # idempotent
    assert [(e.kind, e.points) for e in page.items] == [("expiry", 4), ("credit", 4)]
    await assert_reconciled(db, citizen)


async def test_hold_over_a_lot_that_expires_before_release(db: Database) -> None:
    """Released after its lot expired, the held part expires instead of coming back."""
    citizen = new_citizen()
    validity = timedelta(days=get_settings().points_validity_days)
    await credit(db, citizen, 5, now=T0)
    await credit(db, citizen, 5, now=T0 + timedelta(days=10))
    before_expiry = T0 + validity - timedelta(days=1)
    async with db.transaction() as s:
        h = await service.hold(s, citizen, 7, reference="slow", ttl_s=30 * 86400,
                               now=before_expiry)
    later = T0 + validity + timedelta(days=2)  # first lot expired, second still valid
    async with db.transaction() as s:
        await service.expire_due(s, now=later)
        await service.release(s, h.id, now=later)
        bal = await service.balance(s, citizen, now=later)
        page = await service.statement(s, citizen)
    # 5 from the expired lot expire; 2 return to the live lot (3 + 2).
    assert (bal.available, bal.held) == (5, 0)
    closing = sorted((e.kind, e.points, e.hold_id) for e in page.items[:2])
    assert closing == [("expiry", 5, h.id), ("release", 2, h.id)]
    await assert_reconciled(db, citizen)


async def test_a_hold_lapses_after_its_own_ttl(db: Database) -> None:
    citizen = new_citizen()
    await credit(db, citizen, 5, now=T0)
    async with db.transaction() as s:
        h = await service.hold(s, citizen, 4, reference="cart", ttl_s=600, now=T0)
    late = T0 + timedelta(seconds=601)
    with pytest.raises(DomainError) as info:
        async with db.transaction() as s:
            await service.redeem(s, h.id, now=late)
    assert info.value.code == "points.hold_not_active"
    async with db.transaction() as s:
        assert await service.expire_due(s, now=late) >= 1
        assert (await service.get_hold(s, h.id)).status == "released"
        bal = await service.balance(s, citizen, now=late)
    assert (bal.available, bal.held) == (5, 0)
    await assert_reconciled(db, citizen)


async def test_two_concurrent_holds_on_the_last_points_one_wins(db: Database) -> None:
    """Real concurrent transactions: exactly one hold gets the last points; the balance
    never goes negative."""
    citizen = new_citizen()
    await credit(db, citizen, 5, now=T0)

    async def attempt(ref: str) -> str:
        try:
            async with db.transaction() as s:
                await service.hold(s, citizen, 4, reference=ref, now=T0)
                await asyncio.sleep(0.05)  # keep the transaction open while the other waits
            return "ok"
        except DomainError as exc:
            return exc.code

    results = await asyncio.gather(*(attempt(f"r{i}") for i in range(2)))
    assert sorted(results) == ["ok", "points.insufficient"]
    async with db.transaction() as s:
        bal = await service.balance(s, citizen, now=T0)
    assert (bal.available, bal.held) == (1, 4)
    await assert_reconciled(db, citizen)


async def test_concurrent_batches_with_the_same_events_credit_once(db: Database) -> None:
    """Two workers replaying overlapping batches (a bus redelivery) credit each event once."""
    citizens = [new_citizen() for _ in range(20)]
    events = [make_credit(c, 150 + i, gpp=100, event_id=f"dup-{c.hex}-{i}")
              for c in citizens for i in range(5)]

    async def worker(batch: list[service.CreditIn]) -> service.CreditResult:
        async with db.transaction() as s:
            return await service.credit_batch(s, batch, now=T0)

    a, b = await asyncio.gather(worker(events[:70]), worker(events[30:]))
    assert len(a.new) + len(b.new) == len(events)
    per_citizen = sum(150 + i for i in range(5))
    assert a.points + b.points == len(citizens) * (per_citizen // 100)
    await assert_reconciled(db, *citizens)


async def test_unprobed_credit_of_a_known_event_is_refused_whole(db: Database) -> None:
    """``probe=False`` (the worker's first attempt) writes with COPY: an event already in
    the ledger makes the unique index refuse the whole batch (ConcurrentCredit, nothing
    written); probed, the same batch credits only the new event."""
    citizen = new_citizen()
    old = make_credit(citizen, 300, gpp=100, event_id="known")
    async with db.transaction() as s:
        await service.credit_batch(s, [old], now=T0)
    before = await counts(db)
    batch = [make_credit(citizen, 500, gpp=100, event_id="new"), old]
    with pytest.raises(service.ConcurrentCredit):
        async with db.transaction() as s:
            await service.credit_batch(s, batch, now=T0, probe=False)
    assert await counts(db) == before
    async with db.transaction() as s:
        r = await service.credit_batch(s, batch, now=T0, probe=True)
    assert r.new == [(SCENE, "new")] and r.duplicates == [(SCENE, "known")] and r.points == 5
    await assert_reconciled(db, citizen)


async def test_credit_duplicate_check_is_an_index_probe_whatever_the_plan(
        db: Database) -> None:
    """The credit's duplicate check probes the unique index once per event, in the generic
    and the custom plan alike (never a hash or merge join scanning the whole ledger): a
    batch costs the same in a ledger of any size."""
    n = 3000
    scenes, events, ords = [uuid.uuid4()] * n, [f"e{i}" for i in range(n)], list(range(n))

    async def plan(raw: asyncpg.Connection, statement: str, *args: object) -> str:
        rows = await raw.fetch("EXPLAIN (COSTS OFF) " + statement, *args)
        return "\n".join(r[0] for r in rows if "Filter" not in r[0])

    async with db.transaction() as s:
        raw = (await (await s.connection()).get_raw_connection()).driver_connection
        assert raw is not None
        for mode in ("force_generic_plan", "force_custom_plan"):
            await raw.execute(f"SET LOCAL plan_cache_mode = {mode}")
            dup = await plan(raw, sql.LEDGER_DUPLICATES, scenes, events, ords)
            assert "Index Only Scan using uq_points_entries_scene_event" in dup, dup
            assert "Seq Scan" not in dup and "Hash" not in dup and "Merge" not in dup, dup
