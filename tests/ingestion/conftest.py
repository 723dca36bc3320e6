"""Factories for ingestion tests: a scene with a signed partner, linked consenting citizens,
published rules; helpers to post signed batches and to run the worker until the bus is empty.

Everything goes through the owning domains' service functions; the bus is real (the
PostgreSQL queue by default, Kafka on Tansu for the ``kafka`` variants)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from app import clock
from app.auth.clients import get_client
from app.auth.signing import sign_headers
from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from app.settings import get_settings
from ingestion import worker
from ingestion.service import events_topic, worker_group
from tests.conftest import KAFKA_BOOTSTRAP

BATCH_PATH = "/v1/ingest/events:batch"
ONE_PATH = "/v1/ingest/events"
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
ACTOR = "test:ingestion"


@dataclass
class Partner:
    """A scene, its partner's signing key and token, and its linked citizens."""

    scene_id: uuid.UUID
    scene_code: str
    client_pk: uuid.UUID
    key: Ed25519PrivateKey
    token: str
    behaviour: str
    unit: str
    citizens: dict[str, uuid.UUID] = field(default_factory=dict)  # partner_user_ref → citizen
    consents: dict[str, uuid.UUID] = field(default_factory=dict)
    linked_at: dt.datetime = PAST

    def event(self, ref: str, *, event_id: str | None = None, quantity: str | int = "2.5",
              at: dt.datetime | None = None, **extra: Any) -> dict[str, Any]:
        body = {
            "event_id": event_id or "e-" + secrets.token_hex(8),
            "partner_user_ref": ref,
            "behaviour": self.behaviour,
            "quantity": quantity,
            "unit": self.unit,
            "occurred_at": (at or clock.now() - dt.timedelta(minutes=5)).isoformat(),
        }
        body.update(extra)
        return body

    def signed(self, body: bytes, path: str = BATCH_PATH, **kw: Any) -> dict[str, str]:
        headers = sign_headers(self.key, "POST", path, body, **kw)
        headers["Authorization"] = f"Bearer {self.token}"
        headers["Content-Type"] = "application/json"
        return headers

    async def post(self, client: httpx.AsyncClient, events: list[dict[str, Any]],
                   **kw: Any) -> httpx.Response:
        body = orjson.dumps({"events": events})
        return await client.post(BATCH_PATH, content=body, headers=self.signed(body, **kw))


_conversion_ready = False


async def _ensure_conversion(session: Any) -> None:
    """One global conversion rule (10 g per point) in force since 2020 (Art. 31)."""
    global _conversion_ready
    if _conversion_ready:
        return
    from scenes import rules
    from scenes.schemas import ConversionRuleDraft

    exists = await session.scalar(text(
        "SELECT count(*) FROM conversion_rules WHERE status = 'published'"))
    if not exists:
        draft = await rules.draft_conversion_rule(
            session, ConversionRuleDraft(grams_per_point=10, valid_from=PAST), actor=ACTOR)
        await rules.publish_conversion_rule(session, draft.id, actor=ACTOR)
    _conversion_ready = True


async def make_partner(
    runtime: Runtime, *, citizens: int = 3, claim_window_days: int = 30,
    behaviour: str = "ride_km", unit: str = "km", grams_per_unit: str = "100",
    max_quantity: str | None = "1000", cap_event: int | None = None,
    cap_day: int | None = None, cap_year: int | None = None,
    rule_from: dt.datetime = PAST,
) -> Partner:
    """A scene with one behaviour and a published rule, a partner client with an Ed25519 key,
    and ``citizens`` citizens who consented (10 days ago) and were linked by the partner."""
    from app.auth.citizens import get_or_create_citizen
    from scenes import consent as consents
    from scenes import rules
    from scenes import service as scenes
    from scenes.schemas import BehaviourIn, ConsentIn, ReductionRuleDraft, SceneCreate

    code = "t-" + secrets.token_hex(6)
    key = Ed25519PrivateKey.generate()
    granted_at = clock.now() - dt.timedelta(days=10)
    async with runtime.db.transaction() as s:
        await _ensure_conversion(s)
        scene = await scenes.register_scene(s, SceneCreate(
            code=code, name_zh="测试场景", name_en="Test scene", category="bus",
            partner_name="测试伙伴", agreement_ref="T-1", agreement_signed_on=dt.date(2024, 1, 1),
            agreement_starts_on=dt.date(2024, 1, 1), claim_window_days=claim_window_days,
        ), actor=ACTOR)
        await scenes.add_behaviour(s, scene.id, BehaviourIn(
            code=behaviour, name_zh="出行", name_en="Ride"), actor=ACTOR)
        draft = await rules.draft_reduction_rule(s, scene.id, ReductionRuleDraft(
            behaviour=behaviour, unit=unit, grams_per_unit=Decimal(grams_per_unit),
            max_quantity_per_event=None if max_quantity is None else Decimal(max_quantity),
            cap_grams_per_event=cap_event, cap_grams_per_day=cap_day,
            cap_grams_per_year=cap_year, valid_from=rule_from,
        ), actor=ACTOR)
        await rules.publish_reduction_rule(s, draft.id, actor=ACTOR)
        client_id, _secret = await scenes.issue_credentials(s, scene.id, actor=ACTOR)
        public = key.public_key().public_bytes_raw()
        await scenes.add_key(s, scene.id, base64.b64encode(public).decode(), actor=ACTOR)
        client = await get_client(s, client_id)
        partner = Partner(
            scene_id=scene.id, scene_code=code, client_pk=client.id, key=key,
            token=issue_access_token("partner", client.id, scope_id=scene.id),
            behaviour=behaviour, unit=unit, linked_at=granted_at,
        )
        for i in range(citizens):
            ref = f"u{i}-{secrets.token_hex(3)}"
            phone = "139" + f"{secrets.randbelow(10**8):08d}"
            citizen = await get_or_create_citizen(s, phone)
            granted, link_code = await consents.grant_consent(
                s, citizen, ConsentIn(scene_code=code, privacy_notice_version="2024-09"),
                now=granted_at)
            await consents.redeem_link_code(s, scene.id, link_code=link_code.code,
                                            partner_user_ref=ref, now=granted_at)
            partner.citizens[ref] = citizen
            partner.consents[ref] = granted.id
    return partner


@pytest.fixture
async def partner(runtime: Runtime) -> Partner:
    return await make_partner(runtime)


# ----------------------------------------------------------------------------- the bus


def kafka_listening() -> bool:
    host, _, port = KAFKA_BOOTSTRAP.partition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


async def kafka_runtime(runtime: Runtime) -> Runtime:
    """The run's runtime, but with the Kafka adapter (Tansu) as its bus."""
    from app.bus.kafka import KafkaBus

    settings = get_settings().model_copy(update={"kafka_bootstrap": KAFKA_BOOTSTRAP})
    bus = KafkaBus(settings, topics=[events_topic(settings)])
    await bus.start()
    return dataclasses.replace(runtime, settings=settings, bus=bus)


@pytest.fixture(params=["pgqueue", "kafka"])
async def bus_runtime(request: pytest.FixtureRequest, runtime: Runtime) -> AsyncIterator[Runtime]:
    """The runtime on each bus adapter in turn."""
    if request.param == "pgqueue":
        yield runtime
        return
    assert kafka_listening(), f"Kafka (Tansu) must listen at {KAFKA_BOOTSTRAP}"
    rt = await kafka_runtime(runtime)
    try:
        yield rt
    finally:
        await rt.bus.stop()


@pytest.fixture
async def bus_client(bus_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app wired to ``bus_runtime``."""
    from app.main import create_app

    application = create_app(bus_runtime.settings, runtime=bus_runtime)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def drain(runtime: Runtime, *, idle_s: float = 0.3, max_messages: int = 400) -> None:
    """Run one consumer of the worker group until no message came for ``idle_s`` (the first
    wait is longer on Kafka: joining the group takes a few seconds on Tansu)."""
    import asyncio

    topic = events_topic(runtime.settings)
    consumer = runtime.bus.consumer(topic, worker_group(runtime.settings))
    await consumer.start()
    stop = asyncio.Event()
    wait = 15.0 if runtime.bus.name == "kafka" else idle_s
    try:
        while True:
            batch = await consumer.get_batch(max_messages, wait)
            wait = idle_s
            if batch is None or not batch.messages:
                return
            await worker.handle_batch(runtime, consumer, topic, batch, stop)
    finally:
        await consumer.stop()


async def credited(runtime: Runtime, scene_id: uuid.UUID) -> dict[str, int]:
    """event_id → how many ledger credit entries the scene has for it."""
    async with runtime.db.session() as s:
        rows = (await s.execute(text(
            "SELECT event_id, count(*) FROM points_entries WHERE scene_id = :s "
            "AND kind = 'credit' GROUP BY event_id"), {"s": scene_id})).all()
    return {r[0]: r[1] for r in rows}


async def balance(runtime: Runtime, citizen_id: uuid.UUID) -> int:
    from points import service as points

    async with runtime.db.session() as s:
        view = await points.balance(s, citizen_id)
    return view.available


async def published_count(runtime: Runtime) -> int:
    """Messages waiting on the PostgreSQL queue (the default test bus)."""
    async with runtime.db.session() as s:
        return int(await s.scalar(text("SELECT count(*) FROM bus_messages")) or 0)
