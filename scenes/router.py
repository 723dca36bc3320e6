"""HTTP routes of the scenes domain: admin, citizen consent, partner links, disclosure."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request

from app.audit import actor_of
from app.deps import CurrentCitizen, CurrentPartner, Db, RuntimeDep, require
from app.errors import Forbidden
from app.ratelimit import Limit, limiter_for
from scenes import consent, rules, service
from scenes.schemas import (
    BehaviourIn,
    BehaviourOut,
    CategoryIn,
    CategoryOut,
    ConsentGranted,
    ConsentIn,
    ConsentOut,
    ConversionRuleDraft,
    ConversionRuleOut,
    ConversionRulePatch,
    CredentialsOut,
    KeyIn,
    KeyOut,
    KeyRetire,
    KeyRetired,
    LinkCodeOut,
    LinkIn,
    LinkStatusOut,
    MyConsents,
    PublicScene,
    PublicStats,
    PublishIn,
    ReductionRuleDraft,
    ReductionRuleOut,
    ReductionRulePatch,
    SceneCreate,
    SceneOut,
    ScenePatch,
    SceneStatus,
)

Manage = require("scenes.manage")
Read = require("scenes.read")
Publish = require("rules.publish")
PUBLIC_LIMIT = Limit("public.disclosure", "120/minute")
PartnerRef = Annotated[str, Path(pattern=r"^[\x21-\x7e]{1,128}$")]

admin = APIRouter(prefix="/v1/admin", tags=["scenes (admin)"])
me = APIRouter(prefix="/v1/me", tags=["consent (citizen)"])
partner = APIRouter(prefix="/v1/partner", tags=["partner links"])


async def _public_limit(request: Request, runtime: RuntimeDep) -> None:
    host = request.client.host if request.client else "unknown"
    await limiter_for(runtime).hit(PUBLIC_LIMIT, host, code="public.rate_limited")


public = APIRouter(prefix="/public", tags=["disclosure (Art. 36)"],
                   dependencies=[Depends(_public_limit)])


# --- admin: categories and scenes -----------------------------------------------------------


@admin.get("/scene-categories", response_model=list[CategoryOut],
           summary="List scene categories")
async def list_categories(_: Read, db: Db) -> list[CategoryOut]:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.list_categories(session)


@admin.post("/scene-categories", response_model=CategoryOut, status_code=201,
            summary="Add a scene category")
async def add_category(body: CategoryIn, who: Manage, db: Db) -> CategoryOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.add_category(session, body, actor=actor_of(who))


@admin.post("/scenes", response_model=SceneOut, status_code=201,
            summary="Register a scene after its agreement (Art. 32)")
async def register_scene(body: SceneCreate, who: Manage, db: Db) -> SceneOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.register_scene(session, body, actor=actor_of(who))


@admin.get("/scenes", response_model=list[SceneOut], summary="List scenes")
async def list_scenes(_: Read, db: Db, status: SceneStatus | None = None) -> list[SceneOut]:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.list_scenes(session, status=status)


@admin.get("/scenes/{scene_id}", response_model=SceneOut, summary="Read a scene")
async def get_scene(scene_id: UUID, _: Read, db: Db) -> SceneOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.get_scene(session, scene_id)


@admin.patch("/scenes/{scene_id}", response_model=SceneOut,
             summary="Change a scene or its status (suspend, resume, end)")
async def update_scene(scene_id: UUID, body: ScenePatch, who: Manage, db: Db) -> SceneOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.update_scene(session, scene_id, body, actor=actor_of(who))


@admin.post("/scenes/{scene_id}/credentials", response_model=CredentialsOut, status_code=201,
            summary="Issue OAuth client credentials to the scene's partner (secret shown once)")
async def issue_credentials(scene_id: UUID, who: Manage, db: Db) -> CredentialsOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        client_id, secret = await service.issue_credentials(session, scene_id,
                                                            actor=actor_of(who))
    return CredentialsOut(scene_id=scene_id, client_id=client_id, client_secret=secret)


@admin.post("/scenes/{scene_id}/keys", response_model=KeyOut, status_code=201,
            summary="Upload the partner's Ed25519 public key")
async def add_key(scene_id: UUID, body: KeyIn, who: Manage, db: Db) -> KeyOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        key_id, client_id = await service.add_key(
            session, scene_id, body.public_key, client_id=body.client_id, actor=actor_of(who))
    return KeyOut(key_id=key_id, client_id=client_id)


@admin.post("/scenes/{scene_id}/keys/{key_id}/retire", response_model=KeyRetired,
            summary="Retire a key at a moment (rotation with overlap)")
async def retire_key(scene_id: UUID, key_id: UUID, body: KeyRetire, who: Manage,  # type: ignore[valid-type]
                     db: Db) -> KeyRetired:
    async with db.transaction() as session:
        client_id, at = await service.retire_key(
            session, scene_id, key_id, client_id=body.client_id, at=body.at,
            actor=actor_of(who))
    return KeyRetired(key_id=key_id, client_id=client_id, retires_at=at)


@admin.post("/scenes/{scene_id}/behaviours", response_model=BehaviourOut, status_code=201,
            summary="Add a behaviour type to a scene")
async def add_behaviour(scene_id: UUID, body: BehaviourIn, who: Manage,  # type: ignore[valid-type]
                        db: Db) -> BehaviourOut:
    async with db.transaction() as session:
        return await service.add_behaviour(session, scene_id, body, actor=actor_of(who))


@admin.get("/scenes/{scene_id}/behaviours", response_model=list[BehaviourOut],
           summary="List a scene's behaviour types")
async def list_behaviours(scene_id: UUID, _: Read, db: Db) -> list[BehaviourOut]:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await service.list_behaviours(session, scene_id)


# --- admin: reduction and conversion rules (Art. 31) ----------------------------------------


@admin.post("/scenes/{scene_id}/reduction-rules", response_model=ReductionRuleOut,
            status_code=201, summary="Draft a reduction rule version (Art. 31)")
async def draft_reduction_rule(scene_id: UUID, body: ReductionRuleDraft, who: Manage,  # type: ignore[valid-type]
                               db: Db) -> ReductionRuleOut:
    async with db.transaction() as session:
        return await rules.draft_reduction_rule(session, scene_id, body, actor=actor_of(who))


@admin.get("/scenes/{scene_id}/reduction-rules", response_model=list[ReductionRuleOut],
           summary="List a scene's reduction rule versions (drafts and published)")
async def list_reduction_rules(scene_id: UUID, _: Read, db: Db,  # type: ignore[valid-type]
                               behaviour: str | None = None) -> list[ReductionRuleOut]:
    async with db.transaction() as session:
        await service.get_scene_row(session, scene_id)
        return await rules.list_reduction_rules(session, scene_id=scene_id, behaviour=behaviour)


@admin.get("/reduction-rules/{rule_id}", response_model=ReductionRuleOut,
           summary="Read a reduction rule version")
async def get_reduction_rule(rule_id: UUID, _: Read, db: Db) -> ReductionRuleOut:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await rules.get_reduction_rule(session, rule_id)


@admin.patch("/reduction-rules/{rule_id}", response_model=ReductionRuleOut,
             summary="Edit a reduction rule draft (published versions are immutable)")
async def update_reduction_rule(rule_id: UUID, body: ReductionRulePatch, who: Manage,  # type: ignore[valid-type]
                                db: Db) -> ReductionRuleOut:
    async with db.transaction() as session:
        return await rules.update_reduction_draft(session, rule_id, body, actor=actor_of(who))


@admin.post("/reduction-rules/{rule_id}/publish", response_model=ReductionRuleOut,
            summary="Publish a reduction rule version (needs rules.publish)")
async def publish_reduction_rule(rule_id: UUID, body: PublishIn, who: Publish,  # type: ignore[valid-type]
                                 db: Db) -> ReductionRuleOut:
    async with db.transaction() as session:
        return await rules.publish_reduction_rule(session, rule_id, allow_gap=body.allow_gap,
                                                  actor=actor_of(who))


@admin.post("/conversion-rules", response_model=ConversionRuleOut, status_code=201,
            summary="Draft a conversion rule version (grams per point)")
async def draft_conversion_rule(body: ConversionRuleDraft, who: Manage,  # type: ignore[valid-type]
                                db: Db) -> ConversionRuleOut:
    async with db.transaction() as session:
        return await rules.draft_conversion_rule(session, body, actor=actor_of(who))


@admin.get("/conversion-rules", response_model=list[ConversionRuleOut],
           summary="List conversion rule versions (drafts and published)")
async def list_conversion_rules(_: Read, db: Db) -> list[ConversionRuleOut]:  # type: ignore[valid-type]
    async with db.transaction() as session:
        return await rules.list_conversion_rules(session)


@admin.patch("/conversion-rules/{rule_id}", response_model=ConversionRuleOut,
             summary="Edit a conversion rule draft (published versions are immutable)")
async def update_conversion_rule(rule_id: UUID, body: ConversionRulePatch, who: Manage,  # type: ignore[valid-type]
                                 db: Db) -> ConversionRuleOut:
    async with db.transaction() as session:
        return await rules.update_conversion_draft(session, rule_id, body, actor=actor_of(who))


@admin.post("/conversion-rules/{rule_id}/publish", response_model=ConversionRuleOut,
            summary="Publish a conversion rule version (needs rules.publish)")
async def publish_conversion_rule(rule_id: UUID, body: PublishIn, who: Publish,  # type: ignore[valid-type]
                                  db: Db) -> ConversionRuleOut:
    async with db.transaction() as session:
        return await rules.publish_conversion_rule(session, rule_id, allow_gap=body.allow_gap,
                                                   actor=actor_of(who))


# --- citizen: consent (Art. 34) -------------------------------------------------------------


@me.post("/consents", response_model=ConsentGranted, status_code=201,
         summary="Consent to a scene and get a one-time link code (Art. 34)")
async def grant_consent(body: ConsentIn, citizen: CurrentCitizen, db: Db) -> ConsentGranted:
    async with db.transaction() as session:
        granted, code = await consent.grant_consent(session, citizen.id, body)
    return ConsentGranted(consent=granted,
                          link=LinkCodeOut(link_code=code.code, expires_at=code.expires_at))


@me.get("/consents", response_model=MyConsents,
        summary="My consents per scene, with their history")
async def my_consents(citizen: CurrentCitizen, db: Db) -> MyConsents:
    async with db.transaction() as session:
        return await consent.my_consents(session, citizen.id)


@me.delete("/consents/{consent_id}", response_model=ConsentOut,
           summary="Revoke a consent, effective immediately (the record is kept)")
async def revoke_consent(consent_id: UUID, citizen: CurrentCitizen, db: Db) -> ConsentOut:
    async with db.transaction() as session:
        return await consent.revoke_consent(session, citizen.id, consent_id)


@me.post("/consents/{consent_id}/link-code", response_model=LinkCodeOut, status_code=201,
         summary="A fresh link code for a consent in force")
async def new_link_code(consent_id: UUID, citizen: CurrentCitizen, db: Db) -> LinkCodeOut:
    async with db.transaction() as session:
        code = await consent.issue_link_code(session, citizen.id, consent_id)
    return LinkCodeOut(link_code=code.code, expires_at=code.expires_at)


# --- partner: links -------------------------------------------------------------------------


def _scene_of(principal: CurrentPartner) -> UUID:
    if principal.scope_id is None:
        raise Forbidden("auth.no_scene", "This client is not bound to a scene.")
    return principal.scope_id


@partner.post("/links", response_model=LinkStatusOut, status_code=201,
              summary="Link a partner user to a citizen with the citizen's link code")
async def redeem_link(body: LinkIn, who: CurrentPartner, db: Db) -> LinkStatusOut:
    scene_id = _scene_of(who)
    async with db.transaction() as session:
        return await consent.redeem_link_code(session, scene_id, link_code=body.link_code,
                                              partner_user_ref=body.partner_user_ref)


@partner.get("/links/{partner_user_ref}", response_model=LinkStatusOut,
             summary="Is this partner user linked, and consenting now?")
async def link_status(partner_user_ref: PartnerRef, who: CurrentPartner,
                      db: Db) -> LinkStatusOut:
    scene_id = _scene_of(who)
    async with db.transaction() as session:
        return await consent.link_status(session, scene_id, partner_user_ref)


# --- public disclosure (Art. 36) ------------------------------------------------------------


@public.get("/scenes", response_model=list[PublicScene],
            summary="Scenes and their partners (Art. 36)")
async def public_scenes(db: Db) -> list[PublicScene]:
    async with db.transaction() as session:
        return await service.public_scenes(session)


@public.get("/rules", response_model=list[ReductionRuleOut],
            summary="Published reduction rules, in force and history (Art. 31/36)")
async def public_rules(
    db: Db,
    scene: Annotated[str | None, Query(description="a scene code")] = None,
    in_force: Annotated[bool, Query(description="only versions in force now")] = False,
) -> list[ReductionRuleOut]:
    async with db.transaction() as session:
        scene_id = None
        if scene is not None:
            scene_id = await service.scene_id_by_code(session, scene)
        found = await rules.list_reduction_rules(session, scene_id=scene_id,
                                                 published_only=True)
    return [r for r in found if r.in_force or not in_force]


@public.get("/conversion-rules", response_model=list[ConversionRuleOut],
            summary="Published conversion rules, in force and history (Art. 36)")
async def public_conversion_rules(db: Db) -> list[ConversionRuleOut]:
    async with db.transaction() as session:
        return await rules.list_conversion_rules(session, published_only=True)


@public.get("/stats", response_model=PublicStats,
            summary="Registered citizens and scenes (Art. 36)")
async def public_stats(db: Db) -> PublicStats:
    async with db.transaction() as session:
        return await service.public_stats(session)


router = APIRouter()
for _part in (admin, me, partner, public):
    router.include_router(_part)
