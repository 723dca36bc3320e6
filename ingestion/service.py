"""Ingestion rules: check a partner's batch, drop duplicates, publish to the bus durably.

The hot path in two steps, so that no database connection is held while the bus acks:

1. :func:`check_batch` (one read transaction, three set-based queries: the scene, the links
   and consents of every ``partner_user_ref``, the rules of every behaviour) gives each event
   its outcome: rejected with a code, or a candidate;
2. :func:`publish_batch` claims every ``(scene, event_id)`` with one Redis round trip (a Lua
   script over the batch), publishes the claimed events to the bus keyed by their citizen's
   bucket, and returns only after the bus acknowledged durably.

Issue 6, "nothing is acknowledged that was not stored": a dedupe mark has two states.

- ``p:<token>`` (*pending*, 处理中): set ``NX`` with a short TTL
  (``TANHUI_INGEST_PENDING_TTL_S``) before the publish, ``token`` naming the request;
- ``s`` (*stored*, 已存储): after the bus's durable ack the request turns its own pending marks
  into stored ones (compare-and-set on its token, second round trip) with the long TTL (claim
  window + margin).

A request that finds ``stored`` answers ``duplicate``; one that finds another request's
``pending`` answers the event ``rejected`` with the retryable code ``event.in_flight`` (retry
later: the other request either stores it — then the retry is ``duplicate`` — or fails and
frees it), never ``duplicate``. If the bus fails, the request deletes only the marks that
still hold its token (compare-and-delete) and raises :class:`~ingestion.errors.BusDown` (503);
if it dies before that, its pending marks expire on their own.

Art. 34: only behaviour data the citizen authorised is taken — an event counts only when its
citizen's consent covered ``occurred_at``.
"""

from __future__ import annotations

import datetime as dt
import gc
import secrets
import time
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
from app.bus import BusUnavailable, Message, topic_name
from app.runtime import Runtime
from app.settings import Settings, get_settings
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
    bucket_of,
    bus_encoder,
    event_decoder,
)
from scenes import service as scenes

log = structlog.get_logger()

MAX_QUANTITY_MILLI = 10**12  # sanity bound whatever the rule says
STORED = "s"  # the value of a stored mark; a pending one is "p:" + the request's token
PENDING = "p:"


@dataclass(frozen=True, slots=True)
class Limits:
    """The ingestion limits, from the ``TANHUI_INGEST_*`` settings."""

    max_events: int = MAX_EVENTS  # events per batch
    future_skew: dt.timedelta = dt.timedelta(minutes=5)  # partner clocks may run ahead
    dedupe_margin: dt.timedelta = dt.timedelta(days=2)  # a stored mark outlives the window
    publish_timeout_s: float = 5.0
    pending_ttl_s: int = 30  # a pending mark outlives the publish timeout

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_events=settings.ingest_max_events,
            future_skew=dt.timedelta(seconds=settings.ingest_future_skew_s),
            dedupe_margin=dt.timedelta(days=settings.ingest_dedupe_margin_days),
            publish_timeout_s=settings.ingest_publish_timeout_s,
            pending_ttl_s=settings.ingest_pending_ttl_s,
        )


def limits_of(settings: Settings | None = None) -> Limits:
    return Limits.of(settings or get_settings())


def events_topic(settings: Settings) -> str:
    """The bus topic of accepted events (per-run prefix in tests)."""
    return topic_name(settings, "events")


def worker_group(settings: Settings) -> str:
    """The points workers' consumer group. The bus namespaces it per deployment (Kafka groups
    span topics: two deployments on one cluster must not share one)."""
    return settings.ingest_worker_group


def bucket_key(citizen_id: UUID) -> bytes:
    """The bus key of a citizen's events: its bucket (Kafka and the queue partition by it)."""
    return b"c%02d" % bucket_of(citizen_id)


_gc_tuned = False


def tune_gc_once() -> None:
    """Freeze the long-lived startup heap out of the cyclic collector and let it run less
    often: a 1,000-event batch allocates tens of thousands of short-lived objects, none in
    cycles, and full collections over the framework's heap were ~20 % of the API's CPU.
    (Process-wide; it belongs in the kernel's startup, done here on the first batch.)"""
    global _gc_tuned
    if not _gc_tuned:
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        _gc_tuned = True


# ---------------------------------------------------------------- decoding


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def decode_batch(body: bytes, *, limits: Limits | None = None) -> list[EventIn]:
    """Decode ``{"events": [...]}`` in one call; a malformed body is one 422 problem."""
    max_events = (limits or limits_of()).max_events
    try:
        batch: BatchIn = batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise E.BatchInvalid("request.invalid", _first_line(exc)) from exc
    except msgspec.DecodeError as exc:
        raise E.BatchInvalid("request.malformed_json", _first_line(exc)) from exc
    n = len(batch.events)
    if n == 0 or n > max_events:
        raise E.BatchInvalid(
            "ingest.batch_size", f"A batch holds 1 to {max_events} events; this one has {n}.",
            max_events=max_events, events=n,
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
class CheckedBatch:
    """Every event's outcome so far; the accepted ones (``candidates``, with their position
    in ``positions``) still have to get past the dedupe."""

    scene_id: UUID
    dedupe_ttl_s: int
    results: list[EventResult]
    candidates: list[BusEvent] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def quantity_milli(quantity: Decimal) -> int | None:
    """The quantity in integer milli-units, or None when it has more than 3 decimals."""
    try:
        scaled = quantity.scaleb(3)
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            return None
        return int(scaled)
    except (InvalidOperation, OverflowError, ValueError):
        return None


# The API checks units and quantities against the rules; the worker re-reads the rules for
# every batch, so a rule book a second old is only ever used for that early feedback.
RULEBOOK_TTL_S = 1.0
_rulebooks: dict[frozenset[tuple[UUID, str]], tuple[float, Any]] = {}


async def _rulebook(session: AsyncSession, pairs: set[tuple[UUID, str]]) -> Any:
    key = frozenset(pairs)
    mono = time.monotonic()
    hit = _rulebooks.get(key)
    if hit is not None and hit[0] > mono:
        return hit[1]
    book = await scenes.rulebook(session, pairs)
    if len(_rulebooks) > 1000:
        _rulebooks.clear()
    _rulebooks[key] = (mono + RULEBOOK_TTL_S, book)
    return book


_VARIES = object()


def _rule_per_behaviour(
    scene_id: UUID, events: Sequence[EventIn], behaviours: frozenset[str], rules: Any
) -> dict[str, Any]:
    """For each behaviour of the batch, the one rule version in force over all its events'
    times, or ``_VARIES``. A version is in force over an interval, so if the same version is
    in force at the earliest and the latest ``occurred_at``, it is in force at every one."""
    span: dict[str, list[dt.datetime]] = {}
    for ev in events:
        b = ev.behaviour
        if b in behaviours:
            at = ev.occurred_at
            seen = span.get(b)
            if seen is None:
                span[b] = [at, at]
            elif at < seen[0]:
                seen[0] = at
            elif at > seen[1]:
                seen[1] = at
    fixed: dict[str, Any] = {}
    for b, (first, last) in span.items():
        rule = rules.rule_at(scene_id, b, first)
        fixed[b] = rule if rule is not None and rule is rules.rule_at(scene_id, b, last) \
            else _VARIES
    return fixed


async def check_batch(
    session: AsyncSession, scene_id: UUID, events: Sequence[EventIn], *,
    now: dt.datetime | None = None, limits: Limits | None = None,
) -> CheckedBatch:
    """Every event's outcome against the scene, the partner's links and consents, the rules.

    One query per batch in the steady state: the scene and its links version are read fresh,
    the links come from the process's link cache once the changes since its version are
    dropped (so a suspension, a revocation or a new link counts from the next batch), the
    rules are cached for a second; no ORM object per event.
    """
    now = now or clock.now()
    limits = limits or limits_of()
    # Art. 32: a suspended or ended scene's events are refused (409 scene.not_active).
    scene, links = await scenes.links_for_ingest(
        session, scene_id, {e.partner_user_ref for e in events})
    behaviours = scene.behaviours
    rules = await _rulebook(
        session, {(scene_id, b) for b in {e.behaviour for e in events} if b in behaviours}
    )
    fixed = _rule_per_behaviour(scene_id, events, behaviours, rules)
    future = now + limits.future_skew
    oldest = now - dt.timedelta(days=scene.claim_window_days)
    checked = CheckedBatch(
        scene_id=scene_id,
        dedupe_ttl_s=int((dt.timedelta(days=scene.claim_window_days) + limits.dedupe_margin
                          + limits.future_skew).total_seconds()),
        results=[],
    )
    results = checked.results
    candidates = checked.candidates
    positions = checked.positions
    for i, ev in enumerate(events):
        at = ev.occurred_at
        code: str | None = None
        if at > future:
            code, detail = E.IN_THE_FUTURE, "occurred_at is in the future."
        elif at < oldest:
            code, detail = E.OUTSIDE_CLAIM_WINDOW, \
                "occurred_at is older than the scene's claim window."
        else:
            rule = fixed.get(ev.behaviour)
            if rule is _VARIES:
                rule = rules.rule_at(scene_id, ev.behaviour, at)
            milli = quantity_milli(ev.quantity)
            link = links.get(ev.partner_user_ref)
            if ev.behaviour not in behaviours:
                code, detail = E.BEHAVIOUR_UNKNOWN, f"The scene has no behaviour {ev.behaviour!r}."
            elif rule is None:
                code, detail = E.RULE_MISSING, "No reduction rule was in force at occurred_at."
            elif ev.unit != rule.unit:
                code, detail = E.UNIT_MISMATCH, f"The rule counts {rule.unit!r}, not {ev.unit!r}."
            elif milli is None:
                code, detail = E.QUANTITY_PRECISION, "quantity has more than 3 decimal places."
            elif milli <= 0 or milli > MAX_QUANTITY_MILLI or (
                    rule.max_quantity_per_event is not None
                    and milli > rule.max_quantity_per_event):
                code, detail = E.QUANTITY_OUT_OF_RANGE, "quantity is not within the rule's range."
            elif link is None:
                code, detail = E.NOT_LINKED, \
                    "partner_user_ref is not linked to a citizen in this scene."
            elif not _consented(link, at):
                code, detail = E.CONSENT_ABSENT, \
                    "The citizen's consent did not cover occurred_at."
            else:
                results.append(EventResult(ev.event_id, "accepted"))
                candidates.append(BusEvent(
                    scene_id, ev.event_id, link.citizen_id, ev.behaviour, milli, at, now,
                    ev.district_code,
                ))
                positions.append(i)
                continue
        results.append(EventResult(ev.event_id, "rejected", code, detail))
    return checked


def _consented(link: Any, at: dt.datetime) -> bool:
    """Art. 34: was the behaviour at ``at`` authorised? (one open consent: one comparison)"""
    intervals = link.intervals
    if len(intervals) == 1 and intervals[0][1] is None:
        return bool(intervals[0][0] <= at)
    return bool(link.consented_at(at))


# ---------------------------------------------------------------- dedupe and publish

# Claim the whole batch in one round trip: SET NX EX a pending mark per event; answer per
# event '1' (claimed by this request), '0' (stored, or this request's own: duplicate) or
# '2' (another request's pending mark: in flight).
_CLAIM_LUA = """
local mine = ARGV[1]
local ttl = ARGV[2]
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], mine, 'NX', 'EX', ttl) then
    out[i] = '1'
  else
    local cur = redis.call('GET', KEYS[i])
    if cur and cur ~= mine and string.sub(cur, 1, 2) == 'p:' then out[i] = '2' else out[i] = '0' end
  end
end
return table.concat(out)
"""

# After the durable ack: this request's pending marks (or expired ones) become stored.
_CONFIRM_LUA = """
local mine = ARGV[1]
local ttl = ARGV[2]
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur == mine or not cur then redis.call('SET', KEYS[i], 's', 'EX', ttl) end
end
return #KEYS
"""

# After a failed publish: delete only the marks that still hold this request's token.
_RELEASE_LUA = """
local mine = ARGV[1]
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == mine then redis.call('DEL', KEYS[i]); n = n + 1 end
end
return n
"""

_scripts: dict[tuple[int, str], Any] = {}


def _script(redis: Redis, source: str) -> Any:
    marker = (id(redis), source)
    script = _scripts.get(marker)
    if script is None or script.registered_client is not redis:
        script = redis.register_script(source)
        _scripts[marker] = script
    return script


def dedupe_key(runtime: Runtime, scene_id: UUID | str, event_id: str) -> str:
    # The hash tag keeps a scene's marks in one Redis Cluster slot (the scripts need that).
    return runtime.key("ingest", "seen", "{" + str(scene_id) + "}", event_id)


def _dedupe_prefix(runtime: Runtime, scene_id: UUID) -> str:
    return dedupe_key(runtime, scene_id, "")


def _in_flight(event_id: str) -> EventResult:
    return EventResult(
        event_id, "rejected", E.IN_FLIGHT,
        "Another request is storing this event right now; retry later "
        "(it is then either a duplicate or taken).",
    )


async def publish_batch(
    runtime: Runtime, checked: CheckedBatch, *, limits: Limits | None = None
) -> BatchResult:
    """Claim the candidates, publish the claimed ones durably, mark them stored, and give
    every event's outcome (``duplicate`` only for events stored before)."""
    limits = limits or Limits.of(runtime.settings)
    results = checked.results
    candidates = checked.candidates
    fresh: list[BusEvent] = []
    fresh_keys: list[str] = []
    mine = PENDING + secrets.token_hex(8)
    if candidates:
        prefix = _dedupe_prefix(runtime, checked.scene_id)
        keys = [prefix + ev.event_id for ev in candidates]
        flags = await _script(runtime.redis, _CLAIM_LUA)(
            keys=keys, args=[mine, limits.pending_ttl_s])
        if isinstance(flags, bytes):
            flags = flags.decode()
        for ev, pos, key, flag in zip(candidates, checked.positions, keys, flags, strict=True):
            if flag == "1":
                fresh.append(ev)
                fresh_keys.append(key)
            elif flag == "0":
                results[pos] = EventResult(ev.event_id, "duplicate")
            else:
                results[pos] = _in_flight(ev.event_id)
    if fresh:
        try:
            await publish_events(runtime, fresh, timeout_s=limits.publish_timeout_s)
        except BaseException as exc:
            # Nothing was acknowledged: free this request's marks so a retry is taken.
            await _release(runtime, fresh_keys, mine)
            metrics.BATCHES.labels("bus_down").inc()
            if isinstance(exc, BusUnavailable | TimeoutError | OSError):
                raise E.BusDown(
                    "bus.unavailable", "The event bus did not acknowledge; nothing was taken.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise
        await _confirm(runtime, fresh_keys, mine, checked.dedupe_ttl_s)
    return _summarise(results)


async def _confirm(runtime: Runtime, keys: list[str], mine: str, ttl_s: int) -> None:
    try:
        await _script(runtime.redis, _CONFIRM_LUA)(keys=keys, args=[mine, ttl_s])
    except Exception:  # stored on the bus; the pending marks expire, the ledger dedupes a retry
        log.warning("dedupe_marks_not_confirmed", count=len(keys))


async def _release(runtime: Runtime, keys: list[str], mine: str) -> None:
    try:
        await _script(runtime.redis, _RELEASE_LUA)(keys=keys, args=[mine])
    except Exception:  # Redis down too: the pending marks expire after their short TTL
        log.warning("dedupe_marks_not_removed", count=len(keys))


_topics_ready: set[tuple[int, str]] = set()


async def ensure_topic(runtime: Runtime, topic: str) -> None:
    marker = (id(runtime.bus), topic)
    if marker not in _topics_ready:
        await runtime.bus.ensure_topics([topic])
        _topics_ready.add(marker)


async def publish_events(
    runtime: Runtime, events: Sequence[BusEvent], *, timeout_s: float | None = None
) -> None:
    """Publish events grouped by citizen bucket; return once the bus acked every message."""
    topic = events_topic(runtime.settings)
    groups: dict[bytes, list[BusEvent]] = {}
    keys: dict[UUID, bytes] = {}
    for ev in events:
        key = keys.get(ev.citizen_id)
        if key is None:
            key = keys[ev.citizen_id] = bucket_key(ev.citizen_id)
        groups.setdefault(key, []).append(ev)
    messages = [
        Message(key, bus_encoder.encode(Envelope(ENVELOPE_VERSION, evs)))
        for key, evs in groups.items()
    ]
    started = time.perf_counter()
    await ensure_topic(runtime, topic)
    if timeout_s is None:
        timeout_s = runtime.settings.ingest_publish_timeout_s
    async with _timeout(timeout_s):
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
