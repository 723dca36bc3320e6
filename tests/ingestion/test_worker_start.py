"""A points worker whose bus is down at start waits for it instead of exiting."""

from __future__ import annotations

import asyncio
import time

from app.bus.kafka import KafkaBus
from app.runtime import Runtime
from ingestion.worker import consume


async def test_worker_waits_for_a_bus_that_is_down_and_stops_on_request(
    runtime: Runtime,
) -> None:
    dead = KafkaBus(runtime.settings, bootstrap="127.0.0.1:1", timeout_s=0.5)
    rt = Runtime(settings=runtime.settings, db=runtime.db, redis=runtime.redis, bus=dead,
                 embedded=None)
    stop = asyncio.Event()
    task = asyncio.create_task(consume(rt, stop))
    await asyncio.sleep(2.5)
    assert not task.done(), "the worker gave up on a bus that is down"
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, timeout=10)  # returns cleanly, no exception
    assert time.monotonic() - started < 10
    await dead.stop()
