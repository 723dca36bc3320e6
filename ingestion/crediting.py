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

from app.db import asyncpg_connection
from ingestion import errors as E
from ingestion.schemas import (
    ENVELOPE_VERSION,
    RawBusEvent,
    RawEnvelope,
    bucket_of_raw,
    bus_encoder,
)

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
    UUID strings."""

    events: list[RawBusEvent] = field(default_factory=list)
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


def rule_pairs(events: Sequence[RawBusEvent]) -> set[tuple[UUID, str]]:
    """The (scene, behaviour) pairs of a batch, for :func:`scenes.service.rulebook`."""
    return {(UUID(bytes=s), b) for s, b in {(ev.scene_id, ev.behaviour) for ev in events}}


def _fixed_rules(events: Sequence[RawBusEvent], rulebook: Any) -> tuple[
        dict[tuple[bytes, str], Any], Any]:
    """Per (scene, behaviour), the one reduction version in force over all the batch's
    events, else ``_VARIES``; likewise the conversion version. A version is in force over an
    interval: in force at the earliest and the latest ``occurred_at`` means at every one."""
    span: dict[tuple[bytes, str], list[dt.datetime]] = {}
    for ev in events:
        at = ev.occurred_at
        k = (ev.scene_id, ev.behaviour)
        seen = span.get(k)
        if seen is None:
            span[k] = [at, at]
        elif at < seen[0]:
            seen[0] = at
        elif at > seen[1]:
            seen[1] = at
    fixed: dict[tuple[bytes, str], Any] = {}
    first = last = None
    for (scene, behaviour), (lo, hi) in span.items():
        scene_id = UUID(bytes=scene)
        rule = rulebook.rule_at(scene_id, behaviour, lo)
        fixed[(scene, behaviour)] = (
            rule if rule is not None and rule is rulebook.rule_at(scene_id, behaviour, hi)
            else _VARIES)
        first = lo if first is None or lo < first else first
        last = hi if last is None or hi > last else last
    conversion: Any = _VARIES
    if first is not None:
        c = rulebook.conversion_at(first)
        if c is not None and c is rulebook.conversion_at(last):
            conversion = c
    return fixed, conversion


def price_events(
    events: Sequence[RawBusEvent], keys: Sequence[bytes], rulebook: Any
) -> tuple[Priced, list[DeadLetter]]:
    """Apply the reduction and conversion rules in force at each ``occurred_at`` and the
    per-event cap (Art. 31); events without a rule become dead letters. ``keys`` are the
    events' bus keys (aligned), kept on their dead letters."""
    priced = Priced()
    dead: list[DeadLetter] = []
    fixed, fixed_conversion = _fixed_rules(events, rulebook)
    # One pass, appending to the columns directly (the method calls of ``Priced.add`` per
    # event would cost as much as the pricing).
    add_event, add_day, add_grams = priced.events.append, priced.day.append, \
        priced.grams.append
    add_day_cap, add_year_cap = priced.day_cap.append, priced.year_cap.append
    add_gpp, add_rrv, add_crv = priced.grams_per_point.append, \
        priced.reduction_rule.append, priced.conversion_rule.append
    texts: dict[UUID, str] = {}
    rule: Any = None
    last_rule: Any = None
    last_conversion: Any = None
    rrv = crv = ""
    for i, ev in enumerate(events):
        at = ev.occurred_at
        rule = fixed[(ev.scene_id, ev.behaviour)]
        if rule is _VARIES:
            rule = rulebook.rule_at(UUID(bytes=ev.scene_id), ev.behaviour, at)
        if rule is None:
            dead.append(dead_event(ev, keys[i], E.DL_RULE_MISSING,
                                   f"no reduction rule for {ev.behaviour} at {at}"))
            continue
        conversion = fixed_conversion
        if conversion is _VARIES:
            conversion = rulebook.conversion_at(at)
        if conversion is None:
            dead.append(dead_event(ev, keys[i], E.DL_CONVERSION_MISSING,
                                   f"no conversion rule at {at}"))
            continue
        if rule is not last_rule:
            last_rule = rule
            rrv = texts.setdefault(rule.version_id, str(rule.version_id))
        if conversion is not last_conversion:
            last_conversion = conversion
            crv = texts.setdefault(conversion.version_id, str(conversion.version_id))
        day_cap, year_cap = rule.cap_grams_per_day, rule.cap_grams_per_year
        add_event(ev)
        add_grams(rule.grams_for(ev.quantity_milli))  # the per-event cap included
        add_day((at + SHANGHAI).date()  # ``at`` is UTC: its Shanghai date
                if day_cap is not None or year_cap is not None else None)
        add_day_cap(day_cap)
        add_year_cap(year_cap)
        add_gpp(conversion.grams_per_point)
        add_rrv(rrv)
        add_crv(crv)
    return priced, dead


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

# The batch's usage rows (what earlier batches granted), one index probe per row.
_CAP_USAGE = """
SELECT k.ord, u.used_grams
FROM unnest($1::int4[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::date[])
     AS k(ord, citizen_id, scene_id, behaviour, kind, period)
JOIN ingest_cap_usage u ON u.citizen_id = k.citizen_id AND u.scene_id = k.scene_id
 AND u.behaviour = k.behaviour AND u.kind = k.kind AND u.period = k.period
"""

# What the batch granted, added to the usage rows (a missing row starts at 0). The rows are
# upserted in key order, so two batches never wait on each other's rows in opposite orders.
_ADD_CAP_USAGE = """
INSERT INTO ingest_cap_usage AS u (citizen_id, scene_id, behaviour, kind, period, used_grams)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::date[], $6::int8[])
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (citizen_id, scene_id, behaviour, kind, period)
DO UPDATE SET used_grams = u.used_grams + excluded.used_grams
"""

_CapKey = tuple[bytes, bytes, str, str, dt.date]


async def apply_caps(session: AsyncSession, priced: Priced) -> list[int]:
    """Each event's grams after the daily and yearly caps (and record what was used).

    Greedy in ``occurred_at`` order (batch order on ties): an event gets the least of its
    grams and what is left of its day's and its year's cap after the earlier batches (the
    usage rows) and the batch's earlier events. One statement reads the usage rows of the
    batch's (citizen, scene, behaviour, period) keys, the arithmetic is done here, one
    statement adds what was granted.
    """
    granted = list(priced.grams)
    events, day_caps, year_caps = priced.events, priced.day_cap, priced.year_cap
    capped = [i for i in range(len(events))
              if day_caps[i] is not None or year_caps[i] is not None]
    if not capped:
        return granted
    occurred = [ev.occurred_at for ev in events]
    capped.sort(key=occurred.__getitem__)  # stable: ties stay in batch order
    days = priced.day
    day_key: dict[int, _CapKey] = {}
    year_key: dict[int, _CapKey] = {}
    keys: dict[_CapKey, int] = {}  # key → its position in the lookup
    years: dict[dt.date, dt.date] = {}
    for i in capped:
        ev = events[i]
        day = days[i]
        assert day is not None
        if day_caps[i] is not None:
            k = day_key[i] = (ev.citizen_id, ev.scene_id, ev.behaviour, "d", day)
            keys.setdefault(k, len(keys))
        if year_caps[i] is not None:
            year = years.get(day)
            if year is None:
                year = years[day] = day.replace(month=1, day=1)
            k = year_key[i] = (ev.citizen_id, ev.scene_id, ev.behaviour, "y", year)
            keys.setdefault(k, len(keys))
    citizens = {k[0] for k in keys}
    buckets = sorted({bucket_of_raw(c) for c in citizens})
    conn = await asyncpg_connection(session)
    await conn.fetchval(_LOCK_BUCKETS, CAPS_LOCK_CLASS, buckets)
    key_list = list(keys)
    texts = {raw: uuid_text(raw) for raw in citizens | {k[1] for k in keys}}
    columns: list[list[Any]] = [list(c) for c in zip(*key_list, strict=True)]
    columns[0] = [texts[c] for c in columns[0]]
    columns[1] = [texts[c] for c in columns[1]]
    rows = await conn.fetch(_CAP_USAGE, list(range(len(key_list))), *columns)
    used = [0] * len(key_list)
    for ord_, grams in rows:
        used[ord_] = grams
    added = [0] * len(key_list)
    for i in capped:
        g = granted[i]
        dk = day_key.get(i)
        yk = year_key.get(i)
        if dk is not None:
            d = keys[dk]
            g = max(0, min(g, day_caps[i] - used[d]))  # type: ignore[operator]
        if yk is not None:
            y = keys[yk]
            g = max(0, min(g, year_caps[i] - used[y]))  # type: ignore[operator]
        granted[i] = g
        if g:
            if dk is not None:
                used[d] += g
                added[d] += g
            if yk is not None:
                used[y] += g
                added[y] += g
    moved = [j for j in range(len(key_list)) if added[j]]
    if moved:
        await conn.execute(
            _ADD_CAP_USAGE, *([col[j] for j in moved] for col in columns),
            [added[j] for j in moved])
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
