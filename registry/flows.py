"""The application path shared by projects and instalments (Art. 17, 20, 39).

draft → submitted → (completeness check) → in_notice (公示, 20 working days) → applied (正式申请,
after the notice ended and every objection answered) → under_assessment (规范性审核 passed;
expert opinions) ⇄ revision_requested (deadline) → assessed → letter_issued (登记函, may be
withheld for supply and demand balance) → registered. Refusals end in ``rejected``.

Each step names the role that owns it; the router authorises, these functions check state
and ownership and append to the audit log.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.calendar.service import add_working_days
from registry.errors import Conflict, Invalid, not_found, wrong_role, wrong_state
from registry.models import Comment, Instalment, Notice, Opinion, Project
from registry.sanctions import ban

NOTICE_WORKING_DAYS = 20  # Art. 17: 公示期为二十个工作日
REVISION_BAN_YEARS = 2  # Art. 39

Subject = Project | Instalment
Kind = Literal["project", "instalment"]


def kind_of(subject: Subject) -> Kind:
    return "project" if isinstance(subject, Project) else "instalment"


async def load(session: AsyncSession, kind: Kind, sid: UUID) -> Subject:
    """The project or instalment, row-locked for the transition."""
    row: Subject | None
    if kind == "project":
        row = (await session.execute(
            select(Project).where(Project.id == sid).with_for_update()
            .execution_options(populate_existing=True)
        )).scalar_one_or_none()
    else:
        row = (await session.execute(
            select(Instalment).where(Instalment.id == sid).with_for_update()
            .execution_options(populate_existing=True)
        )).scalar_one_or_none()
    if row is None:
        raise not_found(kind)
    return row


async def project_of(session: AsyncSession, subject: Subject) -> Project:
    if isinstance(subject, Project):
        return subject
    project = await session.get(Project, subject.project_id)
    assert project is not None
    return project


async def check_owner(session: AsyncSession, subject: Subject, owner_id: UUID | None) -> Project:
    """The step belongs to the project owner (the registrant, Art. 20)."""
    project = await project_of(session, subject)
    if owner_id is None or project.owner_id != owner_id:
        raise wrong_role("Only the project owner may take this step.")
    return project


def _need(subject: Subject, *states: str) -> None:
    if subject.state not in states:
        raise wrong_state(kind_of(subject), subject.state, *states)


async def _log(session: AsyncSession, subject: Subject, action: str, actor: str, at: datetime,
               **data: object) -> None:
    subject.updated_at = at
    await session.flush()
    await audit.append(session, actor=actor, action=f"{kind_of(subject)}.{action}",
                       entity=f"registry_{kind_of(subject)}", entity_id=str(subject.id),
                       data={"state": subject.state, **data}, now=at)


def mark_submitted(subject: Subject, at: datetime) -> None:
    """The owner uploaded the application material (申请材料); the agency checks it next."""
    _need(subject, "draft", "legacy")
    subject.state, subject.submitted_at = "submitted", at


async def check_completeness(
    session: AsyncSession, subject: Subject, *, complete: bool, reason: str | None, actor: str,
    now: datetime | None = None,
) -> Notice | None:
    """The registry agency's completeness check (完整性审核). Complete: a public notice of 20
    working days starts (Art. 17), its end date computed with the working-day calendar.
    Incomplete: back to the owner as a draft, with the reason."""
    at = now or clock.now()
    _need(subject, "submitted")
    if not complete:
        subject.state, subject.closed_reason = "draft", reason or "incomplete"
        await _log(session, subject, "returned", actor, at, reason=subject.closed_reason)
        return None
    project = await project_of(session, subject)
    today = clock.business_date(at)
    ends_on = await add_working_days(session, today, NOTICE_WORKING_DAYS)
    title = project.title if isinstance(subject, Project) else (
        f"{project.title} — 第{subject.no}期减排量")
    notice = Notice(id=uuid.uuid4(), subject_kind=kind_of(subject), subject_id=subject.id,
                    project_id=project.id, title=title, starts_on=today, ends_on=ends_on,
                    published_at=at)
    session.add(notice)
    await session.flush()
    subject.state, subject.notice_id, subject.closed_reason = "in_notice", notice.id, None
    await _log(session, subject, "notice", actor, at, starts_on=today, ends_on=ends_on)
    return notice


async def add_comment(
    session: AsyncSession, notice_id: UUID, *, author_name: str, body: str, objection: bool,
    now: datetime | None = None,
) -> Comment:
    """A public comment (公众意见) during the notice period (Art. 17)."""
    at = now or clock.now()
    notice = await session.get(Notice, notice_id)
    if notice is None:
        raise not_found("notice")
    today = clock.business_date(at)
    if not (notice.starts_on <= today <= notice.ends_on):
        raise Conflict("registry.notice_closed", "Art. 17: the notice period is over.",
                       ends_on=notice.ends_on.isoformat())
    c = Comment(id=uuid.uuid4(), notice_id=notice_id, author_name=author_name, body=body,
                objection=objection, created_at=at)
    session.add(c)
    await session.flush()
    await audit.append(session, actor="public", action="notice.comment",
                       entity="registry_notice", entity_id=str(notice_id), now=at,
                       data={"comment_id": str(c.id), "objection": objection})
    return c


async def reply_to_comment(
    session: AsyncSession, comment_id: UUID, *, owner_id: UUID | None, reply: str, actor: str,
    now: datetime | None = None,
) -> Comment:
    """The owner's public reply (公开答复) to a comment or objection (Art. 17)."""
    at = now or clock.now()
    c = await session.get(Comment, comment_id, with_for_update=True)
    if c is None:
        raise not_found("comment")
    notice = await session.get(Notice, c.notice_id)
    assert notice is not None
    project = await session.get(Project, notice.project_id)
    assert project is not None
    if owner_id is None or project.owner_id != owner_id:
        raise wrong_role("Only the project owner may answer comments.")
    if c.reply is not None:
        raise Conflict("registry.already_replied", "This comment has been answered.")
    c.reply, c.replied_at = reply, at
    await session.flush()
    await audit.append(session, actor=actor, action="notice.reply", entity="registry_notice",
                       entity_id=str(notice.id), now=at, data={"comment_id": str(comment_id)})
    return c


async def apply_formally(
    session: AsyncSession, subject: Subject, *, comment_handling: str | None, actor: str,
    now: datetime | None = None,
) -> None:
    """The formal application (正式申请, Art. 17): only after the notice has ended, and only
    when there was no objection or every objection has a public reply. The validation or
    verification report then states how the comments were handled (Art. 18/19)."""
    at = now or clock.now()
    _need(subject, "in_notice")
    notice = await session.get(Notice, subject.notice_id)
    assert notice is not None
    if clock.business_date(at) <= notice.ends_on:
        raise Conflict("registry.notice_not_ended",
                       f"Art. 17: the public notice runs until {notice.ends_on.isoformat()}.",
                       ends_on=notice.ends_on.isoformat())
    counts = (await session.execute(
        select(func.count(), func.count().filter(Comment.objection & Comment.reply.is_(None)))
        .where(Comment.notice_id == notice.id)
    )).one()
    if counts[1]:
        raise Conflict("registry.objection_unanswered",
                       "Art. 17: every objection needs a public reply before the application.",
                       unanswered=counts[1])
    if counts[0] and not (comment_handling or "").strip():
        raise Invalid("registry.comment_handling_required",
                      "Art. 18/19: state how the public comments were handled.")
    subject.state, subject.applied_at, subject.comment_handling = "applied", at, comment_handling
    await _log(session, subject, "apply", actor, at)


async def review(session: AsyncSession, subject: Subject, *, passed: bool, reason: str | None,
                 actor: str, now: datetime | None = None) -> None:
    """The registry agency's normative review (规范性审核, Art. 20)."""
    at = now or clock.now()
    _need(subject, "applied")
    if passed:
        subject.state, subject.assessment_round = "under_assessment", 1
    else:
        subject.state, subject.closed_reason = "rejected", reason or "review failed"
    await _log(session, subject, "review", actor, at, passed=passed, reason=reason)


async def add_opinion(session: AsyncSession, subject: Subject, *, outcome: str, body: str,
                      actor: str, now: datetime | None = None) -> Opinion:
    """An expert's opinion (专家评审意见) in the current assessment round (Art. 7, 20)."""
    at = now or clock.now()
    _need(subject, "under_assessment")
    o = Opinion(id=uuid.uuid4(), subject_kind=kind_of(subject), subject_id=subject.id,
                round=subject.assessment_round, expert=actor, outcome=outcome, body=body,
                created_at=at)
    session.add(o)
    await _log(session, subject, "opinion", actor, at, outcome=outcome,
               round=subject.assessment_round)
    return o


async def conclude_assessment(
    session: AsyncSession, subject: Subject, *, outcome: Literal["pass", "revise", "fail"],
    deadline: date | None, reason: str | None, actor: str, now: datetime | None = None,
) -> None:
    """The agency's technical assessment opinion (技术评估意见, Art. 20) from the experts'.

    ``revise`` asks the owner to revise by ``deadline`` (first round only). A second round that
    fails refuses the owner's applications for 2 years (Art. 39).
    """
    at = now or clock.now()
    _need(subject, "under_assessment")
    n = (await session.execute(
        select(func.count()).select_from(Opinion).where(
            Opinion.subject_id == subject.id, Opinion.round == subject.assessment_round)
    )).scalar_one()
    if n == 0:
        raise Conflict("registry.no_expert_opinion",
                       "Art. 20: the assessment needs at least one expert opinion.")
    today = clock.business_date(at)
    if outcome == "pass":
        subject.state = "assessed"
    elif outcome == "revise":
        if subject.assessment_round >= 2:
            raise Conflict("registry.second_assessment_final",
                           "Art. 39: the second assessment passes or fails.")
        if deadline is None or deadline <= today:
            raise Invalid("registry.deadline_invalid", "Give a revision deadline after today.")
        subject.state, subject.revision_deadline = "revision_requested", deadline
    else:
        subject.state, subject.closed_reason = "rejected", reason or "assessment failed"
        if subject.assessment_round >= 2:
            project = await project_of(session, subject)
            await ban(session, project.owner_id, kind="second_assessment_failed",
                      project_id=project.id, years=REVISION_BAN_YEARS,
                      reason="Art. 39: the second technical assessment failed", actor=actor,
                      now=at)
    await _log(session, subject, "assessment", actor, at, outcome=outcome,
               round=subject.assessment_round, deadline=deadline)


async def submit_revision(session: AsyncSession, subject: Subject, *, actor: str,
                          now: datetime | None = None) -> None:
    """The owner's revision (修改完善) within the deadline: a second assessment round."""
    at = now or clock.now()
    _need(subject, "revision_requested")
    assert subject.revision_deadline is not None
    if clock.business_date(at) > subject.revision_deadline:
        raise Conflict("registry.revision_deadline_passed",
                       f"Art. 39: the revision was due by {subject.revision_deadline}.")
    subject.state = "under_assessment"
    subject.assessment_round += 1
    await _log(session, subject, "revision", actor, at, round=subject.assessment_round)


async def lapse_revision(session: AsyncSession, subject: Subject, *, actor: str,
                         now: datetime | None = None) -> None:
    """The revision deadline passed without a revision: rejected, and the owner's applications
    are refused for 2 years (Art. 39)."""
    at = now or clock.now()
    _need(subject, "revision_requested")
    assert subject.revision_deadline is not None
    if clock.business_date(at) <= subject.revision_deadline:
        raise Conflict("registry.deadline_not_passed",
                       f"The revision is due by {subject.revision_deadline}.")
    subject.state, subject.closed_reason = "rejected", "revision deadline missed"
    project = await project_of(session, subject)
    await ban(session, project.owner_id, kind="revision_missed", project_id=project.id,
              years=REVISION_BAN_YEARS, reason="Art. 39: the revision deadline was missed",
              actor=actor, now=at)
    await _log(session, subject, "lapse", actor, at)


async def decide_letter(session: AsyncSession, subject: Subject, *, issue: bool,
                        reason: str | None, actor: str, now: datetime | None = None) -> None:
    """The bureau's registration letter (登记函, Art. 20), or holding it back to keep CQCER
    supply and demand in balance (the application stays assessed, with the reason)."""
    at = now or clock.now()
    _need(subject, "assessed")
    if issue:
        subject.state, subject.letter_at, subject.withheld_reason = "letter_issued", at, None
    else:
        if not (reason or "").strip():
            raise Invalid("registry.reason_required", "Say why the letter is withheld.")
        subject.withheld_reason = reason
    await _log(session, subject, "letter" if issue else "withhold", actor, at, reason=reason)


def mark_registered(subject: Subject, at: datetime) -> None:
    """The registry agency registers per the letter (登记, Art. 20)."""
    _need(subject, "letter_issued")
    subject.state, subject.registered_at = "registered", at


async def log_registered(session: AsyncSession, subject: Subject, actor: str,
                         at: datetime) -> None:
    await _log(session, subject, "register", actor, at)
