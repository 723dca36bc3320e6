"""Ingestion rules: check a partner's batch, drop duplicates, publish to the bus durably.

The hot path in two steps, so that no database connection is held while the bus acks:

1. :func:`check_batch` (on an autocommit session; in the steady state one small query: the
   scene with its links version, the links and consents coming from the process's link cache
   of :func:`scenes.service.links_for_ingest`, the rules cached for a second) gives each event
   its outcome: rejected with a code, or a candidate (a :class:`RawBusEvent`);
2. :func:`publish_batch` claims every event's dedupe mark with one Redis round trip (a Lua
   script over the batch), publishes the claimed events to the bus keyed by their citizen's
   bucket, and returns only after the bus acknowledged durably.

Issue 6, "nothing is acknowledged that was not stored": every request draws a *token*
(``p:`` + 96 random bits) and the dedupe state lives in the token, not in the marks.

- the claim (one Lua script, one round trip per batch) sets each event's mark to the token,
  ``HSETNX``: the mark is the field ``<event_id>`` of one of the scene's buckets for the UTC
  day of its ``occurred_at``, the hashes ``ingest:seen:{<scene>}:<yyyymmdd>:<shard>``
  (``SEEN_SHARDS`` per day, the shard from the event id's last two bytes); it sets the
  request's token key ``ingest:tok:{<scene>}:<token>`` to ``p`` (*pending*, 处理中) with the
  short TTL (``TANHUI_INGEST_PENDING_TTL_S``, longer than the publish timeout). The buckets
  of a day expire (``EXPIREAT``) at its end + the long TTL (claim window + margin + future
  skew) + their shard number in seconds: events older than the claim window are rejected
  before the dedupe, so no event of that day is claimed after. A hash field costs Redis
  about half the CPU and memory of a string key with its own expiry. The shards keep a
  hash from growing to millions of fields (Redis deletes an expired hash in one step: ~65 ms
  per 300,000 fields with ``lazyfree-lazy-expire no``, its default); each shard more costs
  Redis more per event (measured, 500-event batches over two days: 1.5 µs with one bucket,
  1.8 with 16, 2.4 with 64);
- after the bus's durable ack ONE command turns the whole request *stored* (已存储): its
  token key becomes ``s`` until the latest expiry of the request's buckets; the marks are not
  touched again.

A mark that is already set is judged by its token's key: the request's own token (the same
event twice in one batch) or a stored token answers ``duplicate``; a pending one answers the
event ``rejected`` with the retryable code ``event.in_flight`` (retry later: the other request
either stores it — then the retry is ``duplicate`` — or fails and frees it), never
``duplicate``; a *missing* token key means the request that claimed the mark failed or died
without storing it, so the mark is free and this request takes it over. If the bus fails,
the request deletes its token key and the marks that still hold its token (one script) and
raises :class:`~ingestion.errors.BusDown` (503); if the process dies, its token key expires
after the short TTL and all its marks are free at once. The token key shares the buckets'
hash tag, so one script touches a single Redis Cluster slot.

A mark is found by its ``occurred_at`` day: an event sent again with the same ``event_id``
but an ``occurred_at`` on another UTC day falls in another bucket, so Redis does not catch it
and the ledger's unique key ``(scene_id, event_id)`` does: it is credited once, the API
answers it ``accepted`` and the worker counts it as a duplicate.

Art. 34: only behaviour data the citizen authorised is taken — an event counts only when its
citizen's consent covered ``occurred_at``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
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
    EventIn,
    EventResult,
    RawBusEvent,
    RawEnvelope,
    batch_decoder,
    bucket_of_key,
    bucket_of_raw,
    bus_encoder,
    event_decoder,
    key_of_bucket,
)
from scenes import service as scenes

log = structlog.get_logger()

MAX_QUANTITY_MILLI = 10**12  # sanity bound whatever the rule says
STORED = "s"  # a stored request's token key
TOKEN_PREFIX = "p:"  # a request's token, the value of its marks (see the module docstring)


@dataclass(frozen=True, slots=True)
class Limits:
    """The ingestion limits, from the ``TANHUI_INGEST_*`` settings."""

    max_events: int = MAX_EVENTS  # events per batch
    future_skew: dt.timedelta = dt.timedelta(minutes=5)  # partner clocks may run ahead
    dedupe_margin: dt.timedelta = dt.timedelta(days=2)  # a stored mark outlives the window
    publish_timeout_s: float = 5.0
    pending_ttl_s: int = 30  # a pending request's token outlives the publish timeout

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


def bucket_key(citizen_id: UUID | bytes) -> bytes:
    """The bus key of a citizen's events: its bucket (Kafka and the queue partition by it)."""
    raw = citizen_id if isinstance(citizen_id, bytes) else citizen_id.bytes
    return key_of_bucket(bucket_of_raw(raw))


def bucket_message(key: bytes, value: bytes) -> Message:
    """A bus message of one bucket's events, with the bucket as its shard (see
    :class:`app.bus.Message`: the buckets load the partitions evenly)."""
    return Message(key, value, shard=bucket_of_key(key))


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
    candidates: list[RawBusEvent] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def quantity_milli(quantity: Decimal) -> int | None:
    """The quantity in integer milli-units, or None when it has more than 3 decimals (or is
    not a number).

    Decided by the magnitude first, so a quantity such as ``1E+99999`` (a short JSON string)
    costs no more than ``1``: from 10^10 units on it is beyond ``MAX_QUANTITY_MILLI`` whatever
    its digits, and its digits are never expanded.
    """
    if not quantity.is_finite():
        return None
    if not quantity:
        return 0
    size = quantity.adjusted()  # the exponent of its leading digit
    if size >= 10:
        return MAX_QUANTITY_MILLI + 1 if quantity > 0 else -1
    if size < -3:
        return None  # 0 < |quantity| < 0.001
    num, den = quantity.as_integer_ratio()
    return None if 1000 % den else num * (1000 // den)


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
_UNSEEN: Any = object()


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
    scene_raw = scene_id.bytes
    millis: dict[Decimal, int | None] = {}  # a batch's quantities repeat (hashing is cheaper)
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
            quantity = ev.quantity
            milli = millis.get(quantity, _UNSEEN) if quantity.is_finite() else None
            if milli is _UNSEEN:
                milli = millis[quantity] = quantity_milli(quantity)
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
                candidates.append(RawBusEvent(
                    scene_raw, ev.event_id, link.citizen_raw, ev.behaviour, milli, at, now,
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

# Claim the whole batch in one round trip. KEYS[1] is this request's token key, KEYS[2..] the
# scene's buckets of each day of the batch, ``SEEN_SHARDS`` per day (same hash tag as the token
# keys: one Cluster slot); ARGV: the token, the pending TTL, the prefix of the scene's token
# keys, the number of shards, then per day its buckets' expire-at (unix seconds) and its
# number of events, then the event ids grouped by day in that order (``shard`` picks the
# bucket; ``_shard`` is its Python twin).
# Answers per event id sent '1' (claimed or taken over: publish it), '0' (duplicate: stored,
# or already this request's) or '2' (in flight). A token key is read at most once per script.
# The token key is set only when a mark was claimed.
_SHARD_LUA = """
local function shard(id)
  local n = #id
  return (string.byte(id, n) or 0) + 7 * (string.byte(id, n - 1) or 0)
end
"""

_CLAIM_LUA = _SHARD_LUA + """
local mine, tokens, shards = ARGV[1], ARGV[3], tonumber(ARGV[4])
local nb = (#KEYS - 1) / shards
local a = 5 + 2 * nb
local state = {}
local out = {}
local claimed = false
for b = 1, nb do
  local base = 2 + (b - 1) * shards
  local at = tonumber(ARGV[3 + 2 * b])
  local last = a + tonumber(ARGV[4 + 2 * b]) - 1
  for i = a, last do
    local id = ARGV[i]
    local bucket = KEYS[base + shard(id) % shards]
    local f = '1'
    if redis.call('HSETNX', bucket, id, mine) == 0 then
      local cur = redis.call('HGET', bucket, id)
      if cur == mine then
        f = '0'
      else
        f = state[cur]
        if not f then
          local t = redis.call('GET', tokens .. cur)
          if t == 's' then f = '0' elseif t then f = '2' else f = '1' end
          state[cur] = f
        end
        if f == '1' then redis.call('HSET', bucket, id, mine) end
      end
    end
    if f == '1' then claimed = true end
    out[i - 4 - 2 * nb] = f
  end
  for s = 0, shards - 1 do redis.call('EXPIREAT', KEYS[base + s], at + s) end
  a = last + 1
end
if claimed then redis.call('SET', KEYS[1], 'p', 'EX', ARGV[2]) end
return table.concat(out)
"""

# After a failed publish: the token key goes (every mark of the request is free at once) and
# so do the marks that still hold the token, rather than outliving the claim window unused.
# KEYS as for the claim; ARGV: the token, the number of shards, per day its number of events,
# the event ids grouped by day (marks of other requests, holding another token, stay).
_RELEASE_LUA = _SHARD_LUA + """
local mine, shards = ARGV[1], tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
local nb = (#KEYS - 1) / shards
local a = 3 + nb
local n = 0
for b = 1, nb do
  local base = 2 + (b - 1) * shards
  local last = a + tonumber(ARGV[2 + b]) - 1
  for i = a, last do
    local bucket = KEYS[base + shard(ARGV[i]) % shards]
    if redis.call('HGET', bucket, ARGV[i]) == mine then
      redis.call('HDEL', bucket, ARGV[i]); n = n + 1
    end
  end
  a = last + 1
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


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()
_DAY_S = 86400


def _utc_day(at: dt.datetime) -> int:
    """The proleptic ordinal of ``at``'s UTC date (partners may send any offset)."""
    if at.tzinfo is not dt.UTC:
        at = at.astimezone(dt.UTC)
    return at.toordinal()


SEEN_SHARDS = 16  # buckets per scene and day


def _seen_keys(runtime: Runtime, scene_id: UUID | str, day: int) -> list[str]:
    """The scene's buckets of a UTC day, by shard. The hash tag keeps a scene's buckets and
    token keys in one Redis Cluster slot (the scripts need that)."""
    prefix = runtime.key("ingest", "seen", "{" + str(scene_id) + "}",
                         dt.date.fromordinal(day).strftime("%Y%m%d"), "")
    return [f"{prefix}{i:02x}" for i in range(SEEN_SHARDS)]


def _shard(event_id: str) -> int:
    """The claim script's ``shard``: from the id's last two bytes."""
    raw = event_id.encode()
    return ((raw[-1] if raw else 0) + 7 * (raw[-2] if len(raw) > 1 else 0)) % SEEN_SHARDS


def dedupe_mark(runtime: Runtime, scene_id: UUID | str, event_id: str,
                occurred_at: dt.datetime) -> tuple[str, str]:
    """Where an event's mark lives: a bucket (a hash) of its scene for the UTC day of
    ``occurred_at``, and its field there, the ``event_id``."""
    return _seen_keys(runtime, scene_id, _utc_day(occurred_at))[_shard(event_id)], event_id


def token_key(runtime: Runtime, scene_id: UUID | str, token: str) -> str:
    """A request's token key: ``p`` while it publishes, ``s`` once stored (the marks' hash tag)."""
    return runtime.key("ingest", "tok", "{" + str(scene_id) + "}", token)


@dataclass(slots=True)
class _Marks:
    """A batch's marks as the scripts take them: the buckets of the days it touches (each day
    with its expire-at and number of events), and the event ids grouped by day. ``order`` is
    the candidate index of each id sent, None when that is the candidates' order (one day, the
    usual case)."""

    buckets: list[str]
    expire_at: list[int]
    counts: list[int]
    ids: list[str]
    order: list[int] | None = None


def _marks(
    runtime: Runtime, scene_id: UUID, candidates: Sequence[RawBusEvent], ttl_s: int
) -> _Marks:
    """Group the candidates by the UTC day of their ``occurred_at``; a day's buckets live
    until its end + ``ttl_s`` (+ their shard number in seconds: the script adds it), since no
    event of that day is claimed later (see the module docstring)."""
    ats = [ev.occurred_at for ev in candidates]
    first = _utc_day(min(ats))
    if first == _utc_day(max(ats)):
        return _Marks(_seen_keys(runtime, scene_id, first),
                      [(first + 1 - _EPOCH_DAY) * _DAY_S + ttl_s], [len(candidates)],
                      [ev.event_id for ev in candidates])
    groups: dict[int, list[int]] = {}
    for i, at in enumerate(ats):
        day = _utc_day(at)
        group = groups.get(day)
        if group is None:
            groups[day] = [i]
        else:
            group.append(i)
    order = [i for group in groups.values() for i in group]
    return _Marks(
        [key for day in groups for key in _seen_keys(runtime, scene_id, day)],
        [(day + 1 - _EPOCH_DAY) * _DAY_S + ttl_s for day in groups],
        [len(group) for group in groups.values()],
        [candidates[i].event_id for i in order], order,
    )


async def _claim(
    runtime: Runtime, tok: str, tokens: str, mine: str, marks: _Marks, pending_ttl_s: int
) -> str:
    """Run the claim script: one flag per id of ``marks.ids``, in that order."""
    per_day: list[int] = []
    for expire_at, count in zip(marks.expire_at, marks.counts, strict=True):
        per_day += (expire_at, count)
    flags = await _script(runtime.redis, _CLAIM_LUA)(
        keys=[tok, *marks.buckets],
        args=[mine, pending_ttl_s, tokens, SEEN_SHARDS, *per_day, *marks.ids])
    return flags.decode() if isinstance(flags, bytes) else str(flags)


def _in_flight(event_id: str) -> EventResult:
    return EventResult(
        event_id, "rejected", E.IN_FLIGHT,
        "Another request is storing this event right now; retry later "
        "(it is then either a duplicate or taken).",
    )


async def publish_batch(
    runtime: Runtime, checked: CheckedBatch, *, limits: Limits | None = None
) -> BatchResult:
    """Claim the candidates, publish the claimed ones durably, mark the request stored, and
    give every event's outcome (``duplicate`` only for events stored before)."""
    limits = limits or Limits.of(runtime.settings)
    results = checked.results
    candidates = checked.candidates
    if not candidates:
        return _summarise(results)
    mine = TOKEN_PREFIX + secrets.token_urlsafe(12)
    tokens = token_key(runtime, checked.scene_id, "")
    tok = tokens + mine
    marks = _marks(runtime, checked.scene_id, candidates, checked.dedupe_ttl_s)
    flags = await _claim(runtime, tok, tokens, mine, marks, limits.pending_ttl_s)
    n = len(candidates)
    if len(flags) != n:
        raise RuntimeError(f"the claim answered {len(flags)} flags for {n} marks")
    if flags.count("1") == n:  # the usual case: every candidate is new
        fresh = candidates
    else:
        fresh = []
        if marks.order is not None:  # back to the candidates' order
            ordered = [""] * n
            for i, flag in zip(marks.order, flags, strict=True):
                ordered[i] = flag
            flags = "".join(ordered)
        for ev, pos, flag in zip(candidates, checked.positions, flags, strict=True):
            if flag == "1":
                fresh.append(ev)
            elif flag == "0":
                results[pos] = EventResult(ev.event_id, "duplicate")
            else:
                results[pos] = _in_flight(ev.event_id)
    if fresh:
        try:
            await publish_events(runtime, fresh, timeout_s=limits.publish_timeout_s)
        except BaseException as exc:
            # Nothing was acknowledged: free this request's marks so a retry is taken.
            await _release(runtime, tok, marks, mine, len(fresh))
            metrics.BATCHES.labels("bus_down").inc()
            if isinstance(exc, BusUnavailable | TimeoutError | OSError):
                raise E.BusDown(
                    "bus.unavailable", "The event bus did not acknowledge; nothing was taken.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise
        await _confirm(runtime, tok, len(fresh), max(marks.expire_at) + SEEN_SHARDS)
    return _summarise(results)


async def _confirm(runtime: Runtime, tok: str, count: int, expire_at: int) -> None:
    """The durable ack is in: the request's token, hence every mark holding it, is stored (the
    token key lives as long as the latest of its buckets)."""
    try:
        await runtime.redis.set(tok, STORED, exat=expire_at)
    except Exception:  # stored on the bus; the token key expires, the ledger dedupes a retry
        log.warning("dedupe_marks_not_confirmed", count=count)


async def _release(runtime: Runtime, tok: str, marks: _Marks, mine: str, count: int) -> None:
    """Every id of the batch is sent; only the fields holding this request's token go."""
    try:
        await _script(runtime.redis, _RELEASE_LUA)(
            keys=[tok, *marks.buckets], args=[mine, SEEN_SHARDS, *marks.counts, *marks.ids])
    except Exception:  # Redis down too: the token key expires after its short TTL
        log.warning("dedupe_marks_not_removed", count=count)


_topics_ready: set[tuple[int, str]] = set()


async def ensure_topic(runtime: Runtime, topic: str) -> None:
    marker = (id(runtime.bus), topic)
    if marker not in _topics_ready:
        await runtime.bus.ensure_topics([topic])
        _topics_ready.add(marker)


async def publish_events(
    runtime: Runtime, events: Sequence[RawBusEvent | BusEvent], *,
    timeout_s: float | None = None,
) -> None:
    """Publish events grouped by citizen bucket; return once the bus acked every message."""
    topic = events_topic(runtime.settings)
    groups: dict[int, list[RawBusEvent | BusEvent]] = {}
    buckets: dict[UUID | bytes, int] = {}
    for ev in events:
        citizen = ev.citizen_id
        bucket = buckets.get(citizen)
        if bucket is None:
            raw = citizen if isinstance(citizen, bytes) else citizen.bytes
            bucket = buckets[citizen] = bucket_of_raw(raw)
        groups.setdefault(bucket, []).append(ev)
    # Both kinds of event have one wire form (UUIDs as 16 bytes). The bucket is the shard.
    messages = [
        Message(key_of_bucket(bucket),
                bus_encoder.encode(RawEnvelope(ENVELOPE_VERSION, evs)),  # type: ignore[arg-type]
                shard=bucket)
        for bucket, evs in groups.items()
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
