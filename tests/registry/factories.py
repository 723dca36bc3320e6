"""Small factories that build registry data through the registry's own services."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from registry import catalog, flows, issuance, projects, service
from registry.schemas import (
    Declarations,
    InstalmentIn,
    MethodologyIn,
    OrganisationIn,
    ProjectIn,
    VvbIn,
)

ACTOR = "test"
FIELDS = {"engineering": "energy", "ecological_sink": "forestry",
          "carbon_inclusive": "transport"}


def at(d: str, hour: int = 3) -> datetime:
    """A UTC instant on a business date (03:00 UTC = 11:00 in Chongqing)."""
    return datetime.fromisoformat(d).replace(hour=hour, tzinfo=UTC)


def uscc() -> str:
    return "91500000" + "".join(secrets.choice("0123456789") for _ in range(10))


async def org(s: AsyncSession, kind: str = "owner", staff_of: str | None = None,
              **kw: Any) -> service.OrganisationOut:
    return await service.create_organisation(
        s, OrganisationIn(name=f"org-{uuid.uuid4().hex[:6]}", uscc=uscc(), kind=kind,
                          staff_of=staff_of, district_code="500103", **kw), actor=ACTOR)


async def methodology(s: AsyncSession, category: str = "engineering",
                      publish: bool = True) -> catalog.MethodologyOut:
    m = await catalog.create_methodology(s, MethodologyIn(
        code=f"CQ-{uuid.uuid4().hex[:8]}", title="测试方法学", category=category,  # type: ignore[arg-type]
        field=FIELDS[category], baseline="b", additionality="a", formula="E = B - P",
        parameters={"ef_grid": "0.5810"}, monitoring_plan_ref="mp-1"), actor=ACTOR)
    if publish:
        m = await catalog.publish_methodology(s, m.id, actor=ACTOR)
    return m


async def vvb(s: AsyncSession, categories: tuple[str, ...] = ("engineering", "ecological_sink",
                                                             "carbon_inclusive"),
              fields: tuple[str, ...] = ("energy", "forestry", "transport")) -> catalog.VvbOut:
    return await catalog.recognise_vvb(s, VvbIn(
        name=f"vvb-{uuid.uuid4().hex[:6]}", uscc=uscc(), categories=list(categories),  # type: ignore[arg-type]
        fields=list(fields), valid_from=date(2020, 1, 1), valid_until=date(2030, 12, 31)),
        actor=ACTOR)


def project_in(version_id: UUID, validator: UUID, *, category: str = "engineering",
               **over: Any) -> ProjectIn:
    data: dict[str, Any] = {
        "title": "光伏减排项目", "methodology_version_id": version_id,
        "district_code": "500112", "site": f"site-{uuid.uuid4().hex}",
        "operation_start": date(2023, 6, 1), "crediting_start": date(2024, 1, 1),
        "crediting_end": date(2028, 12, 31), "design_document_ref": "pdd-1",
        "validator_vvb_id": validator,
        "declarations": Declarations(registered_elsewhere=False, green_power_benefit=False,
                                     legal_obligation=False, ets_covered=False,
                                     real_and_additional=True,
                                     inclusive=category == "carbon_inclusive"),
    }
    data.update(over)
    return ProjectIn.model_validate(data)


@dataclass
class World:
    owner: service.OrganisationOut
    methodology: catalog.MethodologyOut
    validator: catalog.VvbOut
    verifier: catalog.VvbOut

    @property
    def version_id(self) -> UUID:
        return self.methodology.versions[-1].id


async def world(s: AsyncSession, category: str = "engineering") -> World:
    return World(await org(s), await methodology(s, category), await vvb(s), await vvb(s))


async def walk(s: AsyncSession, kind: flows.Kind, sid: UUID, owner_id: UUID, start: str,
               applied: str, registered: str) -> None:
    """Walk a submitted project or instalment to registration (notice, review, assessment,
    letter, registration), at the given dates."""
    subject = await flows.load(s, kind, sid)
    await flows.check_completeness(s, subject, complete=True, reason=None, actor=ACTOR,
                                   now=at(start))
    await flows.apply_formally(s, subject, comment_handling=None, actor=ACTOR, now=at(applied))
    await flows.review(s, subject, passed=True, reason=None, actor=ACTOR, now=at(applied))
    await flows.add_opinion(s, subject, outcome="pass", body="ok", actor="expert",
                            now=at(applied))
    await flows.conclude_assessment(s, subject, outcome="pass", deadline=None, reason=None,
                                    actor=ACTOR, now=at(applied))
    await flows.decide_letter(s, subject, issue=True, reason=None, actor=ACTOR,
                              now=at(registered))
    if kind == "project":
        await projects.register_project(s, sid, actor=ACTOR, now=at(registered))
    else:
        await issuance.register_instalment(s, sid, actor=ACTOR, now=at(registered))


async def registered_project(s: AsyncSession, w: World, **over: Any) -> projects.ProjectOut:
    p = await projects.create_project(s, w.owner.id, project_in(
        w.version_id, w.validator.id, category=w.methodology.category, **over),
        actor=ACTOR, now=at("2025-03-03"))
    await projects.file_validation(s, p.id, vvb_id=w.validator.id, conclusion="positive",
                                   report_ref="val-1", actor=ACTOR, now=at("2025-03-03"))
    await projects.submit_project(s, p.id, owner_id=w.owner.id, actor=ACTOR,
                                  now=at("2025-03-03"))
    await walk(s, "project", p.id, w.owner.id, "2025-03-04", "2025-04-15", "2025-04-20")
    return await projects.project_out(s, p.id)


async def issued(s: AsyncSession, w: World, project_id: UUID, quantity: int, *,
                 period: tuple[str, str] = ("2024-01-01", "2024-12-31"),
                 created: str = "2025-05-05", applied: str = "2025-06-20",
                 registered: str = "2025-07-01") -> issuance.InstalmentOut:
    i = await issuance.create_instalment(s, project_id, InstalmentIn(
        period_start=date.fromisoformat(period[0]), period_end=date.fromisoformat(period[1]),
        claimed_tonnes=quantity, accounting_report_ref="acc-1", verifier_vvb_id=w.verifier.id),
        owner_id=w.owner.id, actor=ACTOR, now=at(created))
    await issuance.file_verification(s, i.id, vvb_id=w.verifier.id, verified_tonnes=quantity,
                                     report_ref="ver-1", actor=ACTOR, now=at(created))
    await issuance.submit_instalment(s, i.id, owner_id=w.owner.id, actor=ACTOR,
                                     now=at(created))
    await walk(s, "instalment", i.id, w.owner.id, created, applied, registered)
    return await issuance.instalment_out(s, i.id)


async def holder_with(s: AsyncSession, quantity: int, category: str = "engineering"
                      ) -> tuple[World, UUID, issuance.InstalmentOut]:
    """A fresh owner holding ``quantity`` issued tonnes; returns (world, account, instalment)."""
    w = await world(s, category)
    p = await registered_project(s, w)
    inst = await issued(s, w, p.id, quantity)
    assert w.owner.account_id is not None
    return w, w.owner.account_id, inst
