"""Sanctions on project owners (Art. 38–39).

Falsified data (弄虚作假): the project registration is revoked (撤销); credits already issued
must be cancelled in the same quantity as the false part by a deadline (责令注销); after the
deadline the registry agency cancels them by force (强制注销) and refuses the owner's
applications for 3 years. The original text ties the 3-year refusal to that clause
("逾期未按要求注销的，由管理服务机构强制注销，并在三年内不再受理"), so it starts at the forced
cancellation. A missed revision deadline or a failed second assessment: applications refused
for 2 years (see :mod:`registry.flows`).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import credits
from registry.errors import Conflict, Invalid, not_found, wrong_role, wrong_state
from registry.models import Account, Block, Project, Sanction

FALSIFICATION_BAN_YEARS = 3  # Art. 39


def add_years(d: date, years: int) -> date:
    """The same calendar day ``years`` later (29 February → 28 February)."""
    try:
        return d.replace(year=d.year + years)
    except ValueError:
        return d.replace(year=d.year + years, day=28)


async def ban(session: AsyncSession, organisation_id: UUID, *, kind: str, project_id: UUID | None,
              years: int, reason: str, actor: str, now: datetime | None = None) -> Sanction:
    """Refuse the organisation's applications for ``years`` from today."""
    at = now or clock.now()
    s = Sanction(id=uuid.uuid4(), organisation_id=organisation_id, kind=kind,
                 project_id=project_id, reason=reason, state="closed",
                 ban_until=add_years(clock.business_date(at), years), created_at=at, closed_at=at)
    session.add(s)
    await session.flush()
    await audit.append(session, actor=actor, action="sanction.ban", entity="registry_sanction",
                       entity_id=str(s.id), now=at,
                       data={"organisation_id": str(organisation_id), "kind": kind,
                             "ban_until": s.ban_until})
    return s


async def check_not_banned(session: AsyncSession, organisation_id: UUID, on: date) -> None:
    """Art. 39: applications of a sanctioned owner are refused while the refusal period runs."""
    until = (await session.execute(
        select(func.max(Sanction.ban_until)).where(Sanction.organisation_id == organisation_id)
    )).scalar_one()
    if until is not None and on < until:
        raise Conflict("registry.sanctioned",
                       f"Art. 39: applications from this owner are refused until {until}.",
                       ban_until=until.isoformat())


async def sanction_falsification(
    session: AsyncSession, project_id: UUID, *, false_quantity: int, deadline: date | None,
    reason: str, actor: str, now: datetime | None = None,
) -> Sanction:
    """Revoke the project's registration and order the owner to cancel ``false_quantity``
    tonnes by ``deadline`` (Art. 39)."""
    at = now or clock.now()
    project = (await session.execute(
        select(Project).where(Project.id == project_id).with_for_update()
    )).scalar_one_or_none()
    if project is None:
        raise not_found("project")
    if project.state in ("revoked", "cancelled", "draft"):
        raise wrong_state("project", project.state, "submitted", "registered")
    if false_quantity < 0:
        raise Invalid("registry.quantity_invalid", "The false quantity cannot be negative.")
    issued = (await session.execute(
        select(func.coalesce(func.sum(Block.serial_end - Block.serial_start + 1), 0))
        .where(Block.project_id == project_id)
    )).scalar_one()
    if false_quantity > issued:
        raise Invalid("registry.quantity_invalid",
                      f"Only {issued} tonnes were issued for this project.")
    if false_quantity and (deadline is None or deadline <= clock.business_date(at)):
        raise Invalid("registry.deadline_invalid", "Give a cancellation deadline after today.")
    project.state, project.revoked_at, project.closed_reason = "revoked", at, reason
    project.updated_at = at
    s = Sanction(id=uuid.uuid4(), organisation_id=project.owner_id, kind="falsification",
                 project_id=project_id, reason=reason, ordered_quantity=false_quantity,
                 deadline=deadline if false_quantity else None,
                 state="ordered" if false_quantity else "closed", created_at=at,
                 closed_at=None if false_quantity else at)
    session.add(s)
    await session.flush()
    await audit.append(session, actor=actor, action="sanction.falsification",
                       entity="registry_sanction", entity_id=str(s.id), now=at,
                       data={"project_id": str(project_id), "false_quantity": false_quantity,
                             "deadline": deadline})
    return s


async def _ordered(session: AsyncSession, sanction_id: UUID) -> Sanction:
    s = await session.get(Sanction, sanction_id, with_for_update=True)
    if s is None:
        raise not_found("sanction")
    if s.state != "ordered":
        raise wrong_state("sanction", s.state, "ordered")
    return s


async def comply(session: AsyncSession, sanction_id: UUID, *, owner_id: UUID | None,
                 actor: str, now: datetime | None = None) -> Sanction:
    """The owner cancels the ordered quantity from its holdings before the deadline."""
    at = now or clock.now()
    s = await _ordered(session, sanction_id)
    if owner_id != s.organisation_id:
        raise wrong_role("Only the sanctioned owner may comply.")
    assert s.deadline is not None
    if clock.business_date(at) > s.deadline:
        raise Conflict("registry.deadline_passed", f"The order was due by {s.deadline}.")
    account_id = await _account(session, s.organisation_id)
    held = await credits.lock(session, account_id=account_id, quantity=s.ordered_quantity,
                              purpose="sanction", reference=str(s.id), now=at)
    await credits.cancel_locked(session, held.id, purpose="sanction",
                                beneficiary="重庆市生态环境局（责令注销）",
                                detail={"sanction_id": str(s.id)}, now=at)
    s.state, s.closed_at = "complied", at
    await audit.append(session, actor=actor, action="sanction.comply",
                       entity="registry_sanction", entity_id=str(s.id), now=at)
    return s


async def enforce(session: AsyncSession, sanction_id: UUID, *, actor: str,
                  now: datetime | None = None) -> Sanction:
    """After the deadline: the registry agency cancels by force (as much as the owner still
    holds, up to the ordered quantity) and refuses the owner's applications for 3 years."""
    at = now or clock.now()
    s = await _ordered(session, sanction_id)
    assert s.deadline is not None
    if clock.business_date(at) <= s.deadline:
        raise Conflict("registry.deadline_not_passed", f"The order is due by {s.deadline}.")
    account_id = await _account(session, s.organisation_id)
    await credits.lock_accounts(session, [account_id])
    available = (await session.execute(
        select(func.coalesce(func.sum(Block.serial_end - Block.serial_start + 1), 0))
        .where(Block.account_id == account_id, Block.state == "held")
    )).scalar_one()
    forced = min(int(available), s.ordered_quantity)
    if forced:
        held = await credits.lock(session, account_id=account_id, quantity=forced,
                                  purpose="sanction", reference=str(s.id), now=at)
        await credits.cancel_locked(session, held.id, purpose="sanction",
                                    beneficiary="管理服务机构强制注销",
                                    detail={"sanction_id": str(s.id), "forced": True}, now=at)
    s.state, s.closed_at, s.forced_quantity = "enforced", at, forced
    s.ban_until = add_years(clock.business_date(at), FALSIFICATION_BAN_YEARS)
    await audit.append(session, actor=actor, action="sanction.enforce",
                       entity="registry_sanction", entity_id=str(s.id), now=at,
                       data={"forced_quantity": forced, "ban_until": s.ban_until})
    return s


async def _account(session: AsyncSession, organisation_id: UUID) -> UUID:
    return (await session.execute(
        select(Account.id).where(Account.organisation_id == organisation_id)
    )).scalar_one()
