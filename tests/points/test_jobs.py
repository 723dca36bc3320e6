"""The expiry job (schedule, advisory lock, concurrent runs) and the CLI: expire, check."""

from __future__ import annotations

import asyncio
import time as stdtime
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from typer.testing import CliRunner

from app import clock
from app.cli import cli
from app.db import Database
from app.runtime import Runtime
from app.settings import get_settings
from points import jobs, service
from tests.points.factories import T0, assert_reconciled, credit, diffs, new_citizen

VALIDITY = timedelta(days=get_settings().points_validity_days)


def test_next_run_is_the_daily_time_of_day_in_shanghai() -> None:
    morning = datetime(2025, 3, 1, 1, 0, tzinfo=UTC)  # 09:00 in Chongqing
    assert jobs.next_run(morning, "03:00") == datetime(2025, 3, 1, 19, 0, tzinfo=UTC)
    just_before = datetime(2025, 3, 1, 18, 59, tzinfo=UTC)  # 02:59 on 2 March
    assert jobs.next_run(just_before, "03:00") == datetime(2025, 3, 1, 19, 0, tzinfo=UTC)
    at = datetime(2025, 3, 1, 19, 0, tzinfo=UTC)
    assert jobs.next_run(at, "03:00") == datetime(2025, 3, 2, 19, 0, tzinfo=UTC)


async def test_two_concurrent_expiry_runs_expire_each_lot_once(db: Database) -> None:
    citizens = [new_citizen() for _ in range(30)]
    for c in citizens:
        await credit(db, c, 3, now=T0)
    late = T0 + VALIDITY + timedelta(hours=1)
    first, second = await asyncio.gather(jobs.run_expiry(db, now=late),
                                         jobs.run_expiry(db, now=late))
    results = sorted([first, second], key=lambda r: -1 if r is None else r)
    assert results[0] in (None, 0) and results[1] is not None and results[1] >= len(citizens)
    # Without the advisory lock the service itself is still safe: account locks serialise.
    more = [new_citizen() for _ in range(10)]
    for c in more:
        await credit(db, c, 2, now=T0)

    async def bare() -> int:
        async with db.transaction() as s:
            return await service.expire_due(s, now=late)

    a, b = await asyncio.gather(bare(), bare())
    assert sorted([a, b])[0] == 0 and sorted([a, b])[1] >= len(more)
    async with db.transaction() as s:
        for c in citizens + more:
            bal = await service.balance(s, c, now=late)
            assert (bal.available, bal.held) == (0, 0)
        page = await service.statement(s, citizens[0])
    assert [(e.kind, e.points) for e in page.items] == [("expiry", 3), ("credit", 3)]
    await assert_reconciled(db, *citizens, *more)


async def test_scheduler_runs_the_expiry_at_its_time_of_day(runtime: Runtime) -> None:
    citizen = new_citizen()
    await credit(runtime.db, citizen, 6, now=T0)
    # Let the clock read 02:59:59.7 in Chongqing on a day after the lot's expiry.
    due_local = datetime.combine((T0 + VALIDITY + timedelta(days=3)).date(),
                                 jobs.parse_time_of_day(runtime.settings.points_expiry_time),
                                 tzinfo=clock.SHANGHAI)
    start, started = due_local - timedelta(seconds=0.3), stdtime.monotonic()
    clock.set_clock(lambda: (start + timedelta(seconds=stdtime.monotonic() - started))
                    .astimezone(UTC))
    stop = asyncio.Event()
    task = asyncio.create_task(jobs.run_scheduler(runtime, stop))
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            async with runtime.db.transaction() as s:
                lots = await service.list_lots(s, citizen, include_spent=True)
            if lots[0].expired:
                break
        assert [(lot.remaining, lot.expired) for lot in lots] == [(0, 6)]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        clock.set_clock(None)
    assert task.done() and task.exception() is None


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["points", *args])
    return result.exit_code, result.output


async def test_cli_check_exits_nonzero_listing_a_corrupted_account(db: Database) -> None:
    """``tanhui points check``: a balance row changed behind the ledger's back is caught."""
    citizen = new_citizen()
    await credit(db, citizen, 9, now=T0)
    async with db.transaction() as s:
        await service.hold(s, citizen, 2, reference="x", now=T0)
    code, out = await asyncio.to_thread(_invoke, "check")
    assert code == 0 and "all accounts reconcile" in out, out
    async with db.transaction() as s:
        account_id = (await s.execute(text(
            "UPDATE points_accounts SET available = available + 5 WHERE citizen_id = :c"
            " RETURNING id"), {"c": citizen})).scalar_one()
    try:
        code, out = await asyncio.to_thread(_invoke, "check")
        assert code == 1, out
        assert str(account_id)[:8] in out and "1 account(s) differ" in out
        (diff,) = await diffs(db, citizen)
        assert "available != sum of lots' remaining" in diff.problems
    finally:
        async with db.transaction() as s:
            await s.execute(text(
                "UPDATE points_accounts SET available = available - 5 WHERE citizen_id = :c"),
                {"c": citizen})
    await assert_reconciled(db, citizen)


async def test_cli_expire_expires_due_lots(db: Database) -> None:
    citizen = new_citizen()
    # Credited more than the validity ago (by the real clock the CLI uses).
    await credit(db, citizen, 4, now=clock.now() - VALIDITY - timedelta(days=1))
    code, out = await asyncio.to_thread(_invoke, "expire")
    assert code == 0 and "expired" in out, out
    async with db.transaction() as s:
        assert (await service.balance(s, citizen)).available == 0
        page = await service.statement(s, citizen)
    assert page.items[0].kind == "expiry"
    await assert_reconciled(db, citizen)
