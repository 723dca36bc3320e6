"""Factories of the scenes tests: admins, citizens, scenes with behaviours and rules, signed
partners. Everything runs against the run's real PostgreSQL and Redis."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text

from app import clock
from app.auth import citizens, clients
from app.auth.signing import sign_headers
from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from scenes import consent, rules, service
from scenes.schemas import (
    BehaviourIn,
    ConsentIn,
    ConversionRuleDraft,
    ReductionRuleDraft,
    ReductionRuleOut,
    SceneCreate,
    SceneOut,
)

ADMIN_ID = uuid.uuid4()
ACTOR = f"admin:{ADMIN_ID}"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def admin_headers(*roles: str) -> dict[str, str]:
    token = issue_access_token("admin", ADMIN_ID, roles=frozenset(roles or {"operator_admin"}))
    return {"Authorization": f"Bearer {token}"}


def citizen_headers(citizen_id: UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_access_token('citizen', citizen_id)}"}


def new_code(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def new_phone() -> str:
    return f"137{secrets.randbelow(10**8):08d}"


async def new_citizen(runtime: Runtime) -> UUID:
    async with runtime.db.transaction() as s:
        return await citizens.get_or_create_citizen(s, new_phone())


async def count(runtime: Runtime, table: str, where: str = "TRUE", **params: Any) -> int:
    async with runtime.db.session() as s:
        return int((await s.execute(
            text(f"SELECT count(*) FROM {table} WHERE {where}"), params)).scalar_one())


def scene_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": new_code(), "name_zh": "测试公交", "name_en": "Test buses", "category": "bus",
        "partner_name": "测试公交集团", "agreement_ref": "T-001",
        "agreement_signed_on": "2024-08-20", "agreement_starts_on": "2024-09-01",
        "agreement_ends_on": "2027-08-31", "claim_window_days": 30,
    }
    body.update(extra)
    return body


async def make_scene(
    runtime: Runtime, *, behaviours: tuple[str, ...] = ("ride",), **extra: Any
) -> SceneOut:
    async with runtime.db.transaction() as s:
        scene = await service.register_scene(s, SceneCreate(**scene_body(**extra)), actor=ACTOR)
        for code in behaviours:
            await service.add_behaviour(
                s, scene.id, BehaviourIn(code=code, name_zh="行为", name_en="Behaviour"),
                actor=ACTOR)
    return scene


async def publish_rule(
    runtime: Runtime, scene_id: UUID, *, behaviour: str = "ride", factor: str = "120",
    valid_from: datetime = T0, valid_to: datetime | None = None, unit: str = "trip",
    allow_gap: bool = False, now: datetime | None = None, **caps: Any,
) -> ReductionRuleOut:
    async with runtime.db.transaction() as s:
        draft = await rules.draft_reduction_rule(
            s, scene_id,
            ReductionRuleDraft(behaviour=behaviour, unit=unit, grams_per_unit=Decimal(factor),
                               valid_from=valid_from, valid_to=valid_to, **caps),
            actor=ACTOR)
        return await rules.publish_reduction_rule(s, draft.id, allow_gap=allow_gap,
                                                  actor=ACTOR, now=now or valid_from)


async def grant(
    runtime: Runtime, citizen_id: UUID, scene_code: str, *, now: datetime | None = None
) -> tuple[Any, consent.IssuedCode]:
    async with runtime.db.transaction() as s:
        return await consent.grant_consent(
            s, citizen_id, ConsentIn(scene_code=scene_code, privacy_notice_version="2024-09"),
            now=now)


async def free_conversion_start(runtime: Runtime) -> datetime:
    """A start for test conversion windows after every published one, with a version kept in
    force now: the conversion series is global to the run's database and shared with other
    packages' tests, which expect one to be in force, so tests must not depend on order."""
    await ensure_conversion_now(runtime)
    async with runtime.db.session() as s:
        last = await s.scalar(text(
            "SELECT max(coalesce(valid_to, valid_from)) FROM conversion_rules "
            "WHERE status = 'published'"))
    after = max(last or T0, clock.now())
    return datetime(after.year + 2, 1, 1, tzinfo=UTC)


async def ensure_conversion_now(runtime: Runtime) -> None:
    """Publish the run's first conversion version (10 g per point, open since 2020)."""
    async with runtime.db.transaction() as s:
        published = await s.scalar(text(
            "SELECT count(*) FROM conversion_rules WHERE status = 'published'"))
        if not published:
            draft = await rules.draft_conversion_rule(
                s, ConversionRuleDraft(grams_per_point=10, valid_from=datetime(2020, 1, 1,
                                                                                tzinfo=UTC)),
                actor=ACTOR)
            await rules.publish_conversion_rule(s, draft.id, actor=ACTOR)


@dataclass
class Partner:
    """A scene's partner: OAuth client, Ed25519 key and a signed-request helper."""

    scene_id: UUID
    client_id: str
    client_pk: UUID
    key: Ed25519PrivateKey
    token: str = field(repr=False)

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        h = sign_headers(self.key, method, path, body)
        h["Authorization"] = f"Bearer {self.token}"
        h["Content-Type"] = "application/json"
        return h

    async def post(self, client: httpx.AsyncClient, path: str, payload: Any) -> httpx.Response:
        body = orjson.dumps(payload)
        return await client.post(path, content=body, headers=self.headers("POST", path, body))

    async def get(self, client: httpx.AsyncClient, path: str) -> httpx.Response:
        return await client.get(path, headers=self.headers("GET", path))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    import base64

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def make_partner(runtime: Runtime, scene_id: UUID) -> Partner:
    key = Ed25519PrivateKey.generate()
    async with runtime.db.transaction() as s:
        client_id, _secret = await service.issue_credentials(s, scene_id, actor=ACTOR)
        await service.add_key(s, scene_id, public_key_b64(key), actor=ACTOR)
        view = await clients.get_client(s, client_id)
    token = issue_access_token("partner", view.id, scope_id=scene_id)
    return Partner(scene_id, client_id, view.id, key, token)


__all__ = ["date", "timedelta"]
