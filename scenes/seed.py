"""Demo data for ``make run`` — every record here is DEMO data (演示数据), not a real scene.

Two scenes (bus and metro) with plausible published factors, a conversion rule, and the demo
citizen (from ``app.auth.seed``) consenting to and linked in both. Running twice is a no-op.

Factors: Shenzhen's published carbon-inclusion factors are 26.9 g/passenger-km (bus) and
46.8 g/passenger-km (metro); Chongqing's app credits a bus ride with about 120 g.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth import citizens
from scenes import consent, rules, service
from scenes.models import ConversionRuleVersion, Scene
from scenes.schemas import (
    BehaviourIn,
    ConsentIn,
    ConversionRuleDraft,
    ReductionRuleDraft,
    SceneCreate,
)

ACTOR = "seed:demo"
DEMO_PHONE = "13800000000"  # the demo citizen of app.auth.seed
DEMO_FROM = datetime(2024, 9, 1, tzinfo=UTC)  # the measures are in force from 2024-09-01
PRIVACY_NOTICE = "demo-2024-09"

SCENES: list[dict[str, Any]] = [
    {
        "scene": SceneCreate(
            code="demo-bus", name_zh="【演示】重庆公交", name_en="[DEMO] Chongqing buses",
            category="bus", partner_name="【演示】公交集团（示例数据）",
            agreement_ref="DEMO-THT-BUS-001", agreement_signed_on=date(2024, 8, 20),
            agreement_starts_on=date(2024, 9, 1), claim_window_days=30,
        ),
        "behaviours": [
            (BehaviourIn(code="ride", name_zh="乘坐公交（按次）", name_en="Bus ride (per trip)"),
             "trip", Decimal("120"), Decimal("1"), 120, 480,
             "演示：重庆“碳惠通”公交出行约 120 g/次"),
            (BehaviourIn(code="ride_km", name_zh="乘坐公交（按里程）",
                         name_en="Bus ride (per passenger-km)"),
             "passenger_km", Decimal("26.9"), Decimal("60"), 1614, 3000,
             "演示：深圳碳普惠公交出行因子 26.9 g/人·km"),
        ],
        "partner_user_ref": "demo-bus-user-0001",
    },
    {
        "scene": SceneCreate(
            code="demo-metro", name_zh="【演示】重庆轨道交通", name_en="[DEMO] Chongqing metro",
            category="metro", partner_name="【演示】轨道交通集团（示例数据）",
            agreement_ref="DEMO-THT-METRO-001", agreement_signed_on=date(2024, 8, 20),
            agreement_starts_on=date(2024, 9, 1), claim_window_days=30,
        ),
        "behaviours": [
            (BehaviourIn(code="ride_km", name_zh="乘坐轨道交通（按里程）",
                         name_en="Metro ride (per passenger-km)"),
             "passenger_km", Decimal("46.8"), Decimal("80"), 3744, 6000,
             "演示：深圳碳普惠地铁出行因子 46.8 g/人·km"),
        ],
        "partner_user_ref": "demo-metro-user-0001",
    },
]


async def seed_demo(session: AsyncSession) -> dict[str, Any]:
    """Create the demo scenes, rules and links unless they exist; return what a developer
    needs (partner credentials are shown only on the first run)."""
    summary: dict[str, Any] = {"demo": True}
    citizen_id = await citizens.get_or_create_citizen(session, DEMO_PHONE, demo=True)
    now = clock.now()
    for spec in SCENES:
        data: SceneCreate = spec["scene"]
        if await session.scalar(select(Scene.id).where(Scene.code == data.code)) is not None:
            continue
        scene = await service.register_scene(session, data, actor=ACTOR, demo=True)
        for behaviour, unit, factor, max_q, cap_event, cap_day, basis in spec["behaviours"]:
            await service.add_behaviour(session, scene.id, behaviour, actor=ACTOR)
            draft = await rules.draft_reduction_rule(
                session, scene.id,
                ReductionRuleDraft(
                    behaviour=behaviour.code, unit=unit, grams_per_unit=factor,
                    max_quantity_per_event=max_q, cap_grams_per_event=cap_event,
                    cap_grams_per_day=cap_day, cap_grams_per_year=cap_day * 200,
                    valid_from=DEMO_FROM, basis=basis,
                ),
                actor=ACTOR,
            )
            await rules.publish_reduction_rule(session, draft.id, actor=ACTOR, now=now)
        client_id, secret = await service.issue_credentials(session, scene.id, actor=ACTOR)
        summary[f"{data.code}_client_id"] = client_id
        summary[f"{data.code}_client_secret"] = secret
        _granted, code = await consent.grant_consent(
            session, citizen_id,
            ConsentIn(scene_code=data.code, privacy_notice_version=PRIVACY_NOTICE), now=now,
        )
        await consent.redeem_link_code(session, scene.id, link_code=code.code,
                                       partner_user_ref=spec["partner_user_ref"], now=now)
        summary[f"{data.code}_partner_user_ref"] = spec["partner_user_ref"]
    has_conversion = await session.scalar(
        select(ConversionRuleVersion.id).where(ConversionRuleVersion.status == "published")
        .limit(1))
    if has_conversion is None:
        draft_c = await rules.draft_conversion_rule(
            session,
            ConversionRuleDraft(grams_per_point=10, valid_from=DEMO_FROM,
                                basis="演示：1 碳积分 = 10 g CO2e（示例数据）"),
            actor=ACTOR,
        )
        await rules.publish_conversion_rule(session, draft_c.id, actor=ACTOR, now=now)
    summary["demo_citizen_id"] = str(citizen_id)
    return summary
