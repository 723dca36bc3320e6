"""Scenes (低碳场景, Art. 32): registration, status, partner credentials, behaviours, and the
disclosure reads (Art. 36). Also the public face of the package for other domains:

- ingestion calls :func:`links_for_ingest` and :func:`rulebook`, other readers
  :func:`resolve_links` (see :mod:`scenes.lookup` for their caching); ``tanhui serve`` runs
  :func:`run_link_change_trim`;
- rules live in :mod:`scenes.rules`, consent and linking in :mod:`scenes.consent`.

Every admin write here appends to the audit log in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.auth import citizens, clients
from app.errors import Conflict, Invalid
from scenes.errors import CategoryUnknown, SceneNotActive, SceneUnknown
from scenes.lookup import (
    ConversionRule,
    Link,
    LinkCache,
    ReductionRule,
    RuleBook,
    SceneInfo,
    links_for_ingest,
    resolve_links,
    rulebook,
    run_link_change_trim,
    trim_link_changes,
)
from scenes.models import Behaviour, Scene, SceneCategory, SceneClient
from scenes.schemas import (
    BehaviourIn,
    BehaviourOut,
    CategoryIn,
    CategoryOut,
    PublicScene,
    PublicStats,
    SceneCreate,
    SceneOut,
    ScenePatch,
)

__all__ = [
    "ConversionRule",
    "Link",
    "LinkCache",
    "ReductionRule",
    "RuleBook",
    "SceneInfo",
    "links_for_ingest",
    "resolve_links",
    "rulebook",
    "run_link_change_trim",
    "trim_link_changes",
]

# Art. 32: a scene may pause (suspended) and resume; ending is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"suspended", "ended"}),
    "suspended": frozenset({"active", "ended"}),
    "ended": frozenset(),
}


# --- categories -----------------------------------------------------------------------------


async def list_categories(session: AsyncSession) -> list[CategoryOut]:
    rows = (await session.scalars(select(SceneCategory).order_by(SceneCategory.code))).all()
    return [CategoryOut.model_validate(r) for r in rows]


async def add_category(
    session: AsyncSession, data: CategoryIn, *, actor: str, now: datetime | None = None
) -> CategoryOut:
    """Scene categories are data: the operator adds one (409 ``scene.category_taken``)."""
    now = now or clock.now()
    created = await session.scalar(
        insert(SceneCategory)
        .values(code=data.code, name_zh=data.name_zh, name_en=data.name_en, created_at=now)
        .on_conflict_do_nothing()
        .returning(SceneCategory.code)
    )
    if created is None:
        raise Conflict("scene.category_taken", f"Category {data.code!r} exists already.")
    await audit.append(session, actor=actor, action="scenes.category.add",
                       entity="scene_category", entity_id=data.code,
                       data=data.model_dump(), now=now)
    return CategoryOut(code=data.code, name_zh=data.name_zh, name_en=data.name_en)


async def _require_category(session: AsyncSession, code: str) -> None:
    if await session.get(SceneCategory, code) is None:
        raise CategoryUnknown(code)


# --- scenes ---------------------------------------------------------------------------------


async def get_scene_row(session: AsyncSession, scene_id: UUID, *, lock: bool = False) -> Scene:
    stmt = select(Scene).where(Scene.id == scene_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    scene = await session.scalar(stmt)
    if scene is None:
        raise SceneUnknown()
    return scene


async def _scenes_out(session: AsyncSession, scenes: Sequence[Scene]) -> list[SceneOut]:
    """Scenes with their behaviours and client ids: three queries however many scenes."""
    ids = [sc.id for sc in scenes]
    behaviours: dict[UUID, list[BehaviourOut]] = {}
    for b in (await session.scalars(
            select(Behaviour).where(Behaviour.scene_id.in_(ids)).order_by(Behaviour.code))):
        behaviours.setdefault(b.scene_id, []).append(BehaviourOut.model_validate(b))
    client_ids: dict[UUID, list[str]] = {}
    for scene_id, client_id in (await session.execute(
            select(SceneClient.scene_id, SceneClient.client_id)
            .where(SceneClient.scene_id.in_(ids)).order_by(SceneClient.created_at))).all():
        client_ids.setdefault(scene_id, []).append(client_id)
    return [
        SceneOut(
            id=sc.id, code=sc.code, name_zh=sc.name_zh, name_en=sc.name_en,
            category=sc.category_code, partner_name=sc.partner_name,
            partner_credit_code=sc.partner_credit_code, agreement_ref=sc.agreement_ref,
            agreement_signed_on=sc.agreement_signed_on,
            agreement_starts_on=sc.agreement_starts_on,
            agreement_ends_on=sc.agreement_ends_on, claim_window_days=sc.claim_window_days,
            status=sc.status,  # type: ignore[arg-type]
            status_changed_at=sc.status_changed_at, is_demo=sc.is_demo,
            behaviours=behaviours.get(sc.id, []), client_ids=client_ids.get(sc.id, []),
        )
        for sc in scenes
    ]


async def scene_out(session: AsyncSession, scene: Scene) -> SceneOut:
    return (await _scenes_out(session, [scene]))[0]


async def scene_id_by_code(session: AsyncSession, code: str) -> UUID:
    """The id of the scene with this public code; 404 ``scene.unknown``."""
    found = await session.scalar(select(Scene.id).where(Scene.code == code))
    if found is None:
        raise SceneUnknown(f"No scene {code!r}.")
    return found


async def get_scene(session: AsyncSession, scene_id: UUID) -> SceneOut:
    return await scene_out(session, await get_scene_row(session, scene_id))


async def list_scenes(session: AsyncSession, *, status: str | None = None) -> list[SceneOut]:
    stmt = select(Scene).order_by(Scene.code)
    if status is not None:
        stmt = stmt.where(Scene.status == status)
    return await _scenes_out(session, (await session.scalars(stmt)).all())


def _check_agreement_dates(scene: Scene) -> None:
    if scene.agreement_ends_on is not None and scene.agreement_ends_on < scene.agreement_starts_on:
        raise Invalid("scene.agreement_dates_invalid",
                      "The agreement cannot end before it starts.")


def _scene_audit(scene: Scene) -> dict[str, Any]:
    return {name: getattr(scene, name) for name in (
        "code", "name_zh", "name_en", "category_code", "partner_name", "partner_credit_code",
        "agreement_ref", "agreement_signed_on", "agreement_starts_on", "agreement_ends_on",
        "claim_window_days", "status", "is_demo")}


async def register_scene(
    session: AsyncSession, data: SceneCreate, *, actor: str, demo: bool = False,
    now: datetime | None = None,
) -> SceneOut:
    """Art. 32: register a scene after its agreement with the operator; it starts active."""
    now = now or clock.now()
    await _require_category(session, data.category)
    if data.agreement_ends_on is not None and data.agreement_ends_on < data.agreement_starts_on:
        raise Invalid("scene.agreement_dates_invalid",
                      "The agreement cannot end before it starts.")
    scene_id = await session.scalar(
        insert(Scene)
        .values(
            id=uuid.uuid4(), code=data.code, name_zh=data.name_zh, name_en=data.name_en,
            category_code=data.category, partner_name=data.partner_name,
            partner_credit_code=data.partner_credit_code, agreement_ref=data.agreement_ref,
            agreement_signed_on=data.agreement_signed_on,
            agreement_starts_on=data.agreement_starts_on,
            agreement_ends_on=data.agreement_ends_on,
            claim_window_days=data.claim_window_days, status="active", status_changed_at=now,
            is_demo=demo, created_at=now, updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Scene.code])
        .returning(Scene.id)
    )
    if scene_id is None:
        raise Conflict("scene.code_taken", f"A scene with code {data.code!r} exists.")
    scene = await get_scene_row(session, scene_id)
    await audit.append(session, actor=actor, action="scenes.register", entity="scene",
                       entity_id=str(scene.id), data=_scene_audit(scene), now=now)
    return await scene_out(session, scene)


async def update_scene(
    session: AsyncSession, scene_id: UUID, patch: ScenePatch, *, actor: str,
    now: datetime | None = None,
) -> SceneOut:
    """Change a scene's details or status. Suspending or ending refuses its events at once
    (Art. 32); ending also deactivates the partner's API clients."""
    now = now or clock.now()
    scene = await get_scene_row(session, scene_id, lock=True)
    fields = patch.model_fields_set
    for name in ("name_zh", "name_en", "category", "partner_name", "agreement_ref",
                 "agreement_signed_on", "agreement_starts_on", "claim_window_days", "status"):
        if name in fields and getattr(patch, name) is None:
            raise Invalid("scene.field_required", f"{name} cannot be removed.")
    if patch.category is not None:
        await _require_category(session, patch.category)
        scene.category_code = patch.category
    for name in ("name_zh", "name_en", "partner_name", "agreement_ref", "agreement_signed_on",
                 "agreement_starts_on", "claim_window_days"):
        if getattr(patch, name) is not None:
            setattr(scene, name, getattr(patch, name))
    for name in ("partner_credit_code", "agreement_ends_on"):
        if name in fields:
            setattr(scene, name, getattr(patch, name))
    _check_agreement_dates(scene)
    previous = scene.status
    if patch.status is not None and patch.status != previous:
        if patch.status not in TRANSITIONS[previous]:
            raise Conflict("scene.status_transition",
                           f"A scene cannot go from {previous} to {patch.status}.")
        scene.status = patch.status
        scene.status_changed_at = now
        if patch.status == "ended":
            for client_id in (await session.scalars(
                    select(SceneClient.client_id).where(SceneClient.scene_id == scene.id))):
                await clients.set_client_active(session, client_id, False)
    scene.updated_at = now
    await session.flush()
    data = _scene_audit(scene) | {"changed": sorted(fields), "previous_status": previous}
    await audit.append(session, actor=actor, action="scenes.update", entity="scene",
                       entity_id=str(scene.id), data=data, now=now)
    return await scene_out(session, scene)


# --- partner credentials --------------------------------------------------------------------


async def issue_credentials(
    session: AsyncSession, scene_id: UUID, *, actor: str, now: datetime | None = None
) -> tuple[str, str]:
    """A new OAuth client for the scene's partner: ``(client_id, secret)``, secret shown once."""
    now = now or clock.now()
    scene = await get_scene_row(session, scene_id, lock=True)
    if scene.status == "ended":
        raise SceneNotActive("ended")
    client_id, secret = await clients.create_client(
        session, scope_id=scene.id, name=f"{scene.code} · {scene.partner_name}")
    session.add(SceneClient(client_id=client_id, scene_id=scene.id, created_at=now))
    await session.flush()
    await audit.append(session, actor=actor, action="scenes.credentials.issue", entity="scene",
                       entity_id=str(scene.id), data={"client_id": client_id}, now=now)
    return client_id, secret


async def _scene_client(session: AsyncSession, scene_id: UUID, client_id: str | None) -> str:
    await get_scene_row(session, scene_id)
    owned = list((await session.scalars(
        select(SceneClient.client_id).where(SceneClient.scene_id == scene_id)
        .order_by(SceneClient.created_at))).all())
    if client_id is None:
        if len(owned) != 1:
            raise Invalid("scene.client_ambiguous" if owned else "scene.no_credentials",
                          "Name the client_id: the scene has "
                          f"{len(owned)} clients." if owned else
                          "Issue credentials for the scene first.")
        return owned[0]
    if client_id not in owned:
        raise Invalid("scene.client_unknown", "The client does not belong to this scene.")
    return client_id


async def add_key(
    session: AsyncSession, scene_id: UUID, public_key: str, *, client_id: str | None = None,
    actor: str, now: datetime | None = None,
) -> tuple[UUID, str]:
    """Upload the partner's Ed25519 public key; returns ``(key_id, client_id)``."""
    now = now or clock.now()
    client_id = await _scene_client(session, scene_id, client_id)
    key_id = await clients.add_client_key(session, client_id, public_key, now=now)
    await audit.append(session, actor=actor, action="scenes.key.add", entity="scene",
                       entity_id=str(scene_id),
                       data={"client_id": client_id, "key_id": key_id}, now=now)
    return key_id, client_id


async def retire_key(
    session: AsyncSession, scene_id: UUID, key_id: UUID, *, client_id: str | None = None,
    at: datetime | None = None, actor: str, now: datetime | None = None,
) -> tuple[str, datetime]:
    """Rotation with overlap: the key stays valid until ``at`` (default now)."""
    now = now or clock.now()
    at = at or now
    client_id = await _scene_client(session, scene_id, client_id)
    await clients.retire_client_key(session, client_id, key_id, at=at)
    await audit.append(session, actor=actor, action="scenes.key.retire", entity="scene",
                       entity_id=str(scene_id),
                       data={"client_id": client_id, "key_id": key_id, "at": at}, now=now)
    return client_id, at


# --- behaviours -----------------------------------------------------------------------------


async def add_behaviour(
    session: AsyncSession, scene_id: UUID, data: BehaviourIn, *, actor: str,
    now: datetime | None = None,
) -> BehaviourOut:
    """A behaviour type of the scene; its reduction rules are versioned separately."""
    now = now or clock.now()
    await get_scene_row(session, scene_id, lock=True)
    behaviour_id = await session.scalar(
        insert(Behaviour)
        .values(id=uuid.uuid4(), scene_id=scene_id, code=data.code, name_zh=data.name_zh,
                name_en=data.name_en, description=data.description, created_at=now)
        .on_conflict_do_nothing()
        .returning(Behaviour.id)
    )
    if behaviour_id is None:
        raise Conflict("scene.behaviour_taken", f"The scene has a behaviour {data.code!r}.")
    await audit.append(session, actor=actor, action="scenes.behaviour.add", entity="scene",
                       entity_id=str(scene_id),
                       data={"behaviour_id": behaviour_id, **data.model_dump()}, now=now)
    return BehaviourOut(code=data.code, name_zh=data.name_zh, name_en=data.name_en,
                        description=data.description)


async def list_behaviours(session: AsyncSession, scene_id: UUID) -> list[BehaviourOut]:
    await get_scene_row(session, scene_id)
    rows = (await session.scalars(
        select(Behaviour).where(Behaviour.scene_id == scene_id).order_by(Behaviour.code))).all()
    return [BehaviourOut.model_validate(b) for b in rows]


# --- disclosure (Art. 36) -------------------------------------------------------------------


async def public_scenes(session: AsyncSession) -> list[PublicScene]:
    """Art. 36: every scene with its partner, category, status and behaviours."""
    scenes = (await session.execute(
        select(Scene, SceneCategory).join(SceneCategory, SceneCategory.code == Scene.category_code)
        .order_by(Scene.code))).all()
    behaviours: dict[UUID, list[BehaviourOut]] = {}
    for b in (await session.scalars(select(Behaviour).order_by(Behaviour.code))).all():
        behaviours.setdefault(b.scene_id, []).append(BehaviourOut.model_validate(b))
    return [
        PublicScene(
            code=s.code, name_zh=s.name_zh, name_en=s.name_en,
            category=CategoryOut.model_validate(c), partner_name=s.partner_name,
            status=s.status,  # type: ignore[arg-type]
            agreement_starts_on=s.agreement_starts_on, agreement_ends_on=s.agreement_ends_on,
            is_demo=s.is_demo, behaviours=behaviours.get(s.id, []),
        )
        for s, c in scenes
    ]


async def public_stats(session: AsyncSession, *, now: datetime | None = None) -> PublicStats:
    """Art. 36: the number of registered citizens (注册人数), active scenes, consenting
    citizens."""
    now = now or clock.now()
    active = await session.scalar(
        select(func.count()).select_from(Scene).where(Scene.status == "active"))
    consenting = await session.scalar(text(
        "SELECT count(DISTINCT citizen_id) FROM consents WHERE revoked_at IS NULL"))
    return PublicStats(
        registered_citizens=await citizens.count_citizens(session),
        active_scenes=int(active or 0), consenting_citizens=int(consenting or 0), as_of=now,
    )
