"""Routes of registry account holders (project owners, traders, covered entities):
``/v1/registry/...`` with an ``org`` token."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter
from sqlalchemy import select

from app.audit import actor_of
from app.deps import Db
from registry import catalog, credits, flows, issuance, projects, sanctions, service, steps
from registry.auth import AnyUser, CurrentOrg
from registry.models import Project
from registry.schemas import (
    ApplyIn,
    BlockView,
    CancelProjectIn,
    CommentOut,
    HolderCancelIn,
    InstalmentIn,
    InstalmentOut,
    LoginIn,
    OrganisationOut,
    ProjectIn,
    ProjectOut,
    ProposalIn,
    ProposalOut,
    ReplyIn,
    SanctionOut,
    TokenOut,
    TransferIn,
)

router = APIRouter(prefix="/v1/registry", tags=["registry: account holders"])
Kind = Literal["projects", "instalments"]


def _kind(kind: Kind) -> flows.Kind:
    return "project" if kind == "projects" else "instalment"


@router.post("/auth/token", response_model=TokenOut)
async def login(body: LoginIn, db: Db) -> TokenOut:
    async with db.transaction() as session:
        return await service.login(session, body.username, body.password)


@router.get("/me", response_model=OrganisationOut)
async def me(org: CurrentOrg, db: Db) -> OrganisationOut:
    assert org.scope_id
    async with db.transaction() as session:
        return await service.get_organisation(session, org.scope_id)


@router.get("/holdings", response_model=list[BlockView])
async def holdings(org: CurrentOrg, db: Db) -> list[BlockView]:
    assert org.scope_id
    async with db.transaction() as session:
        return await service.holdings(session, await service.account_of(session, org.scope_id))


@router.post("/transfers", response_model=list[BlockView], status_code=201)
async def transfer(body: TransferIn, org: CurrentOrg, db: Db) -> list[BlockView]:
    """A free transfer (无偿提供, Art. 27) of held credits to another holder's account."""
    assert org.scope_id
    async with db.transaction() as session:
        account = await service.account_of(session, org.scope_id)
        # Both accounts' row locks first, in id order: opposite transfers never deadlock.
        return await credits.transfer(session, from_account_id=account,
                                      to_account_id=body.to_account_id, quantity=body.quantity,
                                      purpose="donation", reference=actor_of(org),
                                      product=body.product)


@router.post("/cancellations", response_model=list[BlockView], status_code=201)
async def cancel_credits(body: HolderCancelIn, org: CurrentOrg, db: Db) -> list[BlockView]:
    """The holder's own cancellation (自愿注销, Art. 27, 29): final and public."""
    assert org.scope_id
    async with db.transaction() as session:
        account = await service.account_of(session, org.scope_id)
        lk = await credits.lock(session, account_id=account, quantity=body.quantity,
                                purpose=body.purpose, reference=actor_of(org),
                                product=body.product)
        return await credits.cancel_locked(session, lk.id, purpose=body.purpose,
                                           beneficiary=body.beneficiary, detail=body.detail)


@router.post("/projects", response_model=ProjectOut, status_code=201)
async def create_project(body: ProjectIn, org: CurrentOrg, db: Db) -> ProjectOut:
    assert org.scope_id
    async with db.transaction() as session:
        return await projects.create_project(session, org.scope_id, body, actor=actor_of(org))


@router.get("/projects", response_model=list[ProjectOut])
async def my_projects(org: CurrentOrg, db: Db) -> list[ProjectOut]:
    async with db.transaction() as session:
        ids = (await session.execute(
            select(Project.id).where(Project.owner_id == org.scope_id).order_by(Project.no)
        )).scalars().all()
        return [await projects.project_out(session, i) for i in ids]


@router.post("/projects/{project_id}/submit", response_model=ProjectOut)
async def submit_project(project_id: UUID, org: CurrentOrg, db: Db) -> ProjectOut:
    async with db.transaction() as session:
        return await projects.submit_project(session, project_id, owner_id=org.scope_id,
                                             actor=actor_of(org))


@router.post("/projects/{project_id}/cancel", response_model=ProjectOut)
async def cancel_project(project_id: UUID, body: CancelProjectIn, org: CurrentOrg,
                         db: Db) -> ProjectOut:
    """The owner's own request to cancel its registered project (Art. 22)."""
    async with db.transaction() as session:
        return await projects.cancel_project(session, project_id, ground="request",
                                             reason=body.reason, owner_id=org.scope_id,
                                             actor=actor_of(org))


@router.post("/projects/{project_id}/instalments", response_model=InstalmentOut,
             status_code=201)
async def create_instalment(project_id: UUID, body: InstalmentIn, org: CurrentOrg,
                            db: Db) -> InstalmentOut:
    async with db.transaction() as session:
        return await issuance.create_instalment(session, project_id, body,
                                                owner_id=org.scope_id, actor=actor_of(org))


@router.post("/instalments/{instalment_id}/submit", response_model=InstalmentOut)
async def submit_instalment(instalment_id: UUID, org: CurrentOrg, db: Db) -> InstalmentOut:
    async with db.transaction() as session:
        return await issuance.submit_instalment(session, instalment_id,
                                                owner_id=org.scope_id, actor=actor_of(org))


@router.get("/instalments/{instalment_id}", response_model=InstalmentOut)
async def get_instalment(instalment_id: UUID, org: CurrentOrg, db: Db) -> InstalmentOut:
    async with db.transaction() as session:
        subject = await flows.load(session, "instalment", instalment_id)
        await flows.check_owner(session, subject, org.scope_id)
        return await issuance.instalment_out(session, instalment_id)


@router.post("/{kind}/{sid}/apply", response_model=ProjectOut | InstalmentOut,
             summary="The formal application after the public notice")
async def apply(kind: Kind, sid: UUID, body: ApplyIn, org: CurrentOrg, db: Db) -> steps.View:
    async with db.transaction() as session:
        return await steps.apply(session, _kind(kind), sid, owner_id=org.scope_id,
                                 comment_handling=body.comment_handling, actor=actor_of(org))


@router.post("/{kind}/{sid}/revision", response_model=ProjectOut | InstalmentOut,
             summary="The revision within the deadline (a second assessment round)")
async def revise(kind: Kind, sid: UUID, org: CurrentOrg, db: Db) -> steps.View:
    async with db.transaction() as session:
        return await steps.revise(session, _kind(kind), sid, owner_id=org.scope_id,
                                  actor=actor_of(org))


@router.post("/comments/{comment_id}/reply", response_model=CommentOut)
async def reply(comment_id: UUID, body: ReplyIn, org: CurrentOrg, db: Db) -> CommentOut:
    """The owner's public reply to a comment or objection (Art. 17)."""
    async with db.transaction() as session:
        c = await flows.reply_to_comment(session, comment_id, owner_id=org.scope_id,
                                         reply=body.reply, actor=actor_of(org))
        return CommentOut.model_validate(c)


@router.post("/sanctions/{sanction_id}/comply", response_model=SanctionOut)
async def comply(sanction_id: UUID, org: CurrentOrg, db: Db) -> SanctionOut:
    """Cancel the ordered quantity before the deadline (Art. 39)."""
    async with db.transaction() as session:
        s = await sanctions.comply(session, sanction_id, owner_id=org.scope_id,
                                   actor=actor_of(org))
        return SanctionOut.model_validate(s)


@router.post("/methodologies/{methodology_id}/proposals", response_model=ProposalOut,
             status_code=201)
async def propose(methodology_id: UUID, body: ProposalIn, who: AnyUser, db: Db) -> ProposalOut:
    """Anyone logged in may propose a revision of a methodology (Art. 13)."""
    async with db.transaction() as session:
        return await catalog.propose_revision(session, methodology_id, body.body,
                                              actor=actor_of(who))
