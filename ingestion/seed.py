"""Demo points for ``make run`` (演示数据): the demo citizen's rides on the demo scenes,
credited through the ledger with the published rules in force, so the app shows a balance,
lots and a traced statement. Event ids are fixed, so seeding twice credits nothing new."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from points import service

DEMO_PHONE = "13800000000"  # the demo citizen of app.auth.seed
RIDES = 12


async def seed_demo(session: AsyncSession) -> dict[str, Any]:
    from app.auth.citizens import find_citizen_by_phone
    from scenes import service as scenes
    from scenes.lookup import rulebook

    citizen = await find_citizen_by_phone(session, DEMO_PHONE)
    if citizen is None:
        return {"points": "no demo citizen"}
    demo = [s for s in await scenes.list_scenes(session) if s.code.startswith("demo-")]
    pairs = [(s.id, b.code) for s in demo for b in await scenes.list_behaviours(session, s.id)]
    book = await rulebook(session, pairs)
    start = clock.now() - timedelta(days=RIDES)
    credits = []
    for scene_id, behaviour in pairs:
        for day in range(RIDES):
            at = start + timedelta(days=day, hours=1)
            rule, conversion = book.rule_at(scene_id, behaviour, at), book.conversion_at(at)
            if rule is None or conversion is None:
                continue
            credits.append(service.CreditIn(
                citizen_id=citizen, scene_id=scene_id, event_id=f"demo-{behaviour}-{day}",
                behaviour=behaviour, occurred_at=at,
                grams=rule.grams_for((day % 5 + 1) * 4_000),  # 4 to 20 units (trips or km)
                grams_per_point=conversion.grams_per_point,
                reduction_rule_version_id=rule.version_id,
                conversion_rule_version_id=conversion.version_id,
            ))
    result = await service.credit_batch(session, credits)
    return {"points_credited": result.points, "demo_events": len(result.new)}
