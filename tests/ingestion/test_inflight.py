"""Issue 6, "nothing is acknowledged that was not stored": while one request's publish of an
event is under way, a concurrent request with the same event is told ``event.in_flight``
(retryable), never ``duplicate``; when the first publish fails, only the marks that still hold
its token go, and the retry is taken and credited exactly once. Real Redis, both real buses;
the first app's bus is the real bus wrapped so that its publish waits at a gate and then
fails."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager

from app.bus import BusUnavailable, Message
from app.runtime import Runtime
from tests.ingestion.conftest import ONE_PATH, Partner, credited, drain, make_partner


class GatedFailingBus:
    """The real bus, except that its first ``publish`` waits for ``release`` and then raises
    :class:`BusUnavailable` without publishing (a broker that died mid-request)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not self.failed:
            self.failed = True
            self.entered.set()
            await self.release.wait()
            raise BusUnavailable("the broker went away")
        await self.inner.publish(topic, messages)


@asynccontextmanager
async def _client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    from app.main import create_app

    application = create_app(runtime.settings, runtime=runtime)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def _gated(runtime: Runtime, **settings: Any) -> tuple[Runtime, GatedFailingBus]:
    """A second app instance's runtime: same database and Redis prefix, the gated bus."""
    bus = GatedFailingBus(runtime.bus)
    s = runtime.settings.model_copy(update=settings)
    return dataclasses.replace(runtime, bus=bus, settings=s), bus


def _statuses(r: httpx.Response) -> list[tuple[str, str | None]]:
    assert r.status_code == 200, r.text
    return [(e["status"], e.get("code")) for e in r.json()["results"]]


async def _post_one(p: Partner, client: httpx.AsyncClient, event: dict[str, Any]) -> Any:
    body = orjson.dumps(event)
    return await client.post(ONE_PATH, content=body, headers=p.signed(body, path=ONE_PATH))


async def test_same_event_in_flight_is_never_answered_duplicate(
    bus_runtime: Runtime, bus_client: httpx.AsyncClient
) -> None:
    rt = bus_runtime
    p = await make_partner(rt, citizens=2)
    ref = next(iter(p.citizens))
    events = [p.event(ref) for _ in range(3)]
    gated_rt, gate = _gated(rt)
    async with _client(gated_rt) as first_client:
        first = asyncio.create_task(p.post(first_client, events))
        await asyncio.wait_for(gate.entered.wait(), 10)
        # the first request holds the marks and waits for its ack: the same events now,
        # concurrently from another app instance, are in flight — not duplicates
        extra = p.event(ref)
        second, single = await asyncio.gather(
            p.post(bus_client, [*events, extra]), _post_one(p, bus_client, events[0]))
        assert _statuses(second) == [("rejected", "event.in_flight")] * 3 + [("accepted", None)]
        assert second.json()["duplicates"] == 0
        assert (single.status_code, single.json()["code"]) == (409, "event.in_flight")
        assert single.headers["retry-after"] == "1"
        gate.release.set()
        r = await first
    assert (r.status_code, r.json()["code"]) == (503, "bus.unavailable")
    # the failed request freed its marks: the retry is taken, a second retry is duplicate
    retry = await p.post(bus_client, events)
    assert _statuses(retry) == [("accepted", None)] * 3
    again = await p.post(bus_client, [*events, extra])
    assert _statuses(again) == [("duplicate", None)] * 4
    await drain(rt)
    assert await credited(rt, p.scene_id) == {e["event_id"]: 1 for e in [*events, extra]}


async def test_failed_publish_deletes_only_its_own_marks(
    bus_runtime: Runtime, bus_client: httpx.AsyncClient
) -> None:
    """The first request's token key (pending TTL 1 s) expires while its publish hangs;
    another request then takes the events over and stores them. The first request's failure
    must not free those marks (they hold the other request's token now), so a later retry is
    ``duplicate`` and nothing is credited twice."""
    rt = bus_runtime
    p = await make_partner(rt, citizens=1)
    ref = next(iter(p.citizens))
    events = [p.event(ref) for _ in range(2)]
    gated_rt, gate = _gated(rt, ingest_pending_ttl_s=1, ingest_publish_timeout_s=30.0)
    async with _client(gated_rt) as first_client:
        first = asyncio.create_task(p.post(first_client, events))
        await asyncio.wait_for(gate.entered.wait(), 10)
        await asyncio.sleep(1.2)  # the pending marks expired
        second = await p.post(bus_client, events)
        assert _statuses(second) == [("accepted", None)] * 2
        gate.release.set()
        r = await first
    assert (r.status_code, r.json()["code"]) == (503, "bus.unavailable")
    retry = await p.post(bus_client, events)
    assert _statuses(retry) == [("duplicate", None)] * 2
    await drain(rt)
    assert await credited(rt, p.scene_id) == {e["event_id"]: 1 for e in events}


async def test_stored_marks_carry_the_long_ttl(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """After the durable ack the request's token is ``stored`` with the claim window's TTL
    (30 days + margin), not the short pending TTL, and so is the bucket of the mark that
    holds it."""
    from ingestion.service import dedupe_mark, token_key

    p = await make_partner(runtime, citizens=1)
    ev = p.event(next(iter(p.citizens)))
    assert _statuses(await p.post(client, [ev])) == [("accepted", None)]
    bucket, field = dedupe_mark(runtime, p.scene_id, ev["event_id"],
                                dt.datetime.fromisoformat(ev["occurred_at"]))
    token = await runtime.redis.hget(bucket, field)
    assert token is not None
    tok = token_key(runtime, p.scene_id, token.decode() if isinstance(token, bytes) else token)
    assert await runtime.redis.get(tok) in (b"s", "s")
    assert await runtime.redis.ttl(tok) > 30 * 86400
    assert await runtime.redis.ttl(bucket) > 30 * 86400
