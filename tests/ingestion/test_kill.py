"""Faults: the worker process is killed with SIGKILL in the middle of batches, several times
during a run; after restarts every event is credited exactly once (both bus adapters)."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from app.runtime import Runtime
from ingestion import service
from ingestion.schemas import BusEvent
from tests.ingestion.conftest import KAFKA_BOOTSTRAP, kafka_runtime, make_partner
from tests.ingestion.test_worker import bus_event

TANHUI = str(Path(sys.executable).with_name("tanhui"))
KILL_TEST_SESSION_MS = 3000


async def _count(runtime: Runtime, scene_id: uuid.UUID) -> tuple[int, int]:
    async with runtime.db.session() as s:
        row = (await s.execute(text(
            "SELECT count(*), count(DISTINCT event_id) FROM points_entries "
            "WHERE scene_id = :s AND kind = 'credit'"), {"s": scene_id})).one()
    return int(row[0]), int(row[1])


async def _start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        TANHUI, "worker", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _wait_for_progress(runtime: Runtime, scene_id: uuid.UUID, above: int,
                             timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n, _ = await _count(runtime, scene_id)
        if n > above:
            return n
        await asyncio.sleep(0.02)
    raise AssertionError(f"the worker made no progress past {above} in {timeout_s} s")


@pytest.mark.parametrize(("kind", "kills"), [
    ("pgqueue", 3),
    # Tansu keeps a killed member for its session timeout before it rebalances: the workers
    # here run with a 3 s one (TANHUI_KAFKA_SESSION_TIMEOUT_MS) instead of the default 10 s.
    pytest.param("kafka", 2, marks=pytest.mark.slow),
])
async def test_worker_killed_mid_batch_credits_every_event_exactly_once(
    runtime: Runtime, kind: str, kills: int
) -> None:
    rt = runtime if kind == "pgqueue" else await kafka_runtime(runtime)
    env = dict(os.environ)
    if kind == "kafka":
        env["TANHUI_KAFKA_BOOTSTRAP"] = KAFKA_BOOTSTRAP
        env["TANHUI_KAFKA_SESSION_TIMEOUT_MS"] = str(KILL_TEST_SESSION_MS)
        # A group of its own: on Tansu, a worker restarted into a group that earlier tests'
        # consumers had joined and left could time out in SyncGroup (and the worker exits).
        env["TANHUI_INGEST_WORKER_GROUP"] = "points-worker-kill-" + uuid.uuid4().hex[:8]
    try:
        p = await make_partner(rt, citizens=40)
        refs = list(p.citizens)
        published: list[BusEvent] = []

        async def burst(n: int) -> None:
            # small requests → small messages → worker batches of ~1,000 events
            for _ in range(0, n, 200):
                chunk = [bus_event(p, refs[(len(published) + i) % len(refs)])
                         for i in range(200)]
                await service.publish_events(rt, chunk)
                published.extend(chunk)

        seen = 0
        for _ in range(kills):
            await burst(20_000)  # a backlog of many batches for the next worker
            proc = await _start(env)
            try:
                seen = await _wait_for_progress(rt, p.scene_id, seen, timeout_s=40)
                await asyncio.sleep(random.uniform(0.0, 0.05))
            finally:
                proc.kill()  # SIGKILL: no cleanup, the batch in hand is lost mid-way
                await proc.wait()
            assert proc.returncode == -9
            seen, _ = await _count(rt, p.scene_id)
            assert seen < len(published), "killed while there was work in hand"
        await burst(2_000)
        proc = await _start(env)
        try:
            deadline = time.monotonic() + 60
            while (await _count(rt, p.scene_id))[0] < len(published):
                assert time.monotonic() < deadline, "the restarted worker did not finish"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # nothing more arrives: no event credited twice
        finally:
            proc.terminate()
            await proc.wait()
        total, distinct = await _count(rt, p.scene_id)
        assert (total, distinct) == (len(published), len(published))
        per_citizen = len(published) // len(refs)
        async with rt.db.session() as s:
            balances = (await s.execute(text(
                "SELECT a.available FROM points_accounts a WHERE a.citizen_id = ANY(:c)"),
                {"c": list(p.citizens.values())})).scalars().all()
        assert sorted(balances) == [25 * per_citizen] * len(refs)  # 2.5 km × 100 g / 10 g
    finally:
        if rt is not runtime:
            await rt.bus.stop()
