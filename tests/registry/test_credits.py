"""The credit service that trading and offsets use: lock, unlock, move, cancel (Art. 29, 30)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from uuid import UUID

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, DomainError
from app.runtime import Runtime
from registry import service
from registry.models import Block, Lock
from registry.reconcile import reconcile
from registry.schemas import ProductFilter
from registry.service import Delivery, LockRequest
from tests.registry.factories import holder_with, org


async def test_lock_splits_a_block_and_unlock_returns_it(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, account, inst = await holder_with(s, 100)
        lk = await service.lock(s, account_id=account, quantity=30, purpose="trade",
                                reference="order-1")
        assert lk.quantity == 30 and [b.quantity for b in lk.blocks] == [30]
        assert lk.blocks[0].serial.endswith("-1-30")
        states = sorted((b.state, b.quantity) for b in await service.holdings(s, account))
        assert states == [("held", 70), ("locked", 30)]
        await service.unlock(s, lk.id)
        held = await service.holdings(s, account)
        assert sum(b.quantity for b in held if b.state == "held") == 100
        with pytest.raises(Conflict) as e:
            await service.unlock(s, lk.id)
        assert e.value.code == "registry.lock_not_active"
        assert inst.issued[0].serial == f"CQCER-{inst.issued[0].project_no}-1-2024-1-100"


async def test_lock_refuses_more_than_held_and_changes_nothing(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 10)
        locks_before = (await s.execute(select(func.count()).select_from(Lock))).scalar_one()
        with pytest.raises(Conflict) as e:
            await service.lock(s, account_id=account, quantity=11, purpose="trade",
                               reference="x")
        assert e.value.code == "registry.insufficient_credits"
        assert e.value.extra["available"] == 10
        assert (await s.execute(select(func.count()).select_from(Lock))).scalar_one() \
            == locks_before
        assert [(b.state, b.quantity) for b in await service.holdings(s, account)] == \
            [("held", 10)]


async def test_lock_filters_by_product(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 10, category="engineering")
        with pytest.raises(Conflict):
            await service.lock(s, account_id=account, quantity=1, purpose="offset",
                               reference="r", product=ProductFilter(category="ecological_sink"))
        with pytest.raises(Conflict):
            await service.lock(s, account_id=account, quantity=1, purpose="offset",
                               reference="r",
                               product=ProductFilter(category="engineering", vintage=2023))
        lk = await service.lock(s, account_id=account, quantity=4, purpose="offset",
                                reference="r",
                                product=ProductFilter(category="engineering", vintage=2024))
        assert lk.blocks[0].vintage == 2024 and lk.blocks[0].category == "engineering"


async def test_move_locked_delivers_to_another_account(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, seller, _ = await holder_with(s, 50)
        buyer = await org(s, kind="trader")
        assert buyer.account_id
        lk = await service.lock(s, account_id=seller, quantity=20, purpose="trade",
                                reference="deal-7")
        moved = await service.move_locked(s, lk.id, to_account_id=buyer.account_id)
        assert [(b.state, b.quantity, b.account_id) for b in moved] == \
            [("held", 20, buyer.account_id)]
        assert sum(b.quantity for b in await service.holdings(s, seller)) == 30
        found = await service.find_serial(s, moved[0].serial.rsplit("-", 1)[0])
        assert found is not None and found.account_id == buyer.account_id


async def test_art29_cancelled_credits_can_never_be_used_again(runtime: Runtime) -> None:
    """Art. 29: credits cancelled for compliance or neutrality are never locked, moved or
    cancelled again — not through the service, and not even by a direct UPDATE."""
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 10)
        other = await org(s, kind="trader")
        assert other.account_id
        lk = await service.lock(s, account_id=account, quantity=10, purpose="offset",
                                reference="neutral-1")
        done = await service.cancel_locked(s, lk.id, purpose="neutrality",
                                           beneficiary="2025 重庆马拉松",
                                           detail={"event": "marathon"})
        assert [b.state for b in done] == ["cancelled"]
        for attempt in (
            service.lock(s, account_id=account, quantity=1, purpose="x", reference="x"),
            service.move_locked(s, lk.id, to_account_id=other.account_id),
            service.cancel_locked(s, lk.id, purpose="compliance", beneficiary="again"),
            service.unlock(s, lk.id),
        ):
            with pytest.raises(DomainError) as e:
                await attempt
            assert e.value.code in ("registry.insufficient_credits", "registry.lock_not_active")
    with pytest.raises(DBAPIError, match=r"Art\. 29"):
        async with runtime.db.transaction() as s:
            await s.execute(text("UPDATE registry_blocks SET state = 'held', "
                                 "cancellation_id = NULL WHERE id = :b"), {"b": done[0].id})


async def test_art17_registry_records_are_never_deleted(runtime: Runtime) -> None:
    """Art. 17: records are kept; PostgreSQL refuses to delete them."""
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 3)
    with pytest.raises(DBAPIError, match=r"Art\. 17"):
        async with runtime.db.transaction() as s:
            await s.execute(text("DELETE FROM registry_blocks WHERE account_id = :a"),
                            {"a": account})


async def test_art30_concurrent_locks_never_oversell(runtime: Runtime) -> None:
    """Art. 30: two transactions locking the same credits at once never oversell."""
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 100)

    async def take(n: int) -> str:
        try:
            async with runtime.db.transaction() as s:
                await service.lock(s, account_id=account, quantity=n, purpose="trade",
                                   reference=f"race-{n}")
                await asyncio.sleep(0.05)  # hold the row locks while the other one waits
            return "ok"
        except Conflict as exc:
            return exc.code

    results = await asyncio.gather(take(60), take(70), take(30), take(40))
    async with runtime.db.transaction() as s:
        blocks = await service.holdings(s, account)
    locked = sum(b.quantity for b in blocks if b.state == "locked")
    assert locked <= 100 and sum(b.quantity for b in blocks) == 100
    expected = sum(n for n, r in zip((60, 70, 30, 40), results, strict=True) if r == "ok")
    assert locked == expected and "registry.insufficient_credits" in results


async def test_art30_one_state_per_tonne_blocks_partition_each_issuance(
        runtime: Runtime) -> None:
    """Art. 30: one state per tonne: after locks, splits, moves and cancellations the blocks
    still partition every issuance's serials, and PostgreSQL refuses an overlapping block."""
    async with runtime.db.transaction() as s:
        _, account, inst = await holder_with(s, 40)
        other = await org(s, kind="trader")
        assert other.account_id
        a = await service.lock(s, account_id=account, quantity=7, purpose="t", reference="a")
        b = await service.lock(s, account_id=account, quantity=9, purpose="t", reference="b")
        await service.move_locked(s, a.id, to_account_id=other.account_id)
        await service.cancel_locked(s, b.id, purpose="voluntary", beneficiary="self")
        c = await service.lock(s, account_id=other.account_id, quantity=3, purpose="t",
                               reference="c")
        await service.unlock(s, c.id)
        assert await reconcile(s) == []
        rows = (await s.execute(select(Block).where(Block.project_id == inst.project_id)
                                .order_by(Block.serial_start))).scalars().all()
        spans = [(r.serial_start, r.serial_end) for r in rows]
        assert spans[0][0] == 1 and spans[-1][1] == 40
        assert all(x[1] + 1 == y[0] for x, y in itertools.pairwise(spans))
        first = rows[0]
    with pytest.raises(DBAPIError):
        async with runtime.db.transaction() as s:
            await s.execute(text(
                "INSERT INTO registry_blocks (id, issuance_id, issuance_no, project_id, "
                "project_no, instalment_no, vintage, category, serial_start, serial_end, "
                "account_id, state, created_at, updated_at) SELECT gen_random_uuid(), "
                "issuance_id, issuance_no, project_id, project_no, instalment_no, vintage, "
                "category, serial_start, serial_start, account_id, 'held', now(), now() "
                "FROM registry_blocks WHERE id = :b"), {"b": first.id})


async def test_find_serial(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, account, inst = await holder_with(s, 25)
        base = f"CQCER-{inst.issued[0].project_no}-1-2024"
        lk = await service.lock(s, account_id=account, quantity=5, purpose="t", reference="f")
        hit = await service.find_serial(s, f"{base}-3")
        assert hit is not None and hit.state == "locked" and hit.lock_id == lk.id
        hit = await service.find_serial(s, f"{base}-6-25")
        assert hit is not None and hit.state == "held"
        assert await service.find_serial(s, f"{base}-26") is None
        assert await service.find_serial(s, f"{base}-4-7") is None
        with pytest.raises(DomainError) as e:
            await service.find_serial(s, "CQCER-x")
        assert e.value.code == "registry.serial_invalid"


# --- batch credit API: lock_many, deliver, deliver_many, unlock_many, transfer -------------


async def _audits(s: AsyncSession, action: str) -> int:
    return (await s.execute(text("SELECT count(*) FROM audit_log WHERE action = :a"),
                            {"a": action})).scalar_one()


async def _state(s: AsyncSession, account: UUID) -> dict[str, int]:
    out = {"held": 0, "locked": 0, "cancelled": 0}
    for b in await service.holdings(s, account):
        out[b.state] += b.quantity
    return out


async def test_art30_deliver_part_of_a_lock_keeps_the_rest_locked(runtime: Runtime) -> None:
    """Art. 30: a partial delivery moves exactly the delivered tonnes; the rest stays under the
    same lock, and the lock closes when its last tonne is delivered."""
    async with runtime.db.transaction() as s:
        _, seller, inst = await holder_with(s, 50)
        b1, b2 = await org(s, kind="trader"), await org(s, kind="trader")
        assert b1.account_id and b2.account_id
        lk = await service.lock(s, account_id=seller, quantity=30, purpose="trade",
                                reference="order-1")
        got = await service.deliver(s, lk.id, quantity=12, to_account_id=b1.account_id)
        base = f"CQCER-{inst.issued[0].project_no}-1-2024"
        assert [(b.serial, b.state, b.account_id) for b in got] == \
            [(f"{base}-1-12", "held", b1.account_id)]
        assert await _state(s, seller) == {"held": 20, "locked": 18, "cancelled": 0}
        row = await s.get(Lock, lk.id, populate_existing=True)
        assert row is not None and row.state == "active"
        rest = await service.deliver(s, lk.id, quantity=18, to_account_id=b2.account_id)
        assert [b.serial for b in rest] == [f"{base}-13-30"]
        row = await s.get(Lock, lk.id, populate_existing=True)
        assert row is not None and (row.state, row.to_account_id) == ("delivered",
                                                                      b2.account_id)
        with pytest.raises(Conflict) as e:
            await service.deliver(s, lk.id, quantity=1, to_account_id=b1.account_id)
        assert e.value.code == "registry.lock_not_active"
        kinds = (await s.execute(text(
            "SELECT kind, serial_start, serial_end, to_account_id FROM registry_movements "
            "WHERE lock_id = :l ORDER BY id"), {"l": lk.id})).all()
        assert [(k, a, b) for k, a, b, _ in kinds] == [("lock", 1, 30), ("deliver", 1, 12),
                                                       ("deliver", 13, 30)]
        assert await reconcile(s) == []


async def test_lock_many_gives_what_the_same_locks_one_by_one_give(runtime: Runtime) -> None:
    """A batch serves its requests in order, per account and product, oldest issuance first;
    a request for another product of the same account sees the earlier ones' effect."""
    async with runtime.db.transaction() as s:
        _, a, i1 = await holder_with(s, 10)
        _, other, i2 = await holder_with(s, 10)
        _, b, _ = await holder_with(s, 6)
        await service.transfer(s, from_account_id=other, to_account_id=a, quantity=10,
                               purpose="donation", reference="setup")
        p2 = ProductFilter(category="engineering", project_id=i2.project_id)
        before = await _audits(s, "credits.lock")
        locks = await service.lock_many(s, [
            LockRequest(a, 5, "trade", "r1"), LockRequest(b, 2, "trade", "r2"),
            LockRequest(a, 4, "trade", "r3", p2), LockRequest(a, 8, "trade", "r4"),
            LockRequest(b, 4, "trade", "r5"),
        ])
        assert await _audits(s, "credits.lock") == before + 1  # one record per batch
        n1, n2 = i1.issued[0].project_no, i2.issued[0].project_no
        assert [[(b.project_no, b.serial_start, b.serial_end) for b in lk.blocks]
                for lk in locks] == [
            [(n1, 1, 5)], [(locks[1].blocks[0].project_no, 1, 2)], [(n2, 1, 4)],
            [(n1, 6, 10), (n2, 5, 7)], [(locks[1].blocks[0].project_no, 3, 6)]]
        assert [lk.quantity for lk in locks] == [5, 2, 4, 8, 4]
        assert all(bl.state == "locked" and bl.lock_id == lk.id
                   for lk in locks for bl in lk.blocks)
        assert await _state(s, a) == {"held": 3, "locked": 17, "cancelled": 0}
        assert await _state(s, b) == {"held": 0, "locked": 6, "cancelled": 0}
        assert await reconcile(s) == []


async def test_lock_many_is_all_or_nothing(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, a, _ = await holder_with(s, 10)
        _, b, _ = await holder_with(s, 5)
        counts = await _counts(s)
        for bad, code in (([LockRequest(a, 4, "t", "x"), LockRequest(b, 3, "t", "y"),
                            LockRequest(b, 3, "t", "z")], "registry.insufficient_credits"),
                          ([LockRequest(a, 4, "t", "x"), LockRequest(b, 0, "t", "y")],
                           "registry.quantity_invalid"),
                          ([LockRequest(a, 4, "t", "x"),
                            LockRequest(a, 7, "t", "y",
                                        ProductFilter(category="engineering", vintage=2024))],
                           "registry.insufficient_credits")):
            with pytest.raises(DomainError) as e:
                await service.lock_many(s, bad)
            assert e.value.code == code and e.value.extra["index"] in (1, 2)
        assert await _counts(s) == counts
        assert await _state(s, a) == {"held": 10, "locked": 0, "cancelled": 0}


async def _counts(s: AsyncSession) -> tuple[int, int, int, int]:
    return tuple((await s.execute(text(  # type: ignore[return-value]
        "SELECT (SELECT count(*) FROM registry_locks), (SELECT count(*) FROM registry_blocks), "
        "(SELECT count(*) FROM registry_movements), (SELECT count(*) FROM audit_log)"
    ))).one())


async def test_deliver_many_serves_several_locks_and_receivers_at_once(
        runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        _, a, _ = await holder_with(s, 20)
        _, b, _ = await holder_with(s, 20)
        x, y = await org(s, kind="trader"), await org(s, kind="trader")
        assert x.account_id and y.account_id
        la, lb = await service.lock_many(s, [LockRequest(a, 10, "t", "a"),
                                             LockRequest(b, 8, "t", "b")])
        before = await _audits(s, "credits.deliver")
        out = await service.deliver_many(s, [
            Delivery(la.id, x.account_id, 3), Delivery(lb.id, y.account_id, 8),
            Delivery(la.id, y.account_id, 2), Delivery(la.id, x.account_id),  # the rest: 5
        ])
        assert await _audits(s, "credits.deliver") == before + 1
        assert [sum(bl.quantity for bl in blocks) for blocks in out] == [3, 8, 2, 5]
        assert [(bl.serial_start, bl.serial_end) for bl in out[2]] == [(4, 5)]
        assert await _state(s, x.account_id) == {"held": 8, "locked": 0, "cancelled": 0}
        assert await _state(s, y.account_id) == {"held": 10, "locked": 0, "cancelled": 0}
        assert await _state(s, a) == {"held": 10, "locked": 0, "cancelled": 0}
        states = (await s.execute(select(Lock.state).where(Lock.id.in_([la.id, lb.id]))
                                  .execution_options(populate_existing=True))).scalars().all()
        assert set(states) == {"delivered"}
        assert await reconcile(s) == []


async def test_deliver_many_refusals_change_nothing(runtime: Runtime) -> None:
    """Too much, an unknown lock or account, a zero quantity, or a cancelled lock (Art. 29):
    refused, nothing moves."""
    async with runtime.db.transaction() as s:
        _, a, _ = await holder_with(s, 20)
        x = await org(s, kind="trader")
        assert x.account_id
        la, gone = await service.lock_many(s, [LockRequest(a, 6, "t", "a"),
                                               LockRequest(a, 2, "t", "c")])
        await service.cancel_locked(s, gone.id, purpose="voluntary", beneficiary="self")
        counts = await _counts(s)
        for bad, code in (
            ([Delivery(la.id, x.account_id, 4), Delivery(la.id, x.account_id, 3)],
             "registry.delivery_exceeds_lock"),
            ([Delivery(la.id, x.account_id, 6), Delivery(la.id, x.account_id)],
             "registry.delivery_exceeds_lock"),
            ([Delivery(la.id, x.account_id, 0)], "registry.quantity_invalid"),
            ([Delivery(la.id, x.account_id), Delivery(la.id, x.account_id, 1)],
             "registry.quantity_invalid"),
            ([Delivery(la.id, x.account_id, 1), Delivery(uuid.uuid4(), x.account_id, 1)],
             "registry.lock_not_found"),
            ([Delivery(la.id, uuid.uuid4(), 1)], "registry.account_not_found"),
            ([Delivery(la.id, x.account_id, 1), Delivery(gone.id, x.account_id, 1)],
             "registry.lock_not_active"),
        ):
            with pytest.raises(DomainError) as e:
                async with s.begin_nested():
                    await service.deliver_many(s, bad)
            assert e.value.code == code
        assert await _counts(s) == counts
        assert await _state(s, a) == {"held": 12, "locked": 6, "cancelled": 2}


async def test_unlock_many_and_cancel_after_a_partial_delivery(runtime: Runtime) -> None:
    """A partly delivered lock cancels (Art. 29) or releases only what is still under it."""
    async with runtime.db.transaction() as s:
        _, a, _ = await holder_with(s, 30)
        x = await org(s, kind="trader")
        assert x.account_id
        l1, l2, l3 = await service.lock_many(s, [LockRequest(a, 10, "t", str(i))
                                                 for i in range(3)])
        await service.deliver_many(s, [Delivery(l1.id, x.account_id, 4),
                                       Delivery(l2.id, x.account_id, 1)])
        done = await service.cancel_locked(s, l1.id, purpose="neutrality", beneficiary="会议")
        assert sum(b.quantity for b in done) == 6
        quantity = (await s.execute(text(
            "SELECT quantity FROM registry_cancellations WHERE lock_id = :l"), {"l": l1.id}
        )).scalar_one()
        assert quantity == 6
        await service.unlock_many(s, [l2.id, l3.id])
        assert await _state(s, a) == {"held": 19, "locked": 0, "cancelled": 6}
        with pytest.raises(Conflict) as e:
            await service.unlock_many(s, [l3.id])
        assert e.value.code == "registry.lock_not_active"
        assert await reconcile(s) == []


async def test_art30_concurrent_batches_over_one_account_never_oversell(
        runtime: Runtime) -> None:
    """Art. 30: concurrent lock and delivery batches over the same credits (real concurrent
    transactions) never lock or deliver a tonne twice."""
    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 100)
        _, other, _ = await holder_with(s, 10)
        x = await org(s, kind="trader")
        assert x.account_id
        shared = await service.lock(s, account_id=account, quantity=20, purpose="t",
                                    reference="shared")
    to = x.account_id

    async def batch(requests: list[LockRequest], deliveries: list[Delivery]) -> str:
        try:
            async with runtime.db.transaction() as s:
                if requests:
                    await service.lock_many(s, requests)
                if deliveries:
                    await service.deliver_many(s, deliveries)
                await asyncio.sleep(0.05)  # hold the row locks while the others wait
            return "ok"
        except Conflict as exc:
            return exc.code

    results = await asyncio.gather(
        batch([LockRequest(account, 30, "t", "a"), LockRequest(other, 5, "t", "a")], []),
        batch([LockRequest(other, 5, "t", "b"), LockRequest(account, 30, "t", "b")], []),
        batch([LockRequest(account, 25, "t", "c")], []),
        batch([], [Delivery(shared.id, to, 15)]),
        batch([], [Delivery(shared.id, to, 15)]),
    )
    assert results[3:].count("ok") == 1
    assert "registry.delivery_exceeds_lock" in results[3:]
    assert "registry.insufficient_credits" in results[:3]
    async with runtime.db.transaction() as s:
        mine = await _state(s, account)
        locked = 20 - 15 + sum(n for n, r in zip((30, 30, 25), results, strict=False)
                               if r == "ok")
        assert mine == {"held": 100 - 15 - locked, "locked": locked, "cancelled": 0}
        assert await _state(s, to) == {"held": 15, "locked": 0, "cancelled": 0}
        assert await reconcile(s) == []


async def test_opposite_transfers_at_once_never_deadlock(runtime: Runtime) -> None:
    """Transfers A→B and B→A at the same time take both account locks in id order first, so
    none of them dies in a deadlock; every tonne is still in exactly one place."""
    async with runtime.db.transaction() as s:
        _, a, _ = await holder_with(s, 50)
        _, b, _ = await holder_with(s, 50)

    async def send(src: UUID, dst: UUID) -> None:
        async with runtime.db.transaction() as s:
            await service.transfer(s, from_account_id=src, to_account_id=dst, quantity=2,
                                   purpose="donation", reference="race")
            await asyncio.sleep(0.01)

    await asyncio.gather(*(send(a, b) if i % 2 else send(b, a) for i in range(10)))
    async with runtime.db.transaction() as s:
        assert (await _state(s, a))["held"] + (await _state(s, b))["held"] == 100
        assert await reconcile(s) == []


async def test_art30_lock_with_deliveries_at_once_writes_each_block_once(
        runtime: Runtime) -> None:
    """Art. 30: a lock that delivers part at once (a sell order filled on entry) records the
    lock and each delivery in the history, leaves the rest locked, and closes a lock
    delivered in full; too much to deliver is refused and changes nothing."""
    async with runtime.db.transaction() as s:
        _, a, inst = await holder_with(s, 20)
        x, y = await org(s, kind="trader"), await org(s, kind="trader")
        assert x.account_id and y.account_id
        counts = await _counts(s)
        with pytest.raises(DomainError) as e:
            await service.lock_many(s, [LockRequest(a, 3, "t", "r", deliver=((x.account_id, 4),))])
        assert e.value.code == "registry.quantity_invalid"
        assert await _counts(s) == counts
        part, whole = await service.lock_many(s, [
            LockRequest(a, 8, "t", "p", deliver=((x.account_id, 2), (y.account_id, 3))),
            LockRequest(a, 4, "t", "w", deliver=((y.account_id, 4),)),
        ])
        assert (part.state, [(b.serial_start, b.serial_end) for b in part.blocks]) == \
            ("active", [(6, 8)])
        assert (whole.state, whole.blocks) == ("delivered", [])
        assert await _state(s, x.account_id) == {"held": 2, "locked": 0, "cancelled": 0}
        assert await _state(s, y.account_id) == {"held": 7, "locked": 0, "cancelled": 0}
        assert await _state(s, a) == {"held": 8, "locked": 3, "cancelled": 0}
        steps = (await s.execute(text(
            "SELECT kind, serial_start, serial_end, to_account_id FROM registry_movements "
            "WHERE lock_id = :l ORDER BY id"), {"l": part.id})).all()
        assert [tuple(r) for r in steps] == [
            ("lock", 1, 2, a), ("deliver", 1, 2, x.account_id), ("lock", 3, 5, a),
            ("deliver", 3, 5, y.account_id), ("lock", 6, 8, a)]
        row = await s.get(Lock, whole.id, populate_existing=True)
        assert row is not None and (row.state, row.to_account_id) == ("delivered",
                                                                      y.account_id)
        rest = await service.move_locked(s, part.id, to_account_id=x.account_id)
        assert [b.serial for b in rest] == [f"CQCER-{inst.issued[0].project_no}-1-2024-6-8"]
        assert await reconcile(s) == []


async def test_deferred_audit_appends_the_credit_records_at_the_end_or_not_at_all(
        runtime: Runtime) -> None:
    """A batch caller may defer the credit service's audit records to the end of a block
    (the audit chain's global lock is then taken last); they are appended in call order, and
    not at all when the block fails."""
    from registry import credits

    async def n(s: AsyncSession) -> int:
        return int((await s.execute(text(
            "SELECT count(*) FROM audit_log WHERE action LIKE 'credits.%'"))).scalar_one())

    async with runtime.db.transaction() as s:
        _, account, _ = await holder_with(s, 10)
        before = await n(s)
        async with credits.deferred_audit(s):
            lk = await service.lock(s, account_id=account, quantity=3, purpose="trade",
                                    reference="deferred")
            await service.unlock(s, lk.id)
            assert await n(s) == before  # nothing appended yet
        assert await n(s) == before + 2
        actions = (await s.execute(text(
            "SELECT action FROM audit_log ORDER BY id DESC LIMIT 2"))).scalars().all()
        assert list(actions) == ["credits.unlock", "credits.lock"]
    async with runtime.db.transaction() as s:
        before = await n(s)
        with pytest.raises(Conflict):
            async with credits.deferred_audit(s):
                await service.lock(s, account_id=account, quantity=2, purpose="trade",
                                   reference="deferred-2")
                await service.lock(s, account_id=account, quantity=99, purpose="trade",
                                   reference="too-much")
        assert await n(s) == before
        assert "registry.deferred_audit" not in s.info
