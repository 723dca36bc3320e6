"""One entry per step of the application path, for projects and instalments alike: load and
lock the subject, check who may act, run the step (:mod:`registry.flows`), answer the view."""

from __future__ import annotations

from datetime import date
from typing import Literal
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from registry import flows, issuance, projects
from registry.models import Instalment
from registry.schemas import InstalmentOut, ProjectOut

View = ProjectOut | InstalmentOut


async def view(session: AsyncSession, kind: flows.Kind, sid: UUID) -> View:
    if kind == "project":
        return await projects.project_out(session, sid)
    return await issuance.instalment_out(session, sid)


async def apply(session: AsyncSession, kind: flows.Kind, sid: UUID, *, owner_id: UUID | None,
                comment_handling: str | None, actor: str) -> View:
    """The owner's formal application; an instalment's rules are checked again on its date."""
    subject = await flows.load(session, kind, sid)
    await flows.check_owner(session, subject, owner_id)
    if isinstance(subject, Instalment) and subject.state == "in_notice":
        await issuance.recheck(session, subject, clock.today())
    await flows.apply_formally(session, subject, comment_handling=comment_handling, actor=actor)
    return await view(session, kind, sid)


async def revise(session: AsyncSession, kind: flows.Kind, sid: UUID, *, owner_id: UUID | None,
                 actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.check_owner(session, subject, owner_id)
    await flows.submit_revision(session, subject, actor=actor)
    return await view(session, kind, sid)


async def completeness(session: AsyncSession, kind: flows.Kind, sid: UUID, *, complete: bool,
                       reason: str | None, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.check_completeness(session, subject, complete=complete, reason=reason,
                                   actor=actor)
    return await view(session, kind, sid)


async def review(session: AsyncSession, kind: flows.Kind, sid: UUID, *, passed: bool,
                 reason: str | None, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.review(session, subject, passed=passed, reason=reason, actor=actor)
    return await view(session, kind, sid)


async def opinion(session: AsyncSession, kind: flows.Kind, sid: UUID, *, outcome: str,
                  body: str, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.add_opinion(session, subject, outcome=outcome, body=body, actor=actor)
    return await view(session, kind, sid)


async def assessment(session: AsyncSession, kind: flows.Kind, sid: UUID, *,
                     outcome: Literal["pass", "revise", "fail"], deadline: date | None,
                     reason: str | None, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.conclude_assessment(session, subject, outcome=outcome, deadline=deadline,
                                    reason=reason, actor=actor)
    return await view(session, kind, sid)


async def lapse(session: AsyncSession, kind: flows.Kind, sid: UUID, *, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.lapse_revision(session, subject, actor=actor)
    return await view(session, kind, sid)


async def letter(session: AsyncSession, kind: flows.Kind, sid: UUID, *, issue: bool,
                 reason: str | None, actor: str) -> View:
    subject = await flows.load(session, kind, sid)
    await flows.decide_letter(session, subject, issue=issue, reason=reason, actor=actor)
    return await view(session, kind, sid)


async def register(session: AsyncSession, kind: flows.Kind, sid: UUID, *, actor: str) -> View:
    if kind == "project":
        return await projects.register_project(session, sid, actor=actor)
    return await issuance.register_instalment(session, sid, actor=actor)
