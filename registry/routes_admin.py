"""Routes of the bureau, registry agency, experts, VVBs and district bureaus:
``/v1/admin/registry/...``. Each route names the one permission it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from uuid import UUID

from fastapi import APIRouter
from sqlalchemy import select

from app.audit import actor_of
from app.auth.principal import Principal
from app.deps import Db, require
from registry import catalog, dissolution, issuance, projects, reports, sanctions, service, steps
from registry.errors import not_found
from registry.models import Project
from registry.reconcile import reconcile
from registry.schemas import (
    AssessmentIn,
    CancelProjectIn,
    CompletenessIn,
    FraudReportCloseIn,
    FraudReportOut,
    InstalmentOut,
    LegacyProjectIn,
    LetterIn,
    MethodologyIn,
    MethodologyOut,
    MethodologyVersionIn,
    OpinionIn,
    OrganisationIn,
    OrganisationOut,
    OwnerGoneIn,
    OwnerGoneOut,
    ProjectOut,
    ProposalDecisionIn,
    ProposalOut,
    ReviewIn,
    SanctionIn,
    SanctionOut,
    TieIn,
    ValidationIn,
    VerificationIn,
    VvbIn,
    VvbOut,
)

router = APIRouter(prefix="/v1/admin/registry", tags=["registry: administration"])
Kind = Literal["projects", "instalments"]
AnyView = ProjectOut | InstalmentOut

if TYPE_CHECKING:
    Accounts = Principal
    Methodologies = Principal
    Vvbs = Principal
    Review = Principal
    Assess = Principal
    Decide = Principal
    Verify = Principal
    Sanction = Principal
    Read = Principal
else:
    Accounts = require("registry.accounts")
    Methodologies = require("methodology.manage")
    Vvbs = require("vvb.manage")
    Review = require("registry.review")
    Assess = require("registry.assess")
    Decide = require("registry.decide")
    Verify = require("registry.verify")
    Sanction = require("registry.sanction")
    Read = require("registry.read")


def _kind(kind: Kind) -> Literal["project", "instalment"]:
    return "project" if kind == "projects" else "instalment"


def _district_only(admin: Principal) -> str | None:
    """The district a district bureau (with no city-level role) is confined to (Art. 4)."""
    if "district_bureau" in admin.roles and not admin.roles & {"bureau", "registry_agency"}:
        return admin.district or "-"
    return None


@router.post("/organisations", response_model=OrganisationOut, status_code=201)
async def open_account(body: OrganisationIn, admin: Accounts, db: Db) -> OrganisationOut:
    """Open a registry account holder (with a login when username and password are given);
    ``staff_of`` flags staff of the agency, operator or exchange (Art. 37)."""
    async with db.transaction() as session:
        return await service.create_organisation(session, body, actor=actor_of(admin))


@router.post("/organisations/{oid}/owner-gone", response_model=OwnerGoneOut)
async def owner_gone(oid: UUID, body: OwnerGoneIn, admin: Review, db: Db) -> OwnerGoneOut:
    """After investigation, the owner has ceased to exist (主体灭失, Art. 22): its projects and
    the CQCER it holds are cancelled, publicly; the organisation is dissolved."""
    async with db.transaction() as session:
        return await dissolution.owner_gone(session, oid, reason=body.reason,
                                            actor=actor_of(admin))


# --- methodologies (Art. 10–13) ---------------------------------------------------------------


@router.post("/methodologies", response_model=MethodologyOut, status_code=201)
async def create_methodology(body: MethodologyIn, admin: Methodologies, db: Db) -> MethodologyOut:
    async with db.transaction() as session:
        return await catalog.create_methodology(session, body, actor=actor_of(admin))


@router.post("/methodologies/{mid}/publish", response_model=MethodologyOut)
async def publish(mid: UUID, admin: Methodologies, db: Db) -> MethodologyOut:
    async with db.transaction() as session:
        return await catalog.publish_methodology(session, mid, actor=actor_of(admin))


@router.post("/methodologies/{mid}/versions", response_model=MethodologyOut, status_code=201)
async def revise(mid: UUID, body: MethodologyVersionIn, admin: Methodologies,
                 db: Db) -> MethodologyOut:
    async with db.transaction() as session:
        return await catalog.revise_methodology(session, mid, body, actor=actor_of(admin))


@router.post("/methodologies/{mid}/repeal", response_model=MethodologyOut)
async def repeal(mid: UUID, admin: Methodologies, db: Db) -> MethodologyOut:
    async with db.transaction() as session:
        return await catalog.repeal_methodology(session, mid, actor=actor_of(admin))


@router.get("/methodologies/{mid}/proposals", response_model=list[ProposalOut])
async def proposals(mid: UUID, admin: Methodologies, db: Db) -> list[ProposalOut]:
    async with db.transaction() as session:
        return await catalog.list_proposals(session, mid)


@router.post("/proposals/{pid}/decision", response_model=ProposalOut)
async def decide_proposal(pid: UUID, body: ProposalDecisionIn, admin: Methodologies,
                          db: Db) -> ProposalOut:
    async with db.transaction() as session:
        return await catalog.decide_proposal(session, pid, body.status, body.response,
                                             actor=actor_of(admin))


# --- VVBs (Art. 21) --------------------------------------------------------------------------


@router.post("/vvbs", response_model=VvbOut, status_code=201)
async def recognise(body: VvbIn, admin: Vvbs, db: Db) -> VvbOut:
    async with db.transaction() as session:
        return await catalog.recognise_vvb(session, body, actor=actor_of(admin))


@router.post("/vvbs/{vid}/revoke", response_model=VvbOut)
async def revoke(vid: UUID, admin: Vvbs, db: Db) -> VvbOut:
    async with db.transaction() as session:
        return await catalog.revoke_vvb(session, vid, actor=actor_of(admin))


@router.post("/vvbs/{vid}/ties", status_code=201)
async def tie(vid: UUID, body: TieIn, admin: Vvbs, db: Db) -> dict[str, UUID]:
    async with db.transaction() as session:
        return {"id": await catalog.declare_tie(session, vid, body, actor=actor_of(admin))}


@router.get("/vvbs", response_model=list[VvbOut])
async def vvbs(admin: Read, db: Db) -> list[VvbOut]:
    async with db.transaction() as session:
        return await catalog.list_vvbs(session)


# --- projects and instalments (Art. 14–22, 43) ----------------------------------------------


@router.get("/projects", response_model=list[ProjectOut])
async def list_projects(admin: Read, db: Db, state: str | None = None) -> list[ProjectOut]:
    """Every project; a district bureau sees its own district only (Art. 4)."""
    q = select(Project.id).order_by(Project.no)
    if state:
        q = q.where(Project.state == state)
    district = _district_only(admin)
    if district is not None:
        q = q.where(Project.district_code == district)
    async with db.transaction() as session:
        ids = (await session.execute(q)).scalars().all()
        return [await projects.project_out(session, i) for i in ids]


@router.post("/projects/legacy", response_model=ProjectOut, status_code=201)
async def import_legacy(body: LegacyProjectIn, admin: Review, db: Db) -> ProjectOut:
    """Record a project approved under the former rules (Art. 43)."""
    async with db.transaction() as session:
        return await projects.import_legacy(session, body, actor=actor_of(admin))


@router.post("/projects/{pid}/validation", response_model=ProjectOut)
async def validation(pid: UUID, body: ValidationIn, vvb: Verify, db: Db) -> ProjectOut:
    """The validator's report (Art. 18); the VVB user's token names its VVB (scope)."""
    async with db.transaction() as session:
        return await projects.file_validation(session, pid, vvb_id=vvb.scope_id,
                                              conclusion=body.conclusion,
                                              report_ref=body.report_ref, actor=actor_of(vvb))


@router.post("/instalments/{iid}/verification", response_model=InstalmentOut)
async def verification(iid: UUID, body: VerificationIn, vvb: Verify, db: Db) -> InstalmentOut:
    """The verifier's report fixing the verified quantity (Art. 19)."""
    async with db.transaction() as session:
        return await issuance.file_verification(session, iid, vvb_id=vvb.scope_id,
                                                verified_tonnes=body.verified_tonnes,
                                                report_ref=body.report_ref, actor=actor_of(vvb))


@router.post("/projects/{pid}/cancel", response_model=ProjectOut)
async def cancel_project(pid: UUID, body: CancelProjectIn, admin: Review, db: Db) -> ProjectOut:
    """Cancel after investigation: the owner or the project is gone (Art. 22)."""
    async with db.transaction() as session:
        return await projects.cancel_project(session, pid, ground=body.ground,
                                             reason=body.reason, owner_id=None,
                                             actor=actor_of(admin))


@router.get("/{kind}/{sid}", response_model=AnyView)
async def get_subject(kind: Kind, sid: UUID, admin: Read, db: Db) -> steps.View:
    """A project or instalment; a district bureau reads only its own district's (Art. 4)."""
    district = _district_only(admin)
    async with db.transaction() as session:
        if district is not None and \
                await projects.district_of(session, _kind(kind), sid) != district:
            raise not_found(_kind(kind))
        return await steps.view(session, _kind(kind), sid)


@router.post("/{kind}/{sid}/completeness", response_model=AnyView)
async def completeness(kind: Kind, sid: UUID, body: CompletenessIn, admin: Review,
                       db: Db) -> steps.View:
    """Completeness check; a complete application starts its 20-working-day notice."""
    async with db.transaction() as session:
        return await steps.completeness(session, _kind(kind), sid, complete=body.complete,
                                        reason=body.reason, actor=actor_of(admin))


@router.post("/{kind}/{sid}/review", response_model=AnyView)
async def review(kind: Kind, sid: UUID, body: ReviewIn, admin: Review, db: Db) -> steps.View:
    async with db.transaction() as session:
        return await steps.review(session, _kind(kind), sid, passed=body.passed,
                                  reason=body.reason, actor=actor_of(admin))


@router.post("/{kind}/{sid}/opinions", response_model=AnyView, status_code=201)
async def opinion(kind: Kind, sid: UUID, body: OpinionIn, expert: Assess, db: Db) -> steps.View:
    async with db.transaction() as session:
        return await steps.opinion(session, _kind(kind), sid, outcome=body.outcome,
                                   body=body.body, actor=actor_of(expert))


@router.post("/{kind}/{sid}/assessment", response_model=AnyView)
async def assessment(kind: Kind, sid: UUID, body: AssessmentIn, admin: Review,
                     db: Db) -> steps.View:
    async with db.transaction() as session:
        return await steps.assessment(session, _kind(kind), sid, outcome=body.outcome,
                                      deadline=body.deadline, reason=body.reason,
                                      actor=actor_of(admin))


@router.post("/{kind}/{sid}/lapse", response_model=AnyView)
async def lapse(kind: Kind, sid: UUID, admin: Review, db: Db) -> steps.View:
    """The revision deadline passed: rejected, 2-year refusal (Art. 39)."""
    async with db.transaction() as session:
        return await steps.lapse(session, _kind(kind), sid, actor=actor_of(admin))


@router.post("/{kind}/{sid}/letter", response_model=AnyView)
async def letter(kind: Kind, sid: UUID, body: LetterIn, admin: Decide, db: Db) -> steps.View:
    """The bureau's registration letter, or holding it back (supply and demand, Art. 20)."""
    async with db.transaction() as session:
        return await steps.letter(session, _kind(kind), sid, issue=body.issue,
                                  reason=body.reason, actor=actor_of(admin))


@router.post("/{kind}/{sid}/register", response_model=AnyView)
async def register(kind: Kind, sid: UUID, admin: Review, db: Db) -> steps.View:
    """Registration per the letter; an instalment's verified tonnes are issued as CQCER."""
    async with db.transaction() as session:
        return await steps.register(session, _kind(kind), sid, actor=actor_of(admin))


# --- sanctions (Art. 38–39) and reconciliation ---------------------------------------------


@router.post("/sanctions", response_model=SanctionOut, status_code=201)
async def sanction(body: SanctionIn, admin: Sanction, db: Db) -> SanctionOut:
    """Falsified data: revoke the registration, order cancellation by a deadline."""
    async with db.transaction() as session:
        s = await sanctions.sanction_falsification(
            session, body.project_id, false_quantity=body.false_quantity,
            deadline=body.deadline, reason=body.reason, actor=actor_of(admin))
        return SanctionOut.model_validate(s)


@router.post("/sanctions/{sid}/enforce", response_model=SanctionOut)
async def enforce(sid: UUID, admin: Sanction, db: Db) -> SanctionOut:
    """After the deadline: forced cancellation and a 3-year refusal (Art. 39)."""
    async with db.transaction() as session:
        return SanctionOut.model_validate(
            await sanctions.enforce(session, sid, actor=actor_of(admin)))


@router.get("/reconciliation")
async def reconciliation(admin: Read, db: Db) -> dict[str, list[str]]:
    async with db.transaction() as session:
        return {"differences": await reconcile(session)}


@router.get("/reports", response_model=list[FraudReportOut])
async def fraud_reports(admin: Sanction, db: Db,
                        status: Literal["received", "closed"] | None = None
                        ) -> list[FraudReportOut]:
    """Reports of fraud from the public (举报, Art. 41), oldest first."""
    async with db.transaction() as session:
        return await reports.list_reports(session, status=status)


@router.post("/reports/{rid}/close", response_model=FraudReportOut)
async def close_fraud_report(rid: UUID, body: FraudReportCloseIn, admin: Sanction,
                             db: Db) -> FraudReportOut:
    """Close a report with the outcome of the investigation (Art. 41)."""
    async with db.transaction() as session:
        return await reports.close_report(session, rid, outcome=body.outcome,
                                          actor=actor_of(admin))
