"""The dedupe marks (fields of a hash per scene and UTC day) hold their request's token; the
token's key says pending (``p``) or stored (``s``), and a missing token key frees every mark
that holds it (ingestion/service.py, module docstring). Real Redis and real buses: a request
whose token key vanished (an API process killed after its claim) has its events taken by the
next request and credited once; a stored request's events answer ``duplicate`` for as long
as its marks live; a failed publish frees its events at once; concurrent requests for the
same events take each one once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager

from app import clock
from app.bus import BusUnavailable, Message
from app.runtime import Runtime
from ingestion import service
from ingestion.schemas import RawBusEvent
from tests.ingestion.conftest import ONE_PATH, credited, drain, make_partner

LONG_TTL_S = 32 * 86400


class FailingBus:
    """The real bus, except that ``publish`` raises :class:`BusUnavailable` without
    publishing (a broker that refuses every write)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        raise BusUnavailable("the broker refuses writes")


@asynccontextmanager
async def _client(runtime: Runtime, bus: Any = None, **settings: Any
                  ) -> AsyncIterator[httpx.AsyncClient]:
    """Another app instance on the same database and Redis prefix (its own settings, bus)."""
    from app.main import create_app

    rt = dataclasses.replace(runtime, bus=bus or runtime.bus,
                             settings=runtime.settings.model_copy(update=settings))
    application = create_app(rt.settings, runtime=rt)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _statuses(r: httpx.Response) -> list[tuple[str, str | None]]:
    assert r.status_code == 200, r.text
    return [(e["status"], e.get("code")) for e in r.json()["results"]]


def _mark(rt: Runtime, scene_id: uuid.UUID, event: dict[str, Any]) -> tuple[str, str]:
    """An event's mark: its day's bucket and the field there."""
    return service.dedupe_mark(rt, scene_id, event["event_id"],
                               dt.datetime.fromisoformat(event["occurred_at"]))


async def _claim_and_die(rt: Runtime, scene_id: uuid.UUID, events: list[dict[str, Any]], *,
                         pending_ttl_s: int = 30) -> str:
    """What an API process does before it publishes (the real claim script), after which it
    is killed: its marks hold its token, its token key says pending, nothing else follows."""
    token = service.TOKEN_PREFIX + secrets.token_urlsafe(12)
    tokens = service.token_key(rt, scene_id, "")
    now = clock.now()
    candidates = [RawBusEvent(scene_id.bytes, e["event_id"], bytes(16), e["behaviour"], 1,
                              dt.datetime.fromisoformat(e["occurred_at"]), now) for e in events]
    marks = service._marks(rt, scene_id, candidates, LONG_TTL_S)
    flags = await service._claim(rt, tokens + token, tokens, token, marks, pending_ttl_s)
    assert flags == "1" * len(events)
    assert _text(await rt.redis.get(tokens + token)) == "p"
    return token


async def _holders(rt: Runtime, scene_id: uuid.UUID, events: list[dict[str, Any]]
                   ) -> list[str | None]:
    """The token each event's mark holds."""
    return [_text(await rt.redis.hget(*_mark(rt, scene_id, e))) for e in events]


async def _token_keys(rt: Runtime, scene_id: uuid.UUID) -> list[str]:
    pattern = service.token_key(rt, scene_id, "*")
    return [k async for k in rt.redis.scan_iter(match=pattern)]


async def test_a_dead_requests_events_are_taken_over_once_its_token_key_is_gone(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    events = [p.event(ref) for _ in range(3)]
    ids = [e["event_id"] for e in events]
    dead = await _claim_and_die(runtime, p.scene_id, events)
    # while its token key says pending, the events are another request's: in flight
    assert _statuses(await p.post(client, events)) == [("rejected", "event.in_flight")] * 3
    assert await _holders(runtime, p.scene_id, events) == [dead] * 3

    await runtime.redis.delete(service.token_key(runtime, p.scene_id, dead))
    taken = await p.post(client, events)
    assert _statuses(taken) == [("accepted", None)] * 3
    holders = await _holders(runtime, p.scene_id, events)
    assert len(set(holders)) == 1 and holders[0] != dead and holders[0] is not None
    assert _text(await runtime.redis.get(
        service.token_key(runtime, p.scene_id, holders[0]))) == "s"
    # the marks the new request took over live in a bucket with the long TTL
    for e in events:
        assert await runtime.redis.ttl(_mark(runtime, p.scene_id, e)[0]) > 30 * 86400
    assert _statuses(await p.post(client, events)) == [("duplicate", None)] * 3
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {e: 1 for e in ids}


async def test_a_dead_requests_events_free_when_its_pending_ttl_lapses_and_are_taken_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """The token key's short TTL lapses (the process never came back); then eight concurrent
    requests from two app instances race for the events: each event is taken by exactly one
    of them, the others answer it duplicate or in flight, and it is credited once."""
    p = await make_partner(runtime, citizens=2)
    refs = list(p.citizens)
    events = [p.event(refs[i % 2]) for i in range(10)]
    ids = [e["event_id"] for e in events]
    dead = await _claim_and_die(runtime, p.scene_id, events, pending_ttl_s=1)
    assert _statuses(await p.post(client, events[:1])) == [("rejected", "event.in_flight")]
    await asyncio.sleep(1.3)
    assert await runtime.redis.exists(service.token_key(runtime, p.scene_id, dead)) == 0
    assert await _holders(runtime, p.scene_id, events) == [dead] * 10  # the marks outlive it

    async with _client(runtime) as other:
        answers = await asyncio.gather(
            *(p.post(client if i % 2 else other, events) for i in range(8)))
    taken: dict[str, int] = dict.fromkeys(ids, 0)
    for r in answers:
        for e, (status, code) in zip(ids, _statuses(r), strict=True):
            assert (status, code) in {("accepted", None), ("duplicate", None),
                                      ("rejected", "event.in_flight")}
            taken[e] += status == "accepted"
    assert taken == dict.fromkeys(ids, 1)
    assert _statuses(await p.post(client, events)) == [("duplicate", None)] * 10
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == dict.fromkeys(ids, 1)


async def test_one_batch_judges_every_mark_by_its_token(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A dead token's marks are taken, a pending token's are in flight, a stored token's are
    duplicates, an event repeated inside the batch is a duplicate of itself — all in the same
    script call."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    dead = [p.event(ref) for _ in range(2)]
    live = [p.event(ref) for _ in range(2)]
    stored = [p.event(ref) for _ in range(2)]
    fresh = p.event(ref)
    assert _statuses(await p.post(client, stored)) == [("accepted", None)] * 2
    dead_token = await _claim_and_die(runtime, p.scene_id, dead)
    await runtime.redis.delete(service.token_key(runtime, p.scene_id, dead_token))
    await _claim_and_die(runtime, p.scene_id, live)

    r = await p.post(client, [dead[0], live[0], stored[0], fresh, fresh,
                              dead[1], live[1], stored[1]])
    assert _statuses(r) == [
        ("accepted", None), ("rejected", "event.in_flight"), ("duplicate", None),
        ("accepted", None), ("duplicate", None),
        ("accepted", None), ("rejected", "event.in_flight"), ("duplicate", None),
    ]
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {
        e["event_id"]: 1 for e in [*dead, *stored, fresh]}


async def test_a_stored_request_answers_duplicate_as_long_as_its_marks_live(
    runtime: Runtime
) -> None:
    """Stored does not hang on the short pending TTL: past it (1 s here) the events are still
    duplicates, on both endpoints; the token key outlives every mark that holds it; batches
    that claim nothing leave no token key behind."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    events = [p.event(ref) for _ in range(3)]
    ids = [e["event_id"] for e in events]
    async with _client(runtime, ingest_pending_ttl_s=1) as client:
        assert _statuses(await p.post(client, events)) == [("accepted", None)] * 3
        await asyncio.sleep(1.3)
        for _ in range(3):
            assert _statuses(await p.post(client, events)) == [("duplicate", None)] * 3
        body = orjson.dumps(events[1])
        one = await client.post(ONE_PATH, content=body, headers=p.signed(body, path=ONE_PATH))
        assert (one.status_code, one.json()["status"]) == (200, "duplicate")

    toks = await _token_keys(runtime, p.scene_id)
    assert len(toks) == 1
    holders = await _holders(runtime, p.scene_id, events)
    assert holders == [holders[0]] * 3
    assert service.token_key(runtime, p.scene_id, holders[0] or "") == _text(toks[0])
    assert _text(await runtime.redis.get(toks[0])) == "s"
    tok_ttl = await runtime.redis.ttl(toks[0])
    assert tok_ttl > 30 * 86400
    for e in events:
        assert 30 * 86400 < await runtime.redis.ttl(
            _mark(runtime, p.scene_id, e)[0]) <= tok_ttl
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == dict.fromkeys(ids, 1)


async def test_a_failed_publish_frees_its_events_at_once(
    bus_runtime: Runtime, bus_client: httpx.AsyncClient
) -> None:
    """The pending TTL is long (300 s), so only the release can free the events: the retry
    right after the 503 is taken, and the failed request left neither token key nor marks."""
    rt = bus_runtime
    p = await make_partner(rt, citizens=1)
    ref = next(iter(p.citizens))
    midnight = _midnight()  # over two UTC days: the marks in every bucket go
    events = [p.event(ref, at=midnight - dt.timedelta(hours=h)) for h in (30, 6, 40)]
    ids = [e["event_id"] for e in events]
    async with _client(rt, bus=FailingBus(rt.bus), ingest_pending_ttl_s=300) as down:
        r = await p.post(down, events)
    assert (r.status_code, r.json()["code"]) == (503, "bus.unavailable")
    assert await _token_keys(rt, p.scene_id) == []
    assert await _holders(rt, p.scene_id, events) == [None] * 3

    assert _statuses(await p.post(bus_client, events)) == [("accepted", None)] * 3
    assert _statuses(await p.post(bus_client, events)) == [("duplicate", None)] * 3
    await drain(rt)
    assert await credited(rt, p.scene_id) == dict.fromkeys(ids, 1)


async def test_a_failed_publish_keeps_the_stored_events_of_its_batch(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A failing request whose batch also holds events stored by an earlier request frees
    only what it claimed: the stored ones stay duplicates."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    old = [p.event(ref) for _ in range(2)]
    new = [p.event(ref) for _ in range(2)]
    assert _statuses(await p.post(client, old)) == [("accepted", None)] * 2
    async with _client(runtime, bus=FailingBus(runtime.bus)) as down:
        r = await p.post(down, [*old, *new])
    assert (r.status_code, r.json()["code"]) == (503, "bus.unavailable")
    r = await p.post(client, [*old, *new])
    assert _statuses(r) == [("duplicate", None)] * 2 + [("accepted", None)] * 2
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {e["event_id"]: 1 for e in [*old, *new]}


def _midnight() -> dt.datetime:
    """Today's start, UTC."""
    return clock.now().replace(hour=0, minute=0, second=0, microsecond=0)


async def _buckets(rt: Runtime, scene_id: uuid.UUID) -> dict[str, dict[str, str]]:
    """The scene's buckets: key → {event_id: token}."""
    pattern = rt.key("ingest", "seen", "{" + str(scene_id) + "}", "*")
    return {_text(k) or "": {_text(f) or "": _text(v) or ""
                             for f, v in (await rt.redis.hgetall(k)).items()}
            async for k in rt.redis.scan_iter(match=pattern)}


async def test_a_batch_over_two_utc_days_writes_the_buckets_of_each_day_expiring_at_its_end(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """Each UTC day of ``occurred_at`` has its buckets (one per shard of the event id),
    whatever offset the partner wrote; a bucket expires at the end of its day + the dedupe TTL
    (claim window + margin + future skew), the stored token key no earlier. A later batch
    mixing both days' new and stored events is judged event by event, in request order."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    midnight = _midnight()
    early = p.event(ref, at=midnight - dt.timedelta(hours=36))
    # yesterday 20:00 UTC, written as today 04:00 +08:00: yesterday's buckets
    late = p.event(ref, at=(midnight - dt.timedelta(hours=4)).astimezone(
        dt.timezone(dt.timedelta(hours=8))))
    assert late["occurred_at"].endswith("04:00:00+08:00")
    later = p.event(ref, at=midnight - dt.timedelta(hours=11))
    assert _statuses(await p.post(client, [early, late, later])) == [("accepted", None)] * 3

    def key(day: dt.datetime, event: dict[str, Any]) -> str:
        return runtime.key("ingest", "seen", "{" + str(p.scene_id) + "}", day.strftime("%Y%m%d"),
                           f"{service._shard(event['event_id']):02x}")

    day1, day2 = midnight - dt.timedelta(days=2), midnight - dt.timedelta(days=1)
    placed = [(day1, early), (day2, late), (day2, later)]
    assert [_mark(runtime, p.scene_id, e) for _, e in placed] == [
        (key(day, e), e["event_id"]) for day, e in placed]
    buckets = await _buckets(runtime, p.scene_id)
    assert set(buckets) == {key(day, e) for day, e in placed}
    assert sorted(f for fields in buckets.values() for f in fields) == sorted(
        e["event_id"] for _, e in placed)
    (token,) = {t for fields in buckets.values() for t in fields.values()}

    s = runtime.settings
    ttl = 30 * 86400 + s.ingest_dedupe_margin_days * 86400 + s.ingest_future_skew_s
    for day, e in placed:
        end = int((day + dt.timedelta(days=1)).timestamp())
        # a day's buckets expire a second apart (shard n at + n s)
        shard = service._shard(e["event_id"])
        assert abs(await runtime.redis.expiretime(key(day, e)) - (end + ttl + shard)) <= 5
    tok = service.token_key(runtime, p.scene_id, token)
    assert _text(await runtime.redis.get(tok)) == "s"
    last = end + ttl + service.SEEN_SHARDS - 1  # day2's last bucket
    assert await runtime.redis.expiretime(tok) >= last

    new1 = p.event(ref, at=midnight - dt.timedelta(hours=10))
    new2 = p.event(ref, at=midnight - dt.timedelta(hours=40))
    r = await p.post(client, [new1, early, new2, late, later, new1])
    assert _statuses(r) == [("accepted", None), ("duplicate", None), ("accepted", None),
                            ("duplicate", None), ("duplicate", None), ("duplicate", None)]
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {
        e["event_id"]: 1 for e in (early, late, later, new1, new2)}


async def test_the_event_ids_of_a_day_spread_over_its_buckets(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A scene's day is ``SEEN_SHARDS`` hashes, not one that grows to millions of fields
    (Redis deletes an expired hash in one step); the script's shard of an id is the one
    :func:`ingestion.service.dedupe_mark` names, for ids of any length, ASCII or not."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    at = _midnight() - dt.timedelta(hours=30)
    events = [p.event(ref, event_id=f"ev-{i}", at=at) for i in range(200)]
    events += [p.event(ref, event_id=e, at=at) for e in ("x", "步数-7", "ä")]
    r = await p.post(client, events)
    assert _statuses(r) == [("accepted", None)] * len(events)
    buckets = await _buckets(runtime, p.scene_id)
    assert len(buckets) > service.SEEN_SHARDS // 2
    for e in events:
        bucket, field = _mark(runtime, p.scene_id, e)
        assert field in buckets[bucket]
    assert sum(len(fields) for fields in buckets.values()) == len(events)


async def test_an_event_sent_again_with_another_days_occurred_at_is_credited_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A mark is found by its ``occurred_at`` day: the same ``event_id`` with an
    ``occurred_at`` on another UTC day, in a later batch, is accepted by the API (another
    bucket); the ledger's unique key (scene_id, event_id) credits it once and the worker
    counts it as a duplicate."""
    from prometheus_client import REGISTRY

    from tests.ingestion.conftest import balance

    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    midnight = _midnight()
    first = p.event(ref, at=midnight - dt.timedelta(hours=12))
    assert _statuses(await p.post(client, [first])) == [("accepted", None)]
    await drain(runtime)
    assert await balance(runtime, citizen) == 25

    again = dict(first, occurred_at=(midnight - dt.timedelta(hours=36)).isoformat())
    assert _statuses(await p.post(client, [again])) == [("accepted", None)]
    assert _statuses(await p.post(client, [again, first])) == [("duplicate", None)] * 2

    def worker_count(result: str) -> float:
        return REGISTRY.get_sample_value("tanhui_worker_events_total", {"result": result}) or 0.0

    before = worker_count("duplicate"), worker_count("credited")
    await drain(runtime)
    assert (worker_count("duplicate") - before[0], worker_count("credited") - before[1]) == (1, 0)
    assert await credited(runtime, p.scene_id) == {first["event_id"]: 1}
    assert await balance(runtime, citizen) == 25
