"""Refused requests take nothing: bad signatures, stale or reused nonces, foreign tokens,
suspended scenes, malformed bodies, a bus that is down."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app import clock
from app.runtime import Runtime
from tests.ingestion.conftest import (
    BATCH_PATH,
    KAFKA_BOOTSTRAP,
    Partner,
    balance,
    drain,
    make_partner,
    published_count,
)


async def _marks(runtime: Runtime, partner: Partner) -> int:
    """The scene's dedupe marks: the fields of its day buckets."""
    pattern = runtime.key("ingest", "seen", "{" + str(partner.scene_id) + "}", "*")
    return sum([await runtime.redis.hlen(k) async for k in runtime.redis.scan_iter(match=pattern)])


async def _refused(runtime: Runtime, partner: Partner, r: httpx.Response, status: int,
                   code: str, before: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code
    assert await published_count(runtime) == before
    assert await _marks(runtime, partner) == 0


@pytest.fixture
async def signed_partner(runtime: Runtime) -> Partner:
    return await make_partner(runtime, citizens=1)


async def test_forged_signature_is_refused(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner
) -> None:
    p = signed_partner
    before = await published_count(runtime)
    body = orjson.dumps({"events": [p.event(next(iter(p.citizens)))]})
    forged = dataclasses.replace(p, key=Ed25519PrivateKey.generate())
    r = await client.post(BATCH_PATH, content=body, headers=forged.signed(body))
    await _refused(runtime, p, r, 401, "auth.signature_invalid", before)
    # a valid signature over another body does not cover this one
    headers = p.signed(b'{"events": []}')
    r = await client.post(BATCH_PATH, content=body, headers=headers)
    await _refused(runtime, p, r, 401, "auth.signature_invalid", before)


async def test_stale_timestamp_and_reused_nonce_are_refused(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner
) -> None:
    p = signed_partner
    ref = next(iter(p.citizens))
    before = await published_count(runtime)
    body = orjson.dumps({"events": [p.event(ref)]})
    stale = p.signed(body, timestamp=int(clock.now().timestamp()) - 3600)
    r = await client.post(BATCH_PATH, content=body, headers=stale)
    await _refused(runtime, p, r, 401, "auth.timestamp_out_of_window", before)

    headers = p.signed(body, nonce="n-" + "7" * 30)
    assert (await client.post(BATCH_PATH, content=body, headers=headers)).status_code == 200
    after_first = await published_count(runtime)
    other = orjson.dumps({"events": [p.event(ref)]})
    replay = p.signed(other, nonce="n-" + "7" * 30)
    r = await client.post(BATCH_PATH, content=other, headers=replay)
    assert (r.status_code, r.json()["code"]) == (401, "auth.nonce_reused")
    assert await published_count(runtime) == after_first


async def test_token_of_another_partner_is_refused(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner
) -> None:
    p = signed_partner
    other = await make_partner(runtime, citizens=0)
    before = await published_count(runtime)
    body = orjson.dumps({"events": [p.event(next(iter(p.citizens)))]})
    # the other partner's token, this partner's signature: the keys do not match
    mixed = dataclasses.replace(p, token=other.token)
    r = await client.post(BATCH_PATH, content=body, headers=mixed.signed(body))
    await _refused(runtime, p, r, 401, "auth.signature_invalid", before)
    # a citizen's token is no partner token
    from app.auth.tokens import issue_access_token

    citizen = dataclasses.replace(
        p, token=issue_access_token("citizen", next(iter(p.citizens.values()))))
    r = await client.post(BATCH_PATH, content=body, headers=citizen.signed(body))
    await _refused(runtime, p, r, 403, "auth.wrong_kind", before)


async def test_art32_suspended_scene_is_refused(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner
) -> None:
    """Art. 32: a suspended scene's events are refused at once; nothing is published."""
    from scenes import service as scenes
    from scenes.schemas import ScenePatch

    p = signed_partner
    async with runtime.db.transaction() as s:
        await scenes.update_scene(s, p.scene_id, ScenePatch(status="suspended"), actor="test")
    before = await published_count(runtime)
    r = await p.post(client, [p.event(next(iter(p.citizens)))])
    await _refused(runtime, p, r, 409, "scene.not_active", before)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"events": [', 422, "request.malformed_json"),
    (b"not json at all", 422, "request.malformed_json"),
    (b'{"events": {}}', 422, "request.invalid"),
    (b'{"events": []}', 422, "ingest.batch_size"),
    (b'{"evnts": []}', 422, "request.invalid"),
])
async def test_malformed_bodies_are_one_clear_problem(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner, body: bytes,
    status: int, code: str,
) -> None:
    p = signed_partner
    before = await published_count(runtime)
    r = await client.post(BATCH_PATH, content=body, headers=p.signed(body))
    await _refused(runtime, p, r, status, code, before)
    assert r.json()["detail"]


@pytest.mark.parametrize(("field", "value"), [
    ("quantity", True), ("quantity", [1]), ("event_id", 7), ("occurred_at", "yesterday"),
    ("occurred_at", "2025-01-01T08:00:00"), ("event_id", ""), ("extra", 1),
])
async def test_wrong_types_refuse_the_whole_batch(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner, field: str,
    value: Any,
) -> None:
    p = signed_partner
    ref = next(iter(p.citizens))
    bad = p.event(ref)
    bad[field] = value
    before = await published_count(runtime)
    r = await p.post(client, [p.event(ref), bad])
    await _refused(runtime, p, r, 422, "request.invalid", before)
    assert "events[1]" in r.json()["detail"]


async def test_1001_events_and_2_mib_bodies_are_refused(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner
) -> None:
    p = signed_partner
    ref = next(iter(p.citizens))
    before = await published_count(runtime)
    r = await p.post(client, [p.event(ref) for _ in range(1001)])
    await _refused(runtime, p, r, 422, "ingest.batch_size", before)
    assert r.json()["max_events"] == 1000
    huge = p.event(ref, attributes={"pad": "x" * (2 * 1024 * 1024)})
    r = await p.post(client, [huge])
    await _refused(runtime, p, r, 413, "request.too_large", before)


async def test_rate_limit_per_partner(
    runtime: Runtime, client: httpx.AsyncClient, signed_partner: Partner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime.settings, "ingest_partner_rate_limit", "2/minute")
    p = signed_partner
    ref = next(iter(p.citizens))
    for _ in range(2):
        assert (await p.post(client, [p.event(ref)])).status_code == 200
    before = await published_count(runtime)
    r = await p.post(client, [p.event(ref)])
    assert (r.status_code, r.json()["code"]) == (429, "ingest.rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert await published_count(runtime) == before


async def _down_runtime(runtime: Runtime, kind: str) -> Runtime:
    """The run's runtime with its bus pointed at an endpoint where nothing listens."""
    if kind == "pgqueue":
        from app.bus.pgqueue import PgQueueBus
        from app.db import Database

        return dataclasses.replace(runtime, bus=PgQueueBus(
            Database("postgresql://postgres@127.0.0.1:9/nowhere"), timeout_s=2.0))
    from app.bus.kafka import KafkaBus

    settings = runtime.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    return dataclasses.replace(runtime, settings=settings,
                               bus=KafkaBus(settings, timeout_s=2.0))


@pytest.mark.parametrize("kind", ["pgqueue", "kafka"])
async def test_bus_down_answers_503_quickly_and_keeps_nothing(
    runtime: Runtime, client: httpx.AsyncClient, kind: str
) -> None:
    """Nothing is acknowledged that was not stored; the retry is not taken for a duplicate."""
    from app.main import create_app

    assert KAFKA_BOOTSTRAP
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    down = await _down_runtime(runtime, kind)
    events = [p.event(ref) for _ in range(3)]
    before = await published_count(runtime)
    application = create_app(down.settings, runtime=down)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            started = time.perf_counter()
            r = await p.post(c, events)
            elapsed = time.perf_counter() - started
    assert elapsed < 3.0
    await _refused(runtime, p, r, 503, "bus.unavailable", before)
    assert r.headers["retry-after"] == "1"
    retry = await p.post(client, events)  # the bus is back
    assert retry.json()["accepted"] == 3
    await drain(runtime)
    assert await balance(runtime, citizen) == 75
