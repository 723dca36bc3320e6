"""Reduction projects (减排项目): the rules of Art. 15, 17, 20, 21, 22 and 43.

The shared application path (notice, review, assessment, letter) is :mod:`registry.flows`.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from uuid import UUID

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import flows
from registry.catalog import check_vvb, published_version
from registry.districts import in_chongqing
from registry.errors import Conflict, Invalid, not_found, wrong_role, wrong_state
from registry.models import Instalment, Methodology, Notice, Organisation, Project
from registry.sanctions import add_years, check_not_banned
from registry.schemas import LegacyProjectIn, NoticeOut, ProjectIn, ProjectOut

OPERATION_AFTER = date(2014, 6, 19)  # Art. 15(3)
REREGISTRATION_BEFORE = date(2024, 1, 20)  # Art. 43
CREDITING_YEARS = {"engineering": 5, "carbon_inclusive": 10, "ecological_sink": 40}  # Art. 20
CLOSED = ("rejected", "cancelled", "revoked")


def normalise_site(site: str) -> str:
    return " ".join(site.split()).lower()


async def check_project(session: AsyncSession, owner_id: UUID, data: ProjectIn, *, on: date,
                        exclude: UUID | None = None) -> Methodology:
    """Every admission rule of a project; returns its methodology."""
    owner = await session.get(Organisation, owner_id)
    if owner is None or owner.status != "active":
        raise not_found("organisation")
    if owner.kind not in ("owner", "individual"):
        raise Invalid("registry.not_an_owner", "Art. 42(9): the owner owns the project.")
    await check_not_banned(session, owner_id, on)
    # Art. 15(3): 项目投入运行时间应于 2014 年 6 月 19 日之后
    if data.operation_start <= OPERATION_AFTER:
        raise Invalid("registry.operation_before_2014",
                      "Art. 15: the project must have started operation after 2014-06-19.")
    if not in_chongqing(data.district_code):
        raise Invalid("registry.outside_chongqing",
                      "Art. 2/16: the project must lie in Chongqing's administrative area.")
    version = await published_version(session, data.methodology_version_id)
    methodology = await session.get(Methodology, version.methodology_id)
    assert methodology is not None
    d = data.declarations
    if d.registered_elsewhere or d.green_power_benefit:
        raise Invalid("registry.not_unique",
                      "Art. 15, 42(10): a project in another mechanism or claiming green-power "
                      "or green-certificate benefits is not unique.")
    if d.legal_obligation:
        raise Invalid("registry.legal_obligation",
                      "Art. 15: projects with a legal reduction obligation may not apply.")
    if d.ets_covered:
        raise Invalid("registry.ets_covered",
                      "Art. 15: projects under national or Chongqing ETS quota management "
                      "may not apply.")
    if not d.real_and_additional:
        raise Invalid("registry.not_additional", "Art. 15: the project must be real and "
                      "additional.")
    if methodology.category == "carbon_inclusive" and not d.inclusive:
        raise Invalid("registry.not_inclusive",
                      "Art. 15: a carbon-inclusive project must be inclusive (普惠性).")
    if data.crediting_end < data.crediting_start or data.crediting_start < data.operation_start:
        raise Invalid("registry.crediting_period_invalid",
                      "The crediting period starts at or after operation and ends after start.")
    years = CREDITING_YEARS[methodology.category]
    if data.crediting_end >= add_years(data.crediting_start, years):
        raise Invalid("registry.crediting_period_too_long",
                      f"Art. 20: the crediting period of a {methodology.category} project is at "
                      f"most {years} years.", max_years=years)
    site = normalise_site(data.site)
    same_place = and_(Project.district_code == data.district_code,
                      func.lower(func.regexp_replace(func.trim(Project.site), r"\s+", " ", "g"))
                      == site, Project.methodology_id == methodology.id)
    if exclude is not None:
        same_place = and_(same_place, Project.id != exclude)
    # Art. 22: 注销后的项目不得再次申请登记 — the project (place + methodology), whoever now
    # applies for it: a new or sister owner does not make a cancelled project new.
    cancelled = (await session.execute(
        select(Project.id).where(same_place, Project.state == "cancelled").limit(1)
    )).scalar_one_or_none()
    if cancelled is not None:
        raise Conflict("registry.project_cancelled",
                       "Art. 22: a cancelled project can never be registered again.")
    duplicate = (await session.execute(
        select(Project.id).where(
            same_place, Project.state.not_in((*CLOSED, "draft")),
            Project.crediting_start <= data.crediting_end,
            Project.crediting_end >= data.crediting_start,
        ).limit(1)
    )).scalar_one_or_none()
    if duplicate is not None:
        raise Conflict("registry.duplicate_project",
                       "Art. 15: a project at this location with this methodology and an "
                       "overlapping period is already in the registry.", project_id=str(duplicate))
    await check_vvb(session, data.validator_vvb_id, owner_id=owner_id,
                    category=methodology.category, field=methodology.field, on=on)
    return methodology


async def create_project(session: AsyncSession, owner_id: UUID, data: ProjectIn, *, actor: str,
                         now: datetime | None = None, is_demo: bool = False) -> ProjectOut:
    """The owner's draft project (项目设计文件 uploaded, validator named)."""
    at = now or clock.now()
    methodology = await check_project(session, owner_id, data, on=clock.business_date(at))
    p = _new(owner_id, data, methodology, at, state="draft", is_demo=is_demo)
    session.add(p)
    await session.flush()
    await audit.append(session, actor=actor, action="project.create", entity="registry_project",
                       entity_id=str(p.id), now=at, data={"title": p.title})
    return await project_out(session, p.id)


def _new(owner_id: UUID, data: ProjectIn, methodology: Methodology, at: datetime, *,
         state: str, is_demo: bool = False) -> Project:
    return Project(
        id=uuid.uuid4(), owner_id=owner_id, title=data.title, category=methodology.category,
        methodology_id=methodology.id, methodology_version_id=data.methodology_version_id,
        district_code=data.district_code, site=data.site, operation_start=data.operation_start,
        crediting_start=data.crediting_start, crediting_end=data.crediting_end,
        description=data.description, design_document_ref=data.design_document_ref,
        declarations=data.declarations.model_dump(), validator_vvb_id=data.validator_vvb_id,
        state=state, created_at=at, updated_at=at, is_demo=is_demo,
    )


def _as_input(p: Project) -> ProjectIn:
    return ProjectIn.model_validate({
        "title": p.title, "methodology_version_id": p.methodology_version_id,
        "district_code": p.district_code, "site": p.site, "operation_start": p.operation_start,
        "crediting_start": p.crediting_start, "crediting_end": p.crediting_end,
        "description": p.description, "design_document_ref": p.design_document_ref,
        "validator_vvb_id": p.validator_vvb_id, "declarations": p.declarations,
    })


async def import_legacy(session: AsyncSession, data: LegacyProjectIn, *, actor: str,
                        now: datetime | None = None) -> ProjectOut:
    """Record a project approved under the former platform rules (渝环〔2021〕111号). Art. 43:
    approved before 2024-01-20, it must register again before applying for reductions
    (state ``legacy``); approved later, it stands registered."""
    at = now or clock.now()
    methodology = await check_project(session, data.owner_id, data, on=clock.business_date(at))
    must_reregister = data.legacy_approved_on < REREGISTRATION_BEFORE
    p = _new(data.owner_id, data, methodology, at,
             state="legacy" if must_reregister else "registered")
    p.legacy_approved_on = data.legacy_approved_on
    p.validation_conclusion = "positive"
    if not must_reregister:
        p.registered_at = at
    session.add(p)
    await session.flush()
    await audit.append(session, actor=actor, action="project.import_legacy",
                       entity="registry_project", entity_id=str(p.id), now=at,
                       data={"legacy_approved_on": data.legacy_approved_on, "state": p.state})
    return await project_out(session, p.id)


async def file_validation(session: AsyncSession, project_id: UUID, *, vvb_id: UUID | None,
                          conclusion: str, report_ref: str, actor: str,
                          now: datetime | None = None) -> ProjectOut:
    """The validator's report (审定报告, Art. 18) with a positive or negative conclusion."""
    at = now or clock.now()
    p = await flows.load(session, "project", project_id)
    assert isinstance(p, Project)
    if vvb_id is None or vvb_id != p.validator_vvb_id:
        raise wrong_role("Only the VVB named as validator may file the validation report.")
    if p.state not in ("draft", "legacy"):
        raise wrong_state("project", p.state, "draft", "legacy")
    methodology = await session.get(Methodology, p.methodology_id)
    assert methodology is not None
    await check_vvb(session, vvb_id, owner_id=p.owner_id, category=p.category,
                    field=methodology.field, on=clock.business_date(at))
    p.validation_conclusion, p.validation_report_ref, p.validated_at = conclusion, report_ref, at
    p.updated_at = at
    await audit.append(session, actor=actor, action="project.validation",
                       entity="registry_project", entity_id=str(p.id), now=at,
                       data={"conclusion": conclusion})
    return await project_out(session, p.id)


async def submit_project(session: AsyncSession, project_id: UUID, *, owner_id: UUID | None,
                         actor: str, now: datetime | None = None) -> ProjectOut:
    """The owner submits (or, for a legacy project, re-submits — Art. 43) the application;
    every admission rule is checked again on the submission date."""
    at = now or clock.now()
    p = await flows.load(session, "project", project_id)
    assert isinstance(p, Project)
    await flows.check_owner(session, p, owner_id)
    if p.state not in ("draft", "legacy"):
        raise wrong_state("project", p.state, "draft", "legacy")
    await check_project(session, p.owner_id, _as_input(p), on=clock.business_date(at),
                        exclude=p.id)
    if p.validation_conclusion is None or (p.state == "legacy" and p.validated_at is None):
        raise Conflict("registry.validation_missing",
                       "Art. 17: the validation report must be uploaded first.")
    if p.validation_conclusion != "positive":
        raise Conflict("registry.validation_negative",
                       "Art. 18: the validation report's conclusion is negative.")
    flows.mark_submitted(p, at)
    await flows._log(session, p, "submit", actor, at)
    return await project_out(session, p.id)


async def register_project(session: AsyncSession, project_id: UUID, *, actor: str,
                           now: datetime | None = None) -> ProjectOut:
    at = now or clock.now()
    p = await flows.load(session, "project", project_id)
    flows.mark_registered(p, at)
    await flows.log_registered(session, p, actor, at)
    return await project_out(session, p.id)


async def cancel_project(session: AsyncSession, project_id: UUID, *, ground: str, reason: str,
                         owner_id: UUID | None, actor: str,
                         now: datetime | None = None) -> ProjectOut:
    """Cancel (注销) a registered project (Art. 22): on the owner's own request, or by the
    registry agency after investigating that the owner or the project is gone. Public, and
    the project (location + methodology, under any owner) can never register again."""
    at = now or clock.now()
    p = await flows.load(session, "project", project_id)
    assert isinstance(p, Project)
    if ground == "request":
        await flows.check_owner(session, p, owner_id)
    elif owner_id is not None:
        raise wrong_role("Only the registry agency cancels on investigation.")
    if p.state not in ("registered", "legacy"):
        raise wrong_state("project", p.state, "registered", "legacy")
    p.state, p.cancelled_at, p.cancel_ground, p.closed_reason = "cancelled", at, ground, reason
    await flows._log(session, p, "cancel", actor, at, ground=ground, reason=reason)
    return await project_out(session, p.id)


async def district_of(session: AsyncSession, kind: str, sid: UUID) -> str | None:
    """The district of a project, or of an instalment's project (None if there is none)."""
    if kind == "instalment":
        q = select(Project.district_code).join(Instalment, Instalment.project_id == Project.id) \
            .where(Instalment.id == sid)
    else:
        q = select(Project.district_code).where(Project.id == sid)
    return (await session.execute(q)).scalar_one_or_none()


async def project_out(session: AsyncSession, project_id: UUID) -> ProjectOut:
    p = await session.get(Project, project_id, populate_existing=True)
    if p is None:
        raise not_found("project")
    out = ProjectOut.model_validate(p)
    if p.notice_id:
        n = await session.get(Notice, p.notice_id)
        out.notice = NoticeOut.model_validate(n)
    return out
