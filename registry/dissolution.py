"""An owner that has ceased to exist (项目业主主体灭失, Art. 22).

已登记的减排项目出现项目业主主体灭失……经管理服务机构调查核实后，对已登记的项目进行注销；已登记的
减排量出现项目业主主体灭失等情形的，经管理服务机构调查核实后，对已登记的减排量进行注销。
After its investigation the registry agency records the finding: the owner's registered projects
are cancelled (ground ``owner_gone``), the CQCER it holds are cancelled (purpose
``owner_gone``), its applications in progress are closed, and the organisation is dissolved
(no login, no new application). Every cancellation is public (Art. 22) and final (Art. 29);
a cancelled project never registers again, under any owner.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import credits
from registry.errors import Conflict, not_found, wrong_state
from registry.models import Account, Block, Instalment, Organisation, Project
from registry.schemas import OwnerGoneOut

# States of an application still on its way (not registered, not closed).
IN_PROGRESS = ("draft", "submitted", "in_notice", "applied", "under_assessment",
               "revision_requested", "assessed", "letter_issued")
BENEFICIARY = "管理服务机构注销（项目业主主体灭失）"


async def owner_gone(session: AsyncSession, organisation_id: UUID, *, reason: str, actor: str,
                     now: datetime | None = None) -> OwnerGoneOut:
    """Record that the organisation has ceased to exist and cancel what it holds (Art. 22).

    Refused while some of its credits are locked in an open trade or offset: the exchange or
    the bureau settles or releases them first, so no credit is in two lifecycles (Art. 30).
    """
    at = now or clock.now()
    org = (await session.execute(
        select(Organisation).where(Organisation.id == organisation_id).with_for_update()
    )).scalar_one_or_none()
    if org is None:
        raise not_found("organisation")
    if org.status != "active":
        raise wrong_state("organisation", org.status, "active")
    account_id = (await session.execute(
        select(Account.id).where(Account.organisation_id == org.id)
    )).scalar_one()
    await credits.lock_accounts(session, [account_id])
    size = Block.serial_end - Block.serial_start + 1
    held, locked = (await session.execute(
        select(func.coalesce(func.sum(size).filter(Block.state == "held"), 0),
               func.coalesce(func.sum(size).filter(Block.state == "locked"), 0))
        .where(Block.account_id == account_id)
    )).one()
    if locked:
        raise Conflict("registry.credits_locked",
                       f"{locked} tonnes are locked in an open trade or offset; settle or "
                       "release them first.", locked=int(locked))
    if held:
        lk = await credits.lock(session, account_id=account_id, quantity=int(held),
                                purpose="owner_gone", reference=str(org.id), now=at)
        await credits.cancel_locked(session, lk.id, purpose="owner_gone",
                                    beneficiary=BENEFICIARY, detail={"reason": reason}, now=at)
    cancelled = (await session.execute(
        update(Project)
        .where(Project.owner_id == org.id, Project.state.in_(("registered", "legacy")))
        .values(state="cancelled", cancelled_at=at, cancel_ground="owner_gone",
                closed_reason=reason, updated_at=at)
        .returning(Project.no)
    )).scalars().all()
    closed_reason = f"owner_gone: {reason}"
    closed = len((await session.execute(
        update(Project)
        .where(Project.owner_id == org.id, Project.state.in_(IN_PROGRESS))
        .values(state="rejected", closed_reason=closed_reason, updated_at=at)
        .returning(Project.id)
    )).all())
    mine = select(Project.id).where(Project.owner_id == org.id).scalar_subquery()
    closed += len((await session.execute(
        update(Instalment)
        .where(Instalment.project_id.in_(mine), Instalment.state.in_(IN_PROGRESS))
        .values(state="rejected", closed_reason=closed_reason, updated_at=at)
        .returning(Instalment.id)
    )).all())
    org.status, org.dissolved_at = "dissolved", at
    await session.flush()
    await audit.append(session, actor=actor, action="organisation.owner_gone",
                       entity="organisation", entity_id=str(org.id), now=at,
                       data={"reason": reason, "cancelled_projects": sorted(cancelled),
                             "closed_applications": closed, "cancelled_tonnes": int(held)})
    return OwnerGoneOut(organisation_id=org.id, status="dissolved",
                        cancelled_projects=sorted(cancelled), closed_applications=closed,
                        cancelled_tonnes=int(held))
