"""Demo data for ``make run`` (``tanhui seed``): every record is labelled as demo data.

Each domain contributes ``seed_demo(session)`` in its own ``seed.py``; running twice is a no-op.
"""

from __future__ import annotations

import importlib

import structlog

from app.runtime import Runtime

log = structlog.get_logger()

# Order matters: citizens and scenes before the demo rides are credited.
DOMAINS = ("app.auth.seed", "scenes.seed", "ingestion.seed", "mall.seed", "registry.seed")


async def seed_demo(runtime: Runtime) -> dict[str, dict[str, object]]:
    """Seed every domain; returns what each seeded (demo credentials included) by domain."""
    from app.migrations import check_current

    await check_current(runtime.db)
    seeded: dict[str, dict[str, object]] = {}
    for name in DOMAINS:
        module = importlib.import_module(name)
        async with runtime.db.transaction() as session:
            summary = await module.seed_demo(session)
        seeded[name] = dict(summary or {})
        log.info("seeded", domain=name, keys=sorted(seeded[name]))
    return seeded
