"""The daily expiry of points (积分过期), scheduled in-process by ``tanhui serve``.

Every instance wakes at ``settings.points_expiry_time`` (Asia/Shanghai); a transaction-level
advisory lock lets exactly one of them run :func:`points.service.expire_due` at a time, and the
work itself is idempotent, so a second run (or a late instance) finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, time, timedelta

import structlog
from sqlalchemy import text

from app import clock
from app.db import Database
from app.runtime import Runtime
from points import service

log = structlog.get_logger()

# pg advisory lock key of the expiry run ("tanhui" + 1).
EXPIRY_LOCK_KEY = 0x74616E687569_0001


def parse_time_of_day(value: str) -> time:
    """``"03:00"`` → 03:00; refuses anything else."""
    hours, _, minutes = value.partition(":")
    return time(int(hours), int(minutes or 0))


def next_run(after: datetime, at: str) -> datetime:
    """The first instant strictly after ``after`` whose Asia/Shanghai time of day is ``at``."""
    local = after.astimezone(clock.SHANGHAI)
    candidate = datetime.combine(local.date(), parse_time_of_day(at), tzinfo=clock.SHANGHAI)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(after.tzinfo)


async def run_expiry(db: Database, *, now: datetime | None = None) -> int | None:
    """Run one expiry in its own transaction under the advisory lock. Returns what
    :func:`points.service.expire_due` returns, or ``None`` if another run holds the lock."""
    async with db.transaction() as session:
        got = (
            await session.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": EXPIRY_LOCK_KEY}
            )
        ).scalar_one()
        if not got:
            return None
        return await service.expire_due(session, now=now)


async def run_scheduler(runtime: Runtime, stop: asyncio.Event) -> None:
    """Until ``stop`` is set: sleep to the next expiry time of day, then run the expiry."""
    at = runtime.settings.points_expiry_time
    parse_time_of_day(at)  # fail at start, not at 03:00
    while not stop.is_set():
        now = clock.now()
        due = next_run(now, at)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=(due - now).total_seconds())
        if stop.is_set():
            return
        try:
            done = await run_expiry(runtime.db)
        except Exception:  # keep the schedule alive; the next day catches up
            log.exception("points_expiry_failed")
            continue
        if done is None:
            log.info("points_expiry_skipped", reason="another instance holds the lock")
        else:
            log.info("points_expiry_done", expired=done)
