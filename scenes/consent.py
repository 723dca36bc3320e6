"""Consent (授权) and account linking between a citizen and a scene partner (Art. 34, PIPL).

The citizen grants consent in the app and receives a one-time link code; the partner redeems
the code with its own user reference, so events arrive keyed by ``partner_user_ref`` and
never by a phone number. Revocation is a timestamp, effective at once; a re-grant is a new
record. Consent records are never deleted (no code path does, and a trigger refuses it).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.crypto import blind_index
from app.errors import Conflict
from scenes.errors import (
    ConsentUnknown,
    LinkCodeExpired,
    LinkCodeUnknown,
    LinkCodeUsed,
    LinkCodeWrongScene,
    SceneNotActive,
    SceneUnknown,
)
from scenes.models import Consent, LinkCode, PartnerLink, Scene
from scenes.schemas import ConsentIn, ConsentOut, LinkStatusOut, MyConsents, SceneConsents

LINK_CODE_TTL = timedelta(minutes=10)
# No 0/O, 1/I/L: read aloud or typed from a phone screen without confusion. 31^8 ≈ 8.5e11.
LINK_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LINK_CODE_LENGTH = 8
_CODE_CONTEXT = "scenes.link_code"


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A link code in clear text: returned once to the citizen, stored only as a keyed hash."""

    code: str
    expires_at: datetime


def _normalise_code(raw: str) -> str:
    return "".join(ch for ch in raw.upper() if ch not in "- ")


def _code_hash(raw: str) -> bytes:
    return blind_index(_normalise_code(raw), context=_CODE_CONTEXT)


def _new_code() -> str:
    raw = "".join(secrets.choice(LINK_CODE_ALPHABET) for _ in range(LINK_CODE_LENGTH))
    return f"{raw[:4]}-{raw[4:]}"


def consent_out(c: Consent, scene_code: str) -> ConsentOut:
    return ConsentOut(
        id=c.id, scene_code=scene_code, scope=c.scope,
        privacy_notice_version=c.privacy_notice_version, channel=c.channel,
        granted_at=c.granted_at, revoked_at=c.revoked_at, active=c.revoked_at is None,
    )


async def _active_scene_by_code(session: AsyncSession, code: str) -> Scene:
    scene = await session.scalar(select(Scene).where(Scene.code == code))
    if scene is None:
        raise SceneUnknown(f"No scene {code!r}.")
    if scene.status != "active":
        raise SceneNotActive(scene.status)
    return scene


async def _issue_code(session: AsyncSession, consent: Consent, now: datetime) -> IssuedCode:
    # A new code retires the consent's earlier unused codes.
    await session.execute(
        update(LinkCode)
        .where(LinkCode.consent_id == consent.id, LinkCode.used_at.is_(None),
               LinkCode.expires_at > now)
        .values(expires_at=now)
    )
    expires = now + LINK_CODE_TTL
    while True:  # a collision with any code ever issued is astronomically rare; retry if so
        code = _new_code()
        inserted = await session.scalar(
            insert(LinkCode)
            .values(id=uuid.uuid4(), code_hash=_code_hash(code), consent_id=consent.id,
                    citizen_id=consent.citizen_id, scene_id=consent.scene_id,
                    created_at=now, expires_at=expires)
            .on_conflict_do_nothing(index_elements=[LinkCode.code_hash])
            .returning(LinkCode.id)
        )
        if inserted is not None:
            return IssuedCode(code, expires)


async def grant_consent(
    session: AsyncSession, citizen_id: UUID, data: ConsentIn, *, now: datetime | None = None
) -> tuple[ConsentOut, IssuedCode]:
    """Art. 34: the citizen authorises an active scene; returns the consent and a link code.

    A citizen holds at most one active consent per scene (409 ``consent.already_granted``);
    after a revocation, granting again opens a new record.
    """
    now = now or clock.now()
    scene = await _active_scene_by_code(session, data.scene_code)
    consent_id = await session.scalar(
        insert(Consent)
        .values(id=uuid.uuid4(), citizen_id=citizen_id, scene_id=scene.id, scope=data.scope,
                privacy_notice_version=data.privacy_notice_version, channel=data.channel,
                granted_at=now, revoked_at=None)
        .on_conflict_do_nothing(index_elements=[Consent.citizen_id, Consent.scene_id],
                                index_where=text("revoked_at IS NULL"))
        .returning(Consent.id)
    )
    if consent_id is None:
        raise Conflict("consent.already_granted",
                       "Consent to this scene is already in force; revoke it first.")
    consent = await session.get(Consent, consent_id)
    assert consent is not None
    code = await _issue_code(session, consent, now)
    return consent_out(consent, scene.code), code


async def _own_consent(session: AsyncSession, citizen_id: UUID, consent_id: UUID) -> Consent:
    consent = await session.scalar(
        select(Consent).where(Consent.id == consent_id, Consent.citizen_id == citizen_id)
        .with_for_update().execution_options(populate_existing=True)
    )
    if consent is None:
        raise ConsentUnknown()
    return consent


async def issue_link_code(
    session: AsyncSession, citizen_id: UUID, consent_id: UUID, *, now: datetime | None = None
) -> IssuedCode:
    """A fresh link code for a consent in force (the earlier unused code stops working)."""
    now = now or clock.now()
    consent = await _own_consent(session, citizen_id, consent_id)
    if consent.revoked_at is not None:
        raise Conflict("consent.revoked", "This consent has been revoked.")
    scene = await session.get(Scene, consent.scene_id)
    assert scene is not None
    if scene.status != "active":
        raise SceneNotActive(scene.status)
    return await _issue_code(session, consent, now)


async def revoke_consent(
    session: AsyncSession, citizen_id: UUID, consent_id: UUID, *, now: datetime | None = None
) -> ConsentOut:
    """Art. 34/PIPL: revoke at once. Events that occurred from ``now`` on are refused."""
    now = now or clock.now()
    consent = await _own_consent(session, citizen_id, consent_id)
    if consent.revoked_at is not None:
        raise Conflict("consent.already_revoked", "This consent is already revoked.")
    consent.revoked_at = now
    await session.execute(
        update(LinkCode)
        .where(LinkCode.consent_id == consent.id, LinkCode.used_at.is_(None),
               LinkCode.expires_at > now)
        .values(expires_at=now)
    )
    await session.flush()
    scene_code = await session.scalar(select(Scene.code).where(Scene.id == consent.scene_id))
    return consent_out(consent, scene_code or "")


async def my_consents(session: AsyncSession, citizen_id: UUID) -> MyConsents:
    """Every consent the citizen ever gave, grouped by scene, newest first, with link state."""
    rows = (await session.execute(
        select(Consent, Scene)
        .join(Scene, Scene.id == Consent.scene_id)
        .where(Consent.citizen_id == citizen_id)
        .order_by(Scene.code, Consent.granted_at.desc())
    )).all()
    links = {
        link.scene_id: link
        for link in (await session.scalars(
            select(PartnerLink).where(PartnerLink.citizen_id == citizen_id))).all()
    }
    grouped: dict[UUID, SceneConsents] = {}
    for consent, scene in rows:
        entry = grouped.get(scene.id)
        if entry is None:
            link = links.get(scene.id)
            entry = grouped[scene.id] = SceneConsents(
                scene_code=scene.code, scene_name_zh=scene.name_zh, scene_name_en=scene.name_en,
                consenting=False, linked=link is not None,
                linked_at=link.linked_at if link else None, history=[],
            )
        entry.history.append(consent_out(consent, scene.code))
        entry.consenting = entry.consenting or consent.revoked_at is None
    return MyConsents(scenes=list(grouped.values()))


async def redeem_link_code(
    session: AsyncSession, scene_id: UUID, *, link_code: str, partner_user_ref: str,
    now: datetime | None = None,
) -> LinkStatusOut:
    """The partner of ``scene_id`` exchanges a citizen's link code for a link to its own
    user reference. Each code links once (the row lock makes a concurrent second try fail
    with ``consent.link_code_used``)."""
    now = now or clock.now()
    scene = await session.get(Scene, scene_id)
    if scene is None:
        raise SceneUnknown()
    if scene.status != "active":
        raise SceneNotActive(scene.status)
    code = await session.scalar(
        select(LinkCode).where(LinkCode.code_hash == _code_hash(link_code))
        .with_for_update().execution_options(populate_existing=True)
    )
    if code is None:
        raise LinkCodeUnknown()
    if code.scene_id != scene_id:
        raise LinkCodeWrongScene()
    if code.used_at is not None:
        raise LinkCodeUsed()
    if code.expires_at <= now:
        raise LinkCodeExpired()
    consent = await session.get(Consent, code.consent_id, populate_existing=True)
    if consent is None or consent.revoked_at is not None:
        raise Conflict("consent.revoked", "The citizen has revoked this consent.")
    link = await _link_citizen(session, scene_id, code.citizen_id, consent.id,
                               partner_user_ref, now)
    code.used_at = now
    await session.flush()
    return LinkStatusOut(partner_user_ref=link.partner_user_ref, linked=True, consenting=True,
                         linked_at=link.linked_at)


async def _link_citizen(
    session: AsyncSession, scene_id: UUID, citizen_id: UUID, consent_id: UUID, ref: str,
    now: datetime,
) -> PartnerLink:
    by_citizen = select(PartnerLink).where(PartnerLink.scene_id == scene_id,
                                           PartnerLink.citizen_id == citizen_id)
    existing = await session.scalar(by_citizen)
    if existing is None:
        link_id = await session.scalar(
            insert(PartnerLink)
            .values(id=uuid.uuid4(), scene_id=scene_id, citizen_id=citizen_id,
                    partner_user_ref=ref, consent_id=consent_id, linked_at=now)
            .on_conflict_do_nothing()
            .returning(PartnerLink.id)
        )
        if link_id is not None:
            created = await session.get(PartnerLink, link_id)
            assert created is not None
            return created
        existing = await session.scalar(by_citizen)
        if existing is None:
            raise Conflict("consent.partner_ref_taken",
                           "This partner user reference is linked to another citizen.")
    if existing.partner_user_ref != ref:
        raise Conflict("consent.already_linked",
                       "The citizen is already linked to another user of this scene.")
    return existing


async def link_status(
    session: AsyncSession, scene_id: UUID, partner_user_ref: str
) -> LinkStatusOut:
    """For the partner: is this user linked, and does the citizen consent right now?"""
    row = (await session.execute(
        text(
            "SELECT l.linked_at, EXISTS (SELECT 1 FROM consents c WHERE c.citizen_id = "
            "l.citizen_id AND c.scene_id = l.scene_id AND c.revoked_at IS NULL) AS consenting "
            "FROM partner_links l WHERE l.scene_id = :scene AND l.partner_user_ref = :ref"
        ),
        {"scene": scene_id, "ref": partner_user_ref},
    )).one_or_none()
    if row is None:
        return LinkStatusOut(partner_user_ref=partner_user_ref, linked=False, consenting=False,
                             linked_at=None)
    return LinkStatusOut(partner_user_ref=partner_user_ref, linked=True,
                         consenting=bool(row.consenting), linked_at=row.linked_at)
