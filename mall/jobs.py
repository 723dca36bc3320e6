"""Background work of the mall: voucher expiry and stock-gate reconciliation.

``run_voucher_expiry(runtime, stop)`` fits ``app.main.background_tasks`` (a
``BackgroundTask``); every process may run it: expiry locks vouchers ``SKIP LOCKED`` and
reconciliation only ever raises a gate to its database stock, so concurrent runs are safe.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from app.runtime import Runtime
from mall import flows

log = structlog.get_logger()

INTERVAL_S = 30.0


async def run_once(runtime: Runtime) -> dict[str, int]:
    """One pass: expire due vouchers, then reconcile the stock gates."""
    expired = await flows.expire_vouchers(runtime)
    raised = await flows.reconcile_gates(runtime)
    if expired or raised:
        log.info("mall_voucher_expiry", expired=expired, gates_raised=raised)
    return {"expired": expired, "gates_raised": raised}


async def run_voucher_expiry(
    runtime: Runtime, stop: asyncio.Event, *, interval_s: float = INTERVAL_S
) -> None:
    """Run :func:`run_once` every ``interval_s`` seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            await run_once(runtime)
        except Exception:
            log.exception("mall_voucher_expiry_failed")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
