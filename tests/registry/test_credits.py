"""The credit service that trading and offsets use: lock, unlock, move, cancel (Art. 29, 30)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from app.errors import Conflict, DomainError
from app.runtime import Runtime
from registry import service
from registry.models import Block, Lock
from registry.reconcile import reconcile
from registry.schemas import ProductFilter
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
