"""Ingestion rules: check a partner's batch, drop duplicates, publish to the bus durably.

The hot path in two steps, so that no database connection is held while the bus acks:

1. :func:`check_batch` (one read transaction, three set-based queries: the scene, the links
   and consents of every ``partner_user_ref``, the rules of every behaviour) gives each event
   its outcome: rejected with a code, or a candidate;
2. :func:`publish_batch` drops duplicates of ``(scene, event_id)`` with one Redis round trip
   (``SET NX`` with a TTL longer than the claim window), publishes the accepted events to the
   bus keyed by their citizen's bucket, and returns only after the bus acknowledged durably.
   If the bus fails, the ``SET NX`` marks of this request are removed again (so a retry is not
   reported duplicate) and :class:`~ingestion.errors.BusDown` (503) is raised.

Art. 34: only behaviour data the citizen authorised is taken — an event counts only when its
citizen's consent covered ``occurred_at``.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

import msgspec
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.bus import BusUnavailable, Message
from app.runtime import Runtime
from app.settings import Settings
from ingestion import errors as E
from ingestion import metrics
from ingestion.schemas import (
    ENVELOPE_VERSION,
    MAX_EVENTS,
    BatchIn,
    BatchResult,
    BusEvent,
    Envelope,
    EventIn,
    EventResult,
    batch_decoder,
    bus_encoder,
    event_decoder,
    to_us,
)
from scenes import service as scenes

log = structlog.get_logger()

# A citizen's events always go to the same bucket, hence the same partition: one worker at a
# time sees a citizen (caps are computed without racing). A bus message carries one request's
# events of one bucket, so a batch of 1,000 events is at most BUCKETS messages.
BUCKETS = 64
FUTURE_SKEW = dt.timedelta(minutes=5)  # partner clocks may run a little ahead
DEDUPE_MARGIN = dt.timedelta(days=2)  # the dedupe mark outlives the claim window by this
PUBLISH_TIMEOUT_S = 5.0
MAX_QUANTITY_MILLI = 10**12  # sanity bound whatever the rule says


def events_topic(settings: Settings) -> str:
    """The bus topic of accepted events (per-run prefix in tests)."""
    try:
        from app.bus import topic_name  # type: ignore[attr-defined]
    except ImportError:
        return settings.kafka_topic_prefix + "events"
    name: str = topic_name(settings, "events")
    return name


def worker_group(settings: Settings) -> str:
    """The points workers' consumer group, per deployment (Kafka groups span topics: two
    deployments on one cluster must not share one)."""
    return settings.kafka_topic_prefix + "points-worker"


def bucket_key(citizen_id: UUID) -> bytes:
    return b"c%02d" % (zlib.crc32(citizen_id.bytes) % BUCKETS)


# ---------------------------------------------------------------- decoding


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def decode_batch(body: bytes) -> list[EventIn]:
    """Decode ``{"events": [...]}`` in one call; a malformed body is one 422 problem."""
    try:
        batch: BatchIn = batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise E.BatchInvalid("request.invalid", _first_line(exc)) from exc
    except msgspec.DecodeError as exc:
        raise E.BatchInvalid("request.malformed_json", _first_line(exc)) from exc
    n = len(batch.events)
    if n == 0 or n > MAX_EVENTS:
        raise E.BatchInvalid(
            "ingest.batch_size", f"A batch holds 1 to {MAX_EVENTS} events; this one has {n}.",
            max_events=MAX_EVENTS, events=n,
        )
    return batch.events


def decode_event(body: bytes) -> EventIn:
    try:
        event: EventIn = event_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise E.BatchInvalid("request.invalid", _first_line(exc)) from exc
    except msgspec.DecodeError as exc:
        raise E.BatchInvalid("request.malformed_json", _first_line(exc)) from exc
    return event


# ---------------------------------------------------------------- checking


@dataclass(slots=True)
class Candidate:
    """An event that passed every check; it still has to get past the dedupe."""

    index: int
    event: BusEvent
    citizen_id: UUID


@dataclass(slots=True)
class CheckedBatch:
    scene_id: UUID
    dedupe_ttl_s: int
    results: list[EventResult]
    candidates: list[Candidate] = field(default_factory=list)


def quantity_milli(quantity: Decimal) -> int | None:
    """The quantity in integer milli-units, or None when it has more than 3 decimals."""
    try:
        scaled = quantity.scaleb(3)
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            return None
        return int(scaled)
    except (InvalidOperation, OverflowError, ValueError):
        return None


async def check_batch(
    session: AsyncSession, scene_id: UUID, events: Sequence[EventIn], *,
    now: dt.datetime | None = None,
) -> CheckedBatch:
    """Every event's outcome against the scene, the partner's links and consents, the rules.

    Three queries for the whole batch; no ORM object per event.
    """
    now = now or clock.now()
    scene = await scenes.scene_for_ingest(session, scene_id)
    scene.require_accepting()  # Art. 32: a suspended or ended scene's events are refused
    refs = list({e.partner_user_ref for e in events})
    links = await scenes.resolve_links(session, scene_id, refs)
    behaviours = set(scene.behaviours)
    rules = await scenes.rulebook(
        session, {(scene_id, e.behaviour) for e in events if e.behaviour in behaviours}
    )
    now_us = to_us(now)
    future_us = to_us(now + FUTURE_SKEW)
    oldest_us = to_us(now - dt.timedelta(days=scene.claim_window_days))
    scene_str = str(scene_id)
    checked = CheckedBatch(
        scene_id=scene_id,
        dedupe_ttl_s=int((dt.timedelta(days=scene.claim_window_days) + DEDUPE_MARGIN
                          + FUTURE_SKEW).total_seconds()),
        results=[],
    )
    results = checked.results
    for i, ev in enumerate(events):
        code, detail = _reject_reason(ev, scene_id, behaviours, rules, links, future_us, oldest_us)
        if code is not None:
            results.append(EventResult(ev.event_id, "rejected", code, detail))
            continue
        link = links[ev.partner_user_ref]
        results.append(EventResult(ev.event_id, "accepted"))
        checked.candidates.append(Candidate(i, BusEvent(
            scene_id=scene_str,
            event_id=ev.event_id,
            citizen_id=str(link.citizen_id),
            behaviour=ev.behaviour,
            quantity_milli=quantity_milli(ev.quantity) or 0,
            occurred_us=to_us(ev.occurred_at),
            received_us=now_us,
            district_code=ev.district_code,
        ), link.citizen_id))
    return checked


def _reject_reason(
    ev: EventIn, scene_id: UUID, behaviours: set[str], rules: Any, links: dict[str, Any],
    future_us: int, oldest_us: int,
) -> tuple[str | None, str | None]:
    occurred_us = to_us(ev.occurred_at)
    if occurred_us > future_us:
        return E.IN_THE_FUTURE, "occurred_at is in the future."
    if occurred_us < oldest_us:
        return E.OUTSIDE_CLAIM_WINDOW, "occurred_at is older than the scene's claim window."
    if ev.behaviour not in behaviours:
        return E.BEHAVIOUR_UNKNOWN, f"The scene has no behaviour {ev.behaviour!r}."
    rule = rules.rule_at(scene_id, ev.behaviour, ev.occurred_at)
    if rule is None:
        return E.RULE_MISSING, "No reduction rule was in force at occurred_at."
    if ev.unit != rule.unit:
        return E.UNIT_MISMATCH, f"The rule counts {rule.unit!r}, not {ev.unit!r}."
    milli = quantity_milli(ev.quantity)
    if milli is None:
        return E.QUANTITY_PRECISION, "quantity has more than 3 decimal places."
    max_milli = rule.max_quantity_per_event
    if milli <= 0 or milli > MAX_QUANTITY_MILLI or (max_milli is not None and milli > max_milli):
        return E.QUANTITY_OUT_OF_RANGE, "quantity is not within the rule's range."
    link = links.get(ev.partner_user_ref)
    if link is None:
        return E.NOT_LINKED, "partner_user_ref is not linked to a citizen in this scene."
    if not link.consented_at(ev.occurred_at):
        return E.CONSENT_ABSENT, "The citizen's consent did not cover occurred_at."
    return None, None


# ---------------------------------------------------------------- dedupe and publish

# One round trip for the whole batch: SET NX EX per event, answer '1' (new) / '0' (seen).
_DEDUPE_LUA = """
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then out[i] = '1' else out[i] = '0' end
end
return table.concat(out)
"""

_scripts: dict[int, Any] = {}


def _dedupe_script(redis: Redis) -> Any:
    script = _scripts.get(id(redis))
    if script is None or script.registered_client is not redis:
        script = redis.register_script(_DEDUPE_LUA)
        _scripts[id(redis)] = script
    return script


def dedupe_key(runtime: Runtime, scene_id: UUID | str, event_id: str) -> str:
    # The hash tag keeps a scene's marks in one Redis Cluster slot (the script needs that).
    return runtime.key("ingest", "seen", "{" + str(scene_id) + "}", event_id)


async def publish_batch(runtime: Runtime, checked: CheckedBatch) -> BatchResult:
    """Drop duplicates, publish the rest durably, and give every event's outcome."""
    results = checked.results
    candidates = checked.candidates
    fresh: list[Candidate] = []
    fresh_keys: list[str] = []
    if candidates:
        keys = [dedupe_key(runtime, checked.scene_id, c.event.event_id) for c in candidates]
        flags = await _dedupe_script(runtime.redis)(keys=keys, args=[checked.dedupe_ttl_s])
        if isinstance(flags, bytes):
            flags = flags.decode()
        for c, key, flag in zip(candidates, keys, flags, strict=True):
            if flag == "1":
                fresh.append(c)
                fresh_keys.append(key)
            else:
                results[c.index] = EventResult(c.event.event_id, "duplicate")
    if fresh:
        try:
            await publish_events(runtime, [c.event for c in fresh],
                                 [c.citizen_id for c in fresh])
        except BaseException as exc:
            # Nothing was acknowledged: forget the marks so that a retry is not "duplicate".
            await _forget(runtime, fresh_keys)
            metrics.BATCHES.labels("bus_down").inc()
            if isinstance(exc, BusUnavailable | TimeoutError | OSError):
                raise E.BusDown(
                    "bus.unavailable", "The event bus did not acknowledge; nothing was taken.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise
    return _summarise(results)


async def _forget(runtime: Runtime, keys: list[str]) -> None:
    try:
        for i in range(0, len(keys), 1000):
            await runtime.redis.delete(*keys[i : i + 1000])
    except Exception:  # Redis down too: the ledger's unique key still dedupes the retry
        log.warning("dedupe_marks_not_removed", count=len(keys))


_topics_ready: set[tuple[int, str]] = set()


async def ensure_topic(runtime: Runtime, topic: str) -> None:
    marker = (id(runtime.bus), topic)
    if marker not in _topics_ready:
        await runtime.bus.ensure_topics([topic])
        _topics_ready.add(marker)


async def publish_events(
    runtime: Runtime, events: Sequence[BusEvent], citizens: Sequence[UUID]
) -> None:
    """Publish events grouped by citizen bucket; return once the bus acked every message."""
    topic = events_topic(runtime.settings)
    groups: dict[bytes, list[BusEvent]] = {}
    for ev, citizen in zip(events, citizens, strict=True):
        groups.setdefault(bucket_key(citizen), []).append(ev)
    messages = [
        Message(key, bus_encoder.encode(Envelope(ENVELOPE_VERSION, evs)))
        for key, evs in groups.items()
    ]
    started = time.perf_counter()
    await ensure_topic(runtime, topic)
    async with _timeout(PUBLISH_TIMEOUT_S):
        await runtime.bus.publish(topic, messages)
    metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)


def _timeout(seconds: float) -> Any:
    import asyncio

    return asyncio.timeout(seconds)


def _summarise(results: list[EventResult]) -> BatchResult:
    accepted = duplicates = rejected = 0
    for r in results:
        if r.status == "accepted":
            accepted += 1
        elif r.status == "duplicate":
            duplicates += 1
        else:
            rejected += 1
            metrics.EVENTS.labels("rejected", r.code or "").inc()
    if accepted:
        metrics.EVENTS.labels("accepted", "").inc(accepted)
    if duplicates:
        metrics.EVENTS.labels("duplicate", "").inc(duplicates)
    metrics.BATCHES.labels("ok").inc()
    return BatchResult(accepted, duplicates, rejected, results)
