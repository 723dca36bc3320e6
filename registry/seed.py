"""Demo data (演示数据) for ``make run``: a methodology of each category, two VVBs, a demo
owner (login ``demo-owner`` / ``demo-owner-pass``) with a registered project and one issuance.
Every record is marked ``is_demo``; running twice changes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry import catalog, flows, issuance, projects, service
from registry.models import Methodology, Organisation, Project, Vvb
from registry.schemas import (
    Declarations,
    InstalmentIn,
    MethodologyIn,
    OrganisationIn,
    ProjectIn,
    VvbIn,
)

ACTOR = "system:seed"
METHODOLOGIES = (
    ("DEMO-ENG-001", "分布式光伏发电项目（演示）", "engineering", "energy",
     "ER = EG × EF_grid", {"EF_grid": "0.5810"}),
    ("DEMO-ECO-001", "森林经营碳汇项目（演示）", "ecological_sink", "forestry",
     "ER = ΔC_project − ΔC_baseline − L", {"CF": "0.47"}),
    ("DEMO-INC-001", "公共自行车出行（演示）", "carbon_inclusive", "transport",
     "ER = Σ d_i × (EF_car − EF_bike)", {"EF_car": "0.000180"}),
)


def _at(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(hour=3, tzinfo=UTC)


async def seed_demo(session: AsyncSession) -> dict[str, Any]:
    done = (await session.execute(
        select(Methodology.id).where(Methodology.code == "DEMO-ENG-001")
    )).scalar_one_or_none()
    if done is not None:
        return {"skipped": True}
    versions = {}
    for code, title, category, field, formula, params in METHODOLOGIES:
        m = await catalog.create_methodology(session, MethodologyIn(
            code=code, title=title, category=category, field=field,  # type: ignore[arg-type]
            baseline="演示基准线", additionality="演示额外性论证", formula=formula,
            parameters=params, monitoring_plan_ref=f"{code}-MP"), actor=ACTOR, is_demo=True)
        m = await catalog.publish_methodology(session, m.id, actor=ACTOR)
        versions[category] = m.versions[-1].id
    vvbs = []
    for i, name in enumerate(("重庆演示审定核查中心", "西南演示认证有限公司")):
        vvbs.append(await catalog.recognise_vvb(session, VvbIn(
            name=name, uscc=f"9150000000000000{i}X", categories=[
                "engineering", "ecological_sink", "carbon_inclusive"],
            fields=["energy", "forestry", "transport"], valid_from=date(2024, 1, 1),
            valid_until=date(2029, 12, 31)), actor=ACTOR, is_demo=True))
    validator, verifier = vvbs
    owner = await service.create_organisation(session, OrganisationIn(
        name="重庆演示光伏有限公司", uscc="915000000000000010", kind="owner",
        district_code="500112", username="demo-owner", password="demo-owner-pass"),
        actor=ACTOR, is_demo=True)
    project = await projects.create_project(session, owner.id, ProjectIn(
        title="渝北区屋顶分布式光伏（演示）", methodology_version_id=versions["engineering"],
        district_code="500112", site="渝北区 演示工业园 1 号", operation_start=date(2023, 6, 1),
        crediting_start=date(2024, 1, 1), crediting_end=date(2028, 12, 31),
        design_document_ref="DEMO-PDD-1", validator_vvb_id=validator.id,
        declarations=Declarations(registered_elsewhere=False, green_power_benefit=False,
                                  legal_obligation=False, ets_covered=False,
                                  real_and_additional=True)),
        actor=ACTOR, now=_at("2025-03-03"), is_demo=True)
    await projects.file_validation(session, project.id, vvb_id=validator.id,
                                   conclusion="positive", report_ref="DEMO-VAL-1", actor=ACTOR,
                                   now=_at("2025-03-03"))
    await projects.submit_project(session, project.id, owner_id=owner.id, actor=ACTOR,
                                  now=_at("2025-03-03"))
    await _walk(session, "project", project.id, "2025-03-04", "2025-04-15", "2025-04-20")
    inst = await issuance.create_instalment(session, project.id, InstalmentIn(
        period_start=date(2024, 1, 1), period_end=date(2024, 12, 31), claimed_tonnes=12_000,
        accounting_report_ref="DEMO-ACC-1", verifier_vvb_id=verifier.id),
        owner_id=owner.id, actor=ACTOR, now=_at("2025-05-05"))
    await issuance.file_verification(session, inst.id, vvb_id=verifier.id,
                                     verified_tonnes=10_000, report_ref="DEMO-VER-1",
                                     actor=ACTOR, now=_at("2025-05-05"))
    await issuance.submit_instalment(session, inst.id, owner_id=owner.id, actor=ACTOR,
                                     now=_at("2025-05-05"))
    await _walk(session, "instalment", inst.id, "2025-05-06", "2025-06-20", "2025-07-01")
    await session.execute(update(Project).where(Project.id == project.id).values(is_demo=True))
    n_orgs = (await session.execute(select(Organisation.id).where(Organisation.is_demo))).all()
    n_vvbs = (await session.execute(select(Vvb.id).where(Vvb.is_demo))).all()
    return {"methodologies": len(METHODOLOGIES), "vvbs": len(n_vvbs),
            "organisations": len(n_orgs), "projects": 1, "issued_tonnes": 10_000}


async def _walk(session: AsyncSession, kind: flows.Kind, sid: Any, notice: str, applied: str,
                registered: str) -> None:
    subject = await flows.load(session, kind, sid)
    await flows.check_completeness(session, subject, complete=True, reason=None, actor=ACTOR,
                                   now=_at(notice))
    await flows.apply_formally(session, subject, comment_handling=None, actor=ACTOR,
                               now=_at(applied))
    await flows.review(session, subject, passed=True, reason=None, actor=ACTOR, now=_at(applied))
    await flows.add_opinion(session, subject, outcome="pass", body="演示专家意见：同意",
                            actor="expert:demo", now=_at(applied))
    await flows.conclude_assessment(session, subject, outcome="pass", deadline=None,
                                    reason=None, actor=ACTOR, now=_at(applied))
    await flows.decide_letter(session, subject, issue=True, reason=None, actor=ACTOR,
                              now=_at(registered))
    if kind == "project":
        await projects.register_project(session, sid, actor=ACTOR, now=_at(registered))
    else:
        await issuance.register_instalment(session, sid, actor=ACTOR, now=_at(registered))
