"""Instalments of reductions and CQCER issuance (减排量登记, Art. 16–20, 26).

An instalment follows the same path as a project (:mod:`registry.flows`); registering it
issues the verified tonnes as one block of serials ``1..quantity`` into the owner's holding
account (1 CQCER = 1 tCO2e, Art. 26). Vintage = the year in which the monitoring period ends.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from uuid import UUID

from sqlalchemy import extract, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import flows
from registry.catalog import check_vvb
from registry.credits import block_view, record_movements
from registry.districts import in_chongqing
from registry.errors import Conflict, Invalid, not_found, wrong_role, wrong_state
from registry.models import Account, Block, Instalment, Issuance, Methodology, Notice, Project
from registry.sanctions import add_years, check_not_banned
from registry.schemas import InstalmentIn, InstalmentOut, NoticeOut

GENERATED_AFTER = date(2021, 9, 14)  # Art. 16(3): 产生于 2021 年 9 月 14 日之后
LOOKBACK_YEARS = 5  # Art. 17: 申请登记之日前五年以内
ONE_DAY = timedelta(days=1)


def whole_years(start: date, end: date) -> int:
    """The number of whole years ``[start, end]`` spans, or 0 if it is not whole years."""
    years = end.year - start.year
    for k in (years, years + 1):
        if k >= 1 and add_years(start, k) - ONE_DAY == end:
            return k
    return 0


async def _registered_project(session: AsyncSession, project_id: UUID) -> Project:
    """Only a registered project may apply for reductions (Art. 16, 22, 43)."""
    p = await session.get(Project, project_id)
    if p is None:
        raise not_found("project")
    if p.state == "legacy":
        raise Conflict("registry.reregistration_required",
                       "Art. 43: a project approved before 2024-01-20 must register again "
                       "before applying for reductions.")
    if p.state == "cancelled":
        raise Conflict("registry.project_cancelled", "Art. 22: the project is cancelled.")
    if p.state == "revoked":
        raise Conflict("registry.project_revoked", "Art. 39: the registration was revoked.")
    if p.state != "registered":
        raise wrong_state("project", p.state, "registered")
    return p


async def check_period(session: AsyncSession, p: Project, *, start: date, end: date,
                       district_code: str, on: date, exclude: UUID | None = None) -> None:
    """The reductions rules of Art. 16–17 on the application date ``on``."""
    if not in_chongqing(district_code):
        raise Invalid("registry.outside_chongqing",
                      "Art. 16(4): reductions must be generated inside Chongqing.")
    if start <= GENERATED_AFTER:
        raise Invalid("registry.before_2021_09_14",
                      "Art. 16(3): reductions must be generated after 2021-09-14.")
    if whole_years(start, end) < 1:
        raise Invalid("registry.period_not_whole_years",
                      "Art. 17: the accounting period is whole years, at least one.")
    if end >= on:
        raise Invalid("registry.period_not_ended",
                      "The accounting period must have ended before the application.")
    if start < add_years(on, -LOOKBACK_YEARS):
        raise Invalid("registry.older_than_5_years",
                      "Art. 17: reductions must be generated within the 5 years before the "
                      "application date.")
    if not (p.crediting_start <= start and end <= p.crediting_end):
        raise Invalid("registry.outside_crediting_period",
                      "Art. 17: instalments lie within the crediting period.")
    q = select(Instalment.id).where(
        Instalment.project_id == p.id, Instalment.state != "rejected",
        Instalment.period_start <= end, Instalment.period_end >= start)
    if exclude is not None:
        q = q.where(Instalment.id != exclude)
    if (await session.execute(q.limit(1))).scalar_one_or_none() is not None:
        raise Conflict("registry.period_overlap",
                       "Art. 42(10): these reductions overlap an earlier instalment.")


async def check_once_per_year(session: AsyncSession, project_id: UUID, on: date,
                              exclude: UUID | None = None) -> None:
    """Art. 20: 每个减排项目一年最多登记一次 — at most one registration per project per
    (calendar) year, and one instalment in progress at a time."""
    q = select(func.count()).select_from(Instalment).where(
        Instalment.project_id == project_id,
        (extract("year", func.timezone("Asia/Shanghai", Instalment.registered_at)) == on.year)
        | Instalment.state.not_in(("registered", "rejected", "draft")))
    if exclude is not None:
        q = q.where(Instalment.id != exclude)
    if (await session.execute(q)).scalar_one():
        raise Conflict("registry.once_per_year",
                       "Art. 20: a project registers at most once a year.")


async def check_verifier(session: AsyncSession, p: Project, vvb_id: UUID, on: date) -> None:
    """Art. 17/21: the verifier is recognised, in scope, without ties, and not the validator."""
    if vvb_id == p.validator_vvb_id:
        raise Conflict("registry.validator_cannot_verify",
                       "Art. 17: the VVB that validated the project may not verify it.")
    methodology = await session.get(Methodology, p.methodology_id)
    assert methodology is not None
    await check_vvb(session, vvb_id, owner_id=p.owner_id, category=p.category,
                    field=methodology.field, on=on)


async def create_instalment(session: AsyncSession, project_id: UUID, data: InstalmentIn, *,
                            owner_id: UUID | None, actor: str,
                            now: datetime | None = None) -> InstalmentOut:
    """The owner's instalment application (分期申请) with its accounting report."""
    at = now or clock.now()
    today = clock.business_date(at)
    p = await _registered_project(session, project_id)
    if owner_id is None or owner_id != p.owner_id:
        raise wrong_role("Only the project owner may apply for its reductions.")
    await session.execute(select(Project.id).where(Project.id == p.id).with_for_update())
    await check_not_banned(session, p.owner_id, today)
    district = data.district_code or p.district_code
    await check_period(session, p, start=data.period_start, end=data.period_end,
                       district_code=district, on=today)
    await check_once_per_year(session, p.id, today)
    await check_verifier(session, p, data.verifier_vvb_id, today)
    n = (await session.execute(
        select(func.coalesce(func.max(Instalment.no), 0)).where(Instalment.project_id == p.id)
    )).scalar_one()
    i = Instalment(
        id=uuid.uuid4(), project_id=p.id, no=n + 1, period_start=data.period_start,
        period_end=data.period_end, district_code=district, claimed_tonnes=data.claimed_tonnes,
        accounting_report_ref=data.accounting_report_ref,
        verifier_vvb_id=data.verifier_vvb_id, state="draft", created_at=at, updated_at=at,
    )
    session.add(i)
    await session.flush()
    await audit.append(session, actor=actor, action="instalment.create",
                       entity="registry_instalment", entity_id=str(i.id), now=at,
                       data={"project_id": str(p.id), "no": i.no})
    return await instalment_out(session, i.id)


async def file_verification(session: AsyncSession, instalment_id: UUID, *, vvb_id: UUID | None,
                            verified_tonnes: int, report_ref: str, actor: str,
                            now: datetime | None = None) -> InstalmentOut:
    """The verifier's report (核查报告, Art. 19): it fixes the verified quantity, never more
    than claimed (conservativeness, Art. 16(1))."""
    at = now or clock.now()
    i = await flows.load(session, "instalment", instalment_id)
    assert isinstance(i, Instalment)
    if vvb_id is None or vvb_id != i.verifier_vvb_id:
        raise wrong_role("Only the VVB named as verifier may file the verification report.")
    if i.state != "draft":
        raise wrong_state("instalment", i.state, "draft")
    if verified_tonnes > i.claimed_tonnes:
        raise Invalid("registry.verified_exceeds_claim",
                      "Art. 16: the verified quantity cannot exceed the claimed quantity.")
    p = await flows.project_of(session, i)
    await check_verifier(session, p, vvb_id, clock.business_date(at))
    i.verified_tonnes, i.verification_report_ref, i.verified_at = (
        verified_tonnes, report_ref, at)
    i.updated_at = at
    await audit.append(session, actor=actor, action="instalment.verification",
                       entity="registry_instalment", entity_id=str(i.id), now=at,
                       data={"verified_tonnes": verified_tonnes})
    return await instalment_out(session, i.id)


async def recheck(session: AsyncSession, i: Instalment, on: date) -> Project:
    """The rules again, on the (formal) application date."""
    p = await _registered_project(session, i.project_id)
    await check_not_banned(session, p.owner_id, on)
    await check_period(session, p, start=i.period_start, end=i.period_end,
                       district_code=i.district_code, on=on, exclude=i.id)
    await check_once_per_year(session, p.id, on, exclude=i.id)
    await check_verifier(session, p, i.verifier_vvb_id, on)
    return p


async def submit_instalment(session: AsyncSession, instalment_id: UUID, *,
                            owner_id: UUID | None, actor: str,
                            now: datetime | None = None) -> InstalmentOut:
    at = now or clock.now()
    i = await flows.load(session, "instalment", instalment_id)
    assert isinstance(i, Instalment)
    await flows.check_owner(session, i, owner_id)
    if i.state != "draft":
        raise wrong_state("instalment", i.state, "draft")
    await recheck(session, i, clock.business_date(at))
    if i.verified_tonnes is None:
        raise Conflict("registry.verification_missing",
                       "Art. 17: the verification report must be uploaded first.")
    if i.verified_tonnes == 0:
        raise Conflict("registry.nothing_verified", "The verified quantity is zero.")
    flows.mark_submitted(i, at)
    await flows._log(session, i, "submit", actor, at)
    return await instalment_out(session, i.id)


async def register_instalment(session: AsyncSession, instalment_id: UUID, *, actor: str,
                              now: datetime | None = None) -> InstalmentOut:
    """Register per the letter and issue the verified tonnes (签发) into the owner's account."""
    at = now or clock.now()
    i = await flows.load(session, "instalment", instalment_id)
    assert isinstance(i, Instalment)
    p = await _registered_project(session, i.project_id)
    await check_once_per_year(session, p.id, clock.business_date(at), exclude=i.id)
    flows.mark_registered(i, at)
    await issue(session, p, i, at)
    await flows.log_registered(session, i, actor, at)
    return await instalment_out(session, i.id)


async def issue(session: AsyncSession, p: Project, i: Instalment, at: datetime) -> Issuance:
    """One issuance (serials 1..verified) as one held block in the owner's account."""
    assert i.verified_tonnes
    account_id = (await session.execute(
        select(Account.id).where(Account.organisation_id == p.owner_id).with_for_update()
    )).scalar_one()
    iss = Issuance(id=uuid.uuid4(), project_id=p.id, instalment_id=i.id,
                   vintage=i.period_end.year, category=p.category, quantity=i.verified_tonnes,
                   account_id=account_id, issued_at=at)
    session.add(iss)
    await session.flush()
    await session.refresh(iss, ["no"])
    block = Block(id=uuid.uuid4(), issuance_id=iss.id, issuance_no=iss.no, project_id=p.id,
                  project_no=p.no, instalment_no=i.no, vintage=iss.vintage,
                  category=p.category, serial_start=1, serial_end=iss.quantity,
                  account_id=account_id, state="held", created_at=at, updated_at=at)
    session.add(block)
    await session.flush()
    await record_movements(session, "issue", where="id = :b", params={"b": block.id},
                           from_account=None, to_account=account_id, at=at)
    await audit.append(session, actor="registry", action="credits.issue",
                       entity="registry_issuance", entity_id=str(iss.id), now=at,
                       data={"project_no": p.no, "instalment_no": i.no,
                             "quantity": iss.quantity, "vintage": iss.vintage})
    return iss


async def instalment_out(session: AsyncSession, instalment_id: UUID) -> InstalmentOut:
    i = await session.get(Instalment, instalment_id, populate_existing=True)
    if i is None:
        raise not_found("instalment")
    out = InstalmentOut.model_validate(i)
    if i.notice_id:
        out.notice = NoticeOut.model_validate(await session.get(Notice, i.notice_id))
    blocks = (await session.execute(
        select(Block).join(Issuance, Issuance.id == Block.issuance_id)
        .where(Issuance.instalment_id == i.id).order_by(Block.serial_start)
    )).scalars().all()
    out.issued = [block_view(b) for b in blocks]
    return out
