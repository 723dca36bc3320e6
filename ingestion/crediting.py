"""Crediting one worker batch: rules in force at ``occurred_at``, caps, the ledger — in the
caller's one transaction, set-based (a handful of statements per batch, none per event).

- Art. 31: the reduction rule and the conversion rule **in force at ``occurred_at``** are
  applied (both are versioned; the entry records the versions used).
- Caps: per event (the rule's ``cap_grams_per_event``), then per citizen, scene and
  behaviour per Asia/Shanghai business day and per business year, for the whole batch: one
  statement reads the batch's rows of ``ingest_cap_usage``, one adds what was granted. Within
  a batch a citizen's events take the cap in ``occurred_at`` order.
- Events that cannot be processed (no rule at ``occurred_at``) go to the dead-letter table.

Columnar and cheap per event: the worker decodes the bus messages into
:class:`~ingestion.schemas.RawBusEvent` (UUIDs as 16 raw bytes), prices them in one pass into
columns, and hands the columns to :func:`points.service.credit_columns`, which COPYs them. A
UUID becomes a string once per distinct value, for the database. The statements run on the
session's own asyncpg connection (same transaction).
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import array_text, asyncpg_connection, quoted
from ingestion import errors as E
from ingestion.schemas import (
    ENVELOPE_VERSION,
    RawBusEvent,
    RawEnvelope,
    bucket_of_raw,
    bus_encoder,
)
from points.binary import timestamptz

SHANGHAI = dt.timedelta(hours=8)  # Asia/Shanghai: UTC+8, no daylight saving since 1991


def business_date(at: dt.datetime) -> dt.date:
    """The Asia/Shanghai business date of an aware instant."""
    offset = at.utcoffset()
    return (at + (SHANGHAI - offset if offset is not None else SHANGHAI)).date()


@dataclass(slots=True)
class DeadLetter:
    """One event or message the worker could not process."""

    key: bytes
    payload: bytes
    reason_code: str
    reason: str
    scene_id: UUID | None = None
    event_id: str | None = None


@dataclass(slots=True)
class Outcome:
    credited: int = 0
    duplicates: int = 0
    points: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def dead_event(ev: RawBusEvent, key: bytes, code: str, reason: str) -> DeadLetter:
    return DeadLetter(
        key=key, payload=bus_encoder.encode(RawEnvelope(ENVELOPE_VERSION, [ev])),
        reason_code=code, reason=reason, scene_id=UUID(bytes=ev.scene_id),
        event_id=ev.event_id,
    )


def uuid_text(raw: bytes) -> str:
    """A 16-byte UUID as the hex text PostgreSQL (and asyncpg) take for a uuid."""
    return raw.hex()


@dataclass(slots=True)
class Priced:
    """A batch's events with their rules applied, before the daily and yearly caps, as
    columns (one list per field, aligned). ``day`` is the Asia/Shanghai business date of a
    capped event (None when its rule has no day or year cap); the rule version ids are
    UUID strings; ``occurred_us`` is each ``occurred_at`` as PostgreSQL's binary timestamptz
    (the batch sorts by it twice, and the ledger's COPY writes it)."""

    events: list[RawBusEvent] = field(default_factory=list)
    occurred_us: list[int] = field(default_factory=list)
    day: list[dt.date | None] = field(default_factory=list)
    grams: list[int] = field(default_factory=list)
    day_cap: list[int | None] = field(default_factory=list)
    year_cap: list[int | None] = field(default_factory=list)
    grams_per_point: list[int] = field(default_factory=list)
    reduction_rule: list[str] = field(default_factory=list)
    conversion_rule: list[str] = field(default_factory=list)

    def add(self, ev: RawBusEvent, grams: int, day_cap: int | None, year_cap: int | None,
            grams_per_point: int, reduction_rule: UUID, conversion_rule: UUID) -> None:
        self.events.append(ev)
        self.occurred_us.append(timestamptz(ev.occurred_at))
        self.day.append(business_date(ev.occurred_at)
                        if day_cap is not None or year_cap is not None else None)
        self.grams.append(grams)
        self.day_cap.append(day_cap)
        self.year_cap.append(year_cap)
        self.grams_per_point.append(grams_per_point)
        self.reduction_rule.append(str(reduction_rule))
        self.conversion_rule.append(str(conversion_rule))

    def __len__(self) -> int:
        return len(self.events)


_VARIES = object()


def by_pair(events: Sequence[RawBusEvent]) -> dict[tuple[bytes, str], list[int]]:
    """The positions of a batch's events per (scene, behaviour), in batch order."""
    pairs: dict[tuple[bytes, str], list[int]] = {}
    for i, ev in enumerate(events):
        k = (ev.scene_id, ev.behaviour)
        at = pairs.get(k)
        if at is None:
            pairs[k] = [i]
        else:
            at.append(i)
    return pairs


def rule_pairs(pairs: dict[tuple[bytes, str], list[int]]) -> set[tuple[UUID, str]]:
    """The (scene, behaviour) pairs of a batch (:func:`by_pair`), for
    :func:`scenes.service.rulebook`."""
    return {(UUID(bytes=s), b) for s, b in pairs}


def price_events(
    events: Sequence[RawBusEvent], keys: Sequence[bytes], rulebook: Any,
    pairs: dict[tuple[bytes, str], list[int]] | None = None,
) -> tuple[Priced, list[DeadLetter]]:
    """Apply the reduction and conversion rules in force at each ``occurred_at`` and the
    per-event cap (Art. 31); events without a rule become dead letters. ``keys`` are the
    events' bus keys (aligned), kept on their dead letters; ``pairs`` is :func:`by_pair`.

    The priced events come (scene, behaviour) after (scene, behaviour), each pair's in batch
    order. A pair whose one reduction version is in force over all its events (in force at
    the earliest and the latest ``occurred_at`` means at every one), under one conversion
    version, is priced a column at a time; the others event by event.
    """
    priced = Priced()
    dead: list[DeadLetter] = []
    if not events:
        return priced, dead
    if pairs is None:
        pairs = by_pair(events)
    occurred = [ev.occurred_at for ev in events]
    conversion: Any = rulebook.conversion_at(min(occurred))
    if conversion is None or conversion is not rulebook.conversion_at(max(occurred)):
        conversion = _VARIES
    texts: dict[UUID, str] = {}
    for (scene, behaviour), at in pairs.items():
        scene_id = UUID(bytes=scene)
        when = [occurred[i] for i in at]
        rule = rulebook.rule_at(scene_id, behaviour, min(when))
        if rule is None or conversion is _VARIES \
                or rule is not rulebook.rule_at(scene_id, behaviour, max(when)):
            _price_one_by_one(priced, dead, events, keys, at, rulebook, texts)
            continue
        evs = [events[i] for i in at]
        m = len(evs)
        priced.events.extend(evs)
        priced.occurred_us.extend([timestamptz(t) for t in when])
        priced.grams.extend(rule.grams_for_all([ev.quantity_milli for ev in evs]))
        day_cap, year_cap = rule.cap_grams_per_day, rule.cap_grams_per_year
        # ``occurred_at`` is UTC: its Shanghai date
        priced.day.extend([(t + SHANGHAI).date() for t in when]
                          if day_cap is not None or year_cap is not None else [None] * m)
        priced.day_cap.extend([day_cap] * m)
        priced.year_cap.extend([year_cap] * m)
        priced.grams_per_point.extend([conversion.grams_per_point] * m)
        priced.reduction_rule.extend(
            [texts.setdefault(rule.version_id, str(rule.version_id))] * m)
        priced.conversion_rule.extend(
            [texts.setdefault(conversion.version_id, str(conversion.version_id))] * m)
    return priced, dead


def _price_one_by_one(
    priced: Priced, dead: list[DeadLetter], events: Sequence[RawBusEvent],
    keys: Sequence[bytes], positions: list[int], rulebook: Any, texts: dict[UUID, str],
) -> None:
    """Price the events at ``positions`` (one scene and behaviour) each by the versions in
    force at its ``occurred_at``."""
    for i in positions:
        ev = events[i]
        at = ev.occurred_at
        rule = rulebook.rule_at(UUID(bytes=ev.scene_id), ev.behaviour, at)
        if rule is None:
            dead.append(dead_event(ev, keys[i], E.DL_RULE_MISSING,
                                   f"no reduction rule for {ev.behaviour} at {at}"))
            continue
        conversion = rulebook.conversion_at(at)
        if conversion is None:
            dead.append(dead_event(ev, keys[i], E.DL_CONVERSION_MISSING,
                                   f"no conversion rule at {at}"))
            continue
        day_cap, year_cap = rule.cap_grams_per_day, rule.cap_grams_per_year
        priced.events.append(ev)
        priced.occurred_us.append(timestamptz(at))
        priced.grams.append(rule.grams_for(ev.quantity_milli))  # the per-event cap included
        priced.day.append((at + SHANGHAI).date()
                          if day_cap is not None or year_cap is not None else None)
        priced.day_cap.append(day_cap)
        priced.year_cap.append(year_cap)
        priced.grams_per_point.append(conversion.grams_per_point)
        priced.reduction_rule.append(texts.setdefault(rule.version_id, str(rule.version_id)))
        priced.conversion_rule.append(
            texts.setdefault(conversion.version_id, str(conversion.version_id)))


# The bus never hands one citizen bucket to two consumers at once, except for a moment
# during a Kafka rebalance. For that moment, a transaction-scoped advisory lock per bucket
# of the batch (taken in order: no deadlock; at most BUCKETS locks) serialises the readers
# and writers of a citizen's usage rows, so the caps stay exact. Taken before the caps
# statement, whose snapshot then sees the previous holder's committed usage.
CAPS_LOCK_CLASS = zlib.crc32(b"tanhui.ingestion.caps") - 2**31  # advisory-lock namespace
_LOCK_BUCKETS = """
SELECT count(pg_advisory_xact_lock($1::int4, b)) FROM
  (SELECT b FROM unnest($2::int4[]) AS b ORDER BY b) AS t
"""

# The batch's usage rows (what earlier batches granted), one index probe per row; a row's
# position in the key columns (``WITH ORDINALITY``, from 1) says which key it is. A key names
# its citizen and scene by position in $1 and $2, the batch's distinct ones (uuid arrays, sent
# binary); the key columns go as the arrays' text (``app.db.array_text``): the server parses
# a uuid's text slower than asyncpg encodes it, the other columns' text faster.
_CAP_USAGE = """
SELECT k.ord, u.used_grams
FROM unnest($3::text::int4[], $4::text::int4[], $5::text::text[], $6::text::text[],
            $7::text::date[])
     WITH ORDINALITY AS k(citizen, scene, behaviour, kind, period, ord)
JOIN ingest_cap_usage u ON u.citizen_id = ($1::uuid[])[k.citizen]
 AND u.scene_id = ($2::uuid[])[k.scene] AND u.behaviour = k.behaviour AND u.kind = k.kind
 AND u.period = k.period
"""

# What the batch granted, added to the usage rows (a missing row starts at 0). The rows are
# upserted in key order, so two batches never wait on each other's rows in opposite orders.
_ADD_CAP_USAGE = """
INSERT INTO ingest_cap_usage AS u (citizen_id, scene_id, behaviour, kind, period, used_grams)
SELECT ($1::uuid[])[k.citizen], ($2::uuid[])[k.scene], k.behaviour, k.kind, k.period, k.grams
FROM unnest($3::text::int4[], $4::text::int4[], $5::text::text[], $6::text::text[],
            $7::text::date[], $8::text::int8[]) AS k(citizen, scene, behaviour, kind, period, grams)
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (citizen_id, scene_id, behaviour, kind, period)
DO UPDATE SET used_grams = u.used_grams + excluded.used_grams
"""


def _position(positions: dict[bytes, str], key: bytes) -> str:
    """``key``'s position (from 1, as text) among the distinct keys met so far."""
    at = positions.get(key)
    if at is None:
        at = positions[key] = str(len(positions) + 1)
    return at


async def apply_caps(session: AsyncSession, priced: Priced) -> list[int]:
    """Each event's grams after the daily and yearly caps (and record what was used).

    Greedy in ``occurred_at`` order (batch order on ties): an event gets the least of its
    grams and what is left of its day's and its year's cap after the earlier batches (the
    usage rows) and the batch's earlier events. One statement reads the usage rows of the
    batch's (citizen, scene, behaviour, period) keys, the arithmetic is done here, one
    statement adds what was granted.
    """
    granted = list(priced.grams)
    events, day_caps, year_caps, days = priced.events, priced.day_cap, priced.year_cap, \
        priced.day
    capped = [i for i, day in enumerate(days) if day is not None]  # a day or a year cap
    if not capped:
        return granted
    capped.sort(key=priced.occurred_us.__getitem__)  # stable: ties stay in batch order
    # Events of one (citizen, scene, behaviour, business day) share a group; a group's usage
    # keys (its day's, its year's) are made once, when an event of the group has that cap.
    group_of: dict[tuple[bytes, bytes, str, dt.date], int] = {}
    group: list[int] = []  # per capped event, in ``capped`` order
    day_key: list[int] = []  # per group: position of its day key, or -1
    year_key: list[int] = []
    # The usage keys, as the columns of the lookup: citizen, scene (each as its position, from
    # 1, among the distinct ones), behaviour, kind, period.
    citizen_at: dict[bytes, str] = {}
    scene_at: dict[bytes, str] = {}
    citizens: list[str] = []
    scenes: list[str] = []
    behaviours: list[str] = []
    kinds: list[str] = []
    periods: list[dt.date] = []
    years: dict[dt.date, dt.date] = {}
    year_of: dict[tuple[bytes, bytes, str, dt.date], int] = {}
    add_group = group.append
    for i in capped:
        ev = events[i]
        day = days[i]
        assert day is not None
        k = (ev.citizen_id, ev.scene_id, ev.behaviour, day)
        g = group_of.get(k)
        if g is None:
            g = group_of[k] = len(day_key)
            day_key.append(-1)
            year_key.append(-1)
        add_group(g)
        if day_caps[i] is not None and day_key[g] < 0:
            day_key[g] = len(kinds)
            citizens.append(_position(citizen_at, ev.citizen_id))
            scenes.append(_position(scene_at, ev.scene_id))
            behaviours.append(ev.behaviour)
            kinds.append("d")
            periods.append(day)
        if year_caps[i] is not None and year_key[g] < 0:
            year = years.get(day)
            if year is None:
                year = years[day] = day.replace(month=1, day=1)
            yk = (ev.citizen_id, ev.scene_id, ev.behaviour, year)  # the days of a year share it
            y = year_of.get(yk)
            if y is None:
                y = year_of[yk] = len(kinds)
                citizens.append(_position(citizen_at, ev.citizen_id))
                scenes.append(_position(scene_at, ev.scene_id))
                behaviours.append(ev.behaviour)
                kinds.append("y")
                periods.append(year)
            year_key[g] = y
    buckets = sorted({bucket_of_raw(c) for c in citizen_at})
    conn = await asyncpg_connection(session)
    await conn.fetchval(_LOCK_BUCKETS, CAPS_LOCK_CLASS, buckets)
    distinct = ([uuid_text(c) for c in citizen_at], [uuid_text(s) for s in scene_at])
    texts: dict[Any, str] = {b: quoted(b) for b in set(behaviours)}
    texts.update((p, p.isoformat()) for p in set(periods))
    behaviour_text = [texts[b] for b in behaviours]
    period_text = [texts[p] for p in periods]
    used = [0] * len(kinds)  # by key position (the database counts from 1)
    for ord_, grams in await conn.fetch(
            _CAP_USAGE, *distinct, array_text(citizens), array_text(scenes),
            array_text(behaviour_text), array_text(kinds), array_text(period_text)):
        used[ord_ - 1] = grams
    added = [0] * len(kinds)
    for n, i in enumerate(capped):
        g = granted[i]
        cap = day_caps[i]
        d = day_key[group[n]] if cap is not None else -1
        if d >= 0:
            g = min(g, cap - used[d])  # type: ignore[operator]
        cap = year_caps[i]
        y = year_key[group[n]] if cap is not None else -1
        if y >= 0:
            g = min(g, cap - used[y])  # type: ignore[operator]
        if g > 0:
            if d >= 0:
                used[d] += g
                added[d] += g
            if y >= 0:
                used[y] += g
                added[y] += g
        else:
            g = 0
        granted[i] = g
    moved = [j for j in range(len(kinds)) if added[j]]
    if moved:
        await conn.execute(
            _ADD_CAP_USAGE, *distinct, array_text([citizens[j] for j in moved]),
            array_text([scenes[j] for j in moved]),
            array_text([behaviour_text[j] for j in moved]),
            array_text([kinds[j] for j in moved]), array_text([period_text[j] for j in moved]),
            array_text([str(added[j]) for j in moved]))
    return granted


_INSERT_DEAD = """
INSERT INTO ingest_dead_letters (topic, key, payload, scene_id, event_id, reason_code, reason)
SELECT $1, k, p, s, e, c, r FROM unnest(
    $2::bytea[], $3::bytea[], $4::uuid[], $5::text[], $6::text[], $7::text[]
) AS t(k, p, s, e, c, r)
ON CONFLICT DO NOTHING
"""


async def store_dead_letters(session: AsyncSession, topic: str, dead: list[DeadLetter]) -> None:
    if not dead:
        return
    conn = await asyncpg_connection(session)
    await conn.execute(
        _INSERT_DEAD, topic, [d.key for d in dead], [d.payload for d in dead],
        [d.scene_id for d in dead], [d.event_id for d in dead],
        [d.reason_code for d in dead], [d.reason[:1000] for d in dead],
    )
