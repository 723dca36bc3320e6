"""Methodologies (方法学, Art. 10–13) and VVBs (审定与核查机构, Art. 21): the bureau's catalog."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry.errors import Conflict, Invalid, not_found, wrong_state
from registry.models import (
    Methodology,
    MethodologyProposal,
    MethodologyVersion,
    Organisation,
    Vvb,
    VvbTie,
)
from registry.schemas import (
    MethodologyIn,
    MethodologyOut,
    MethodologyVersionIn,
    MethodologyVersionOut,
    ProposalOut,
    TieIn,
    VvbIn,
    VvbOut,
)

# --- methodologies -------------------------------------------------------------------------


async def create_methodology(session: AsyncSession, data: MethodologyIn, *, actor: str,
                             is_demo: bool = False, now: datetime | None = None) -> MethodologyOut:
    """A draft methodology with its version 1 (the bureau, Art. 12)."""
    at = now or clock.now()
    m = Methodology(id=uuid.uuid4(), code=data.code, title=data.title, category=data.category,
                    field=data.field, status="draft", is_demo=is_demo, created_at=at)
    try:
        async with session.begin_nested():
            session.add(m)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict("registry.methodology_exists", "A methodology with this code exists.") \
            from exc
    session.add(_version(m.id, 1, data, at))
    await session.flush()
    await audit.append(session, actor=actor, action="methodology.create", entity="methodology",
                       entity_id=str(m.id), now=at, data={"code": m.code})
    return await get_methodology(session, m.id)


def _version(mid: UUID, n: int, data: MethodologyVersionIn, at: datetime) -> MethodologyVersion:
    return MethodologyVersion(
        id=uuid.uuid4(), methodology_id=mid, version=n, status="draft", baseline=data.baseline,
        additionality=data.additionality, formula=data.formula, parameters=data.parameters,
        monitoring_plan_ref=data.monitoring_plan_ref, created_at=at,
    )


async def _locked_methodology(session: AsyncSession, mid: UUID) -> Methodology:
    m = (await session.execute(
        select(Methodology).where(Methodology.id == mid).with_for_update()
    )).scalar_one_or_none()
    if m is None:
        raise not_found("methodology")
    return m


async def publish_methodology(session: AsyncSession, mid: UUID, *, actor: str,
                              now: datetime | None = None) -> MethodologyOut:
    """Publish the newest draft version; the previous published version is superseded (Art. 13
    revision). A repealed methodology cannot come back."""
    at = now or clock.now()
    m = await _locked_methodology(session, mid)
    if m.status == "repealed":
        raise wrong_state("methodology", m.status, "draft", "published")
    draft = (await session.execute(
        select(MethodologyVersion).where(MethodologyVersion.methodology_id == mid,
                                         MethodologyVersion.status == "draft")
        .order_by(MethodologyVersion.version.desc()).limit(1)
    )).scalar_one_or_none()
    if draft is None:
        raise Conflict("registry.no_draft_version", "There is no draft version to publish.")
    await session.execute(
        update(MethodologyVersion)
        .where(MethodologyVersion.methodology_id == mid, MethodologyVersion.status == "published")
        .values(status="superseded", superseded_at=at)
    )
    draft.status, draft.published_at = "published", at
    m.status = "published"
    await session.flush()
    await audit.append(session, actor=actor, action="methodology.publish", entity="methodology",
                       entity_id=str(mid), now=at, data={"version": draft.version})
    return await get_methodology(session, mid)


async def revise_methodology(session: AsyncSession, mid: UUID, data: MethodologyVersionIn, *,
                             actor: str, now: datetime | None = None) -> MethodologyOut:
    """A new draft version (修订, Art. 13); publishing it supersedes the current one."""
    at = now or clock.now()
    m = await _locked_methodology(session, mid)
    if m.status == "repealed":
        raise wrong_state("methodology", m.status, "draft", "published")
    n = (await session.execute(
        select(func.max(MethodologyVersion.version))
        .where(MethodologyVersion.methodology_id == mid)
    )).scalar_one()
    session.add(_version(mid, (n or 0) + 1, data, at))
    await session.flush()
    await audit.append(session, actor=actor, action="methodology.revise", entity="methodology",
                       entity_id=str(mid), now=at, data={"version": (n or 0) + 1})
    return await get_methodology(session, mid)


async def repeal_methodology(session: AsyncSession, mid: UUID, *, actor: str,
                             now: datetime | None = None) -> MethodologyOut:
    """Repeal (废止, Art. 13): no new project may use it."""
    at = now or clock.now()
    m = await _locked_methodology(session, mid)
    if m.status == "repealed":
        raise wrong_state("methodology", m.status, "draft", "published")
    m.status, m.repealed_at = "repealed", at
    await session.execute(
        update(MethodologyVersion).where(MethodologyVersion.methodology_id == mid,
                                         MethodologyVersion.status == "published")
        .values(status="repealed")
    )
    await audit.append(session, actor=actor, action="methodology.repeal", entity="methodology",
                       entity_id=str(mid), now=at)
    return await get_methodology(session, mid)


async def get_methodology(session: AsyncSession, mid: UUID,
                          *, published_only: bool = False) -> MethodologyOut:
    m = await session.get(Methodology, mid, populate_existing=True)
    if m is None or (published_only and m.status == "draft"):
        raise not_found("methodology")
    q = select(MethodologyVersion).where(MethodologyVersion.methodology_id == mid) \
        .order_by(MethodologyVersion.version)
    if published_only:
        q = q.where(MethodologyVersion.status != "draft")
    versions = (await session.execute(q.execution_options(populate_existing=True))).scalars()
    return MethodologyOut(
        id=m.id, code=m.code, title=m.title, category=m.category, field=m.field,
        status=m.status,
        versions=[MethodologyVersionOut.model_validate(v) for v in versions],
    )


async def list_methodologies(session: AsyncSession, *, published_only: bool = False
                             ) -> list[MethodologyOut]:
    q = select(Methodology.id).order_by(Methodology.code)
    if published_only:
        q = q.where(Methodology.status != "draft")
    return [await get_methodology(session, mid, published_only=published_only)
            for mid in (await session.execute(q)).scalars().all()]


async def published_version(session: AsyncSession, version_id: UUID) -> MethodologyVersion:
    """Art. 15(2): a project must follow a methodology version the bureau has published."""
    v = await session.get(MethodologyVersion, version_id)
    if v is None or v.status != "published":
        raise Invalid("registry.methodology_not_published",
                      "Art. 15: the project must use a published methodology version.")
    return v


async def propose_revision(session: AsyncSession, mid: UUID, body: str, *, actor: str,
                           now: datetime | None = None) -> ProposalOut:
    """Anyone logged in may propose a revision (修订建议, Art. 13)."""
    at = now or clock.now()
    m = await session.get(Methodology, mid)
    if m is None or m.status == "draft":
        raise not_found("methodology")
    p = MethodologyProposal(id=uuid.uuid4(), methodology_id=mid, proposer=actor, body=body,
                            status="open", created_at=at)
    session.add(p)
    await session.flush()
    await audit.append(session, actor=actor, action="methodology.propose",
                       entity="methodology_proposal", entity_id=str(p.id), now=at)
    return ProposalOut.model_validate(p)


async def decide_proposal(session: AsyncSession, pid: UUID, status: str, response: str, *,
                          actor: str, now: datetime | None = None) -> ProposalOut:
    at = now or clock.now()
    p = await session.get(MethodologyProposal, pid, with_for_update=True)
    if p is None:
        raise not_found("proposal")
    if p.status != "open":
        raise wrong_state("proposal", p.status, "open")
    p.status, p.response, p.decided_at = status, response, at
    await audit.append(session, actor=actor, action="methodology.proposal_decide",
                       entity="methodology_proposal", entity_id=str(pid), now=at,
                       data={"status": status})
    return ProposalOut.model_validate(p)


async def list_proposals(session: AsyncSession, mid: UUID) -> list[ProposalOut]:
    rows = (await session.execute(
        select(MethodologyProposal).where(MethodologyProposal.methodology_id == mid)
        .order_by(MethodologyProposal.created_at)
    )).scalars().all()
    return [ProposalOut.model_validate(p) for p in rows]


# --- VVBs ------------------------------------------------------------------------------


async def recognise_vvb(session: AsyncSession, data: VvbIn, *, actor: str, is_demo: bool = False,
                        now: datetime | None = None) -> VvbOut:
    """The bureau recognises a VVB (认可) with a scope and a validity (Art. 21)."""
    at = now or clock.now()
    if data.valid_until < data.valid_from:
        raise Invalid("registry.validity_invalid", "valid_until precedes valid_from.")
    v = Vvb(id=uuid.uuid4(), name=data.name, uscc=data.uscc, categories=list(data.categories),
            fields=data.fields, valid_from=data.valid_from, valid_until=data.valid_until,
            status="recognised", is_demo=is_demo, recognised_at=at)
    try:
        async with session.begin_nested():
            session.add(v)
            await session.flush()
    except IntegrityError as exc:
        raise Conflict("registry.vvb_exists", "A VVB with this credit code exists.") from exc
    await audit.append(session, actor=actor, action="vvb.recognise", entity="vvb",
                       entity_id=str(v.id), now=at, data=data.model_dump(mode="json"))
    return VvbOut.model_validate(v)


async def revoke_vvb(session: AsyncSession, vid: UUID, *, actor: str,
                     now: datetime | None = None) -> VvbOut:
    at = now or clock.now()
    v = await session.get(Vvb, vid, with_for_update=True)
    if v is None:
        raise not_found("vvb")
    if v.status != "recognised":
        raise wrong_state("vvb", v.status, "recognised")
    v.status, v.revoked_at = "revoked", at
    await audit.append(session, actor=actor, action="vvb.revoke", entity="vvb",
                       entity_id=str(vid), now=at)
    return VvbOut.model_validate(v)


async def declare_tie(session: AsyncSession, vid: UUID, data: TieIn, *, actor: str,
                      now: datetime | None = None) -> UUID:
    """Record an asset or management tie between a VVB and an organisation (Art. 21)."""
    at = now or clock.now()
    if await session.get(Vvb, vid) is None:
        raise not_found("vvb")
    if await session.get(Organisation, data.organisation_id) is None:
        raise not_found("organisation")
    tie = VvbTie(id=uuid.uuid4(), vvb_id=vid, organisation_id=data.organisation_id,
                 kind=data.kind, note=data.note, declared_at=at)
    session.add(tie)
    await session.flush()
    await audit.append(session, actor=actor, action="vvb.tie", entity="vvb", entity_id=str(vid),
                       now=at, data={"organisation_id": str(data.organisation_id),
                                     "kind": data.kind})
    return tie.id


async def list_vvbs(session: AsyncSession) -> list[VvbOut]:
    rows = (await session.execute(select(Vvb).order_by(Vvb.name))).scalars().all()
    return [VvbOut.model_validate(v) for v in rows]


async def check_vvb(session: AsyncSession, vid: UUID, *, owner_id: UUID, category: str,
                    field: str, on: date) -> Vvb:
    """Art. 17/21: only a recognised VVB, valid on ``on``, within its approved scope and with
    no asset or management tie to the owner may validate or verify."""
    v = await session.get(Vvb, vid)
    if v is None or v.status != "recognised" or not (v.valid_from <= on <= v.valid_until):
        raise Invalid("registry.vvb_not_recognised",
                      "Art. 21: the VVB is not recognised by the bureau on this date.")
    if category not in v.categories or field not in v.fields:
        raise Invalid("registry.vvb_out_of_scope",
                      "Art. 21: the VVB's approved scope does not cover this category and field.")
    tie = (await session.execute(
        select(VvbTie.id).where(VvbTie.vvb_id == vid, VvbTie.organisation_id == owner_id,
                                VvbTie.ended_at.is_(None)).limit(1)
    )).scalar_one_or_none()
    if tie is not None:
        raise Conflict("registry.vvb_conflict",
                       "Art. 21: the VVB has an asset or management tie with the project owner.")
    return v
