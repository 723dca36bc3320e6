"""Crediting one worker batch: rules in force at ``occurred_at``, caps, the ledger — in the
caller's one transaction, set-based (a handful of statements per batch, none per event).

- Art. 31: the reduction rule and the conversion rule **in force at ``occurred_at``** are
  applied (both are versioned; the entry records the versions used).
- Caps: per event (the rule's ``cap_grams_per_event``), then per citizen, scene and
  behaviour per Asia/Shanghai business day and per business year, computed for the whole batch
  in one SQL statement against ``ingest_cap_usage`` (updated in the same statement). Within a
  batch a citizen's events take the cap in ``occurred_at`` order.
- Events that cannot be processed (no rule at ``occurred_at``) go to the dead-letter table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ingestion import errors as E
from ingestion.schemas import ENVELOPE_VERSION, BusEvent, Envelope, bus_encoder, from_us

# Asia/Shanghai has kept UTC+8 without daylight saving since 1991; business dates of events
# (all within a claim window of at most a year) are computed with that fixed offset.
SHANGHAI_OFFSET_US = 8 * 3600 * 1_000_000
DAY_US = 86_400 * 1_000_000
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def business_date(occurred_us: int) -> dt.date:
    return dt.date.fromordinal(EPOCH_ORDINAL + (occurred_us + SHANGHAI_OFFSET_US) // DAY_US)


@dataclass(slots=True)
class DeadLetter:
    """One event or message the worker could not process."""

    key: bytes
    payload: bytes
    reason_code: str
    reason: str
    scene_id: str | None = None
    event_id: str | None = None


@dataclass(slots=True)
class Outcome:
    credited: int = 0
    duplicates: int = 0
    points: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def dead_event(ev: BusEvent, key: bytes, code: str, reason: str) -> DeadLetter:
    return DeadLetter(
        key=key, payload=bus_encoder.encode(Envelope(ENVELOPE_VERSION, [ev])),
        reason_code=code, reason=reason, scene_id=ev.scene_id, event_id=ev.event_id,
    )


# One statement: each event's grams after the daily and yearly caps, and the usage rows
# moved by what was granted. The rows were locked by _LOCK_USAGE just before (in key order,
# so concurrent workers never deadlock on them). Greedy in ``ord`` order: an event gets
# min(its grams, what is left of the cap after the earlier events of the batch).
_APPLY_CAPS = text("""
WITH ev AS (
    SELECT * FROM unnest(
        CAST(:ord AS int[]), CAST(:citizen AS uuid[]), CAST(:scene AS uuid[]),
        CAST(:behaviour AS text[]), CAST(:day AS date[]), CAST(:year AS date[]),
        CAST(:grams AS bigint[]), CAST(:day_cap AS bigint[]), CAST(:year_cap AS bigint[])
    ) AS t(ord, citizen_id, scene_id, behaviour, day, yr, grams, day_cap, year_cap)
),
d AS (
    SELECT ev.*, CASE WHEN ev.day_cap IS NULL THEN ev.grams ELSE GREATEST(0, LEAST(ev.grams,
             ev.day_cap - COALESCE(u.used_grams, 0)
             - (sum(ev.grams) OVER w - ev.grams))) END AS dg
    FROM ev LEFT JOIN ingest_cap_usage u
      ON u.citizen_id = ev.citizen_id AND u.scene_id = ev.scene_id
     AND u.behaviour = ev.behaviour AND u.kind = 'd' AND u.period = ev.day
    WINDOW w AS (PARTITION BY ev.citizen_id, ev.scene_id, ev.behaviour, ev.day ORDER BY ev.ord)
),
y AS (
    SELECT d.*, CASE WHEN d.year_cap IS NULL THEN d.dg ELSE GREATEST(0, LEAST(d.dg,
             d.year_cap - COALESCE(u.used_grams, 0)
             - (sum(d.dg) OVER w - d.dg))) END AS g
    FROM d LEFT JOIN ingest_cap_usage u
      ON u.citizen_id = d.citizen_id AND u.scene_id = d.scene_id
     AND u.behaviour = d.behaviour AND u.kind = 'y' AND u.period = d.yr
    WINDOW w AS (PARTITION BY d.citizen_id, d.scene_id, d.behaviour, d.yr ORDER BY d.ord)
),
moved AS (
    SELECT citizen_id, scene_id, behaviour, 'd' AS kind, day AS period, sum(g) AS add
      FROM y WHERE day_cap IS NOT NULL GROUP BY citizen_id, scene_id, behaviour, day
    UNION ALL
    SELECT citizen_id, scene_id, behaviour, 'y', yr, sum(g)
      FROM y WHERE year_cap IS NOT NULL GROUP BY citizen_id, scene_id, behaviour, yr
),
upd AS (
    UPDATE ingest_cap_usage u SET used_grams = u.used_grams + m.add
      FROM moved m
     WHERE u.citizen_id = m.citizen_id AND u.scene_id = m.scene_id
       AND u.behaviour = m.behaviour AND u.kind = m.kind AND u.period = m.period
       AND m.add > 0
)
SELECT ord, g FROM y
""")

# Make sure every usage row of the batch exists and lock them all, in key order.
_LOCK_USAGE = text("""
INSERT INTO ingest_cap_usage (citizen_id, scene_id, behaviour, kind, period, used_grams)
SELECT DISTINCT c, s, b, k, p, 0 FROM unnest(
    CAST(:citizen AS uuid[]), CAST(:scene AS uuid[]), CAST(:behaviour AS text[]),
    CAST(:kind AS text[]), CAST(:period AS date[])
) AS t(c, s, b, k, p)
ORDER BY c, s, b, k, p
ON CONFLICT (citizen_id, scene_id, behaviour, kind, period)
DO UPDATE SET used_grams = ingest_cap_usage.used_grams
""")


@dataclass(slots=True)
class Priced:
    """An event with its rules applied, before the daily and yearly caps."""

    event: BusEvent
    occurred_at: dt.datetime
    day: dt.date
    grams: int
    day_cap: int | None
    year_cap: int | None
    grams_per_point: int
    reduction_rule_version_id: UUID
    conversion_rule_version_id: UUID


def price_events(
    events: Sequence[tuple[bytes, BusEvent]], rulebook: Any
) -> tuple[list[Priced], list[DeadLetter]]:
    """Apply the reduction and conversion rules in force at each ``occurred_at`` and the
    per-event cap; events without a rule become dead letters."""
    priced: list[Priced] = []
    dead: list[DeadLetter] = []
    scenes: dict[str, UUID] = {}
    for key, ev in events:
        scene = scenes.get(ev.scene_id)
        if scene is None:
            scene = scenes[ev.scene_id] = UUID(ev.scene_id)
        occurred = from_us(ev.occurred_us)
        rule = rulebook.rule_at(scene, ev.behaviour, occurred)
        if rule is None:
            dead.append(dead_event(ev, key, E.DL_RULE_MISSING,
                                   f"no reduction rule for {ev.behaviour} at {occurred}"))
            continue
        conversion = rulebook.conversion_at(occurred)
        if conversion is None:
            dead.append(dead_event(ev, key, E.DL_CONVERSION_MISSING,
                                   f"no conversion rule at {occurred}"))
            continue
        grams = rule.grams_for(ev.quantity_milli)
        if rule.cap_grams_per_event is not None and grams > rule.cap_grams_per_event:
            grams = rule.cap_grams_per_event
        priced.append(Priced(
            ev, occurred, business_date(ev.occurred_us), grams,
            rule.cap_grams_per_day, rule.cap_grams_per_year,
            conversion.grams_per_point, rule.version_id, conversion.version_id,
        ))
    return priced, dead


async def apply_caps(session: AsyncSession, priced: list[Priced]) -> list[int]:
    """Each event's grams after the daily and yearly caps (and record what was used)."""
    order = sorted(range(len(priced)), key=lambda i: (priced[i].event.occurred_us, i))
    capped = [i for i in order if priced[i].day_cap is not None or priced[i].year_cap is not None]
    granted = [p.grams for p in priced]
    if not capped:
        return granted
    lock: dict[str, list[Any]] = {"citizen": [], "scene": [], "behaviour": [], "kind": [],
                                  "period": []}
    cols: dict[str, list[Any]] = {k: [] for k in (
        "ord", "citizen", "scene", "behaviour", "day", "year", "grams", "day_cap", "year_cap")}
    for i in capped:
        p = priced[i]
        ev = p.event
        year = dt.date(p.day.year, 1, 1)
        for kind, period, cap in (("d", p.day, p.day_cap), ("y", year, p.year_cap)):
            if cap is not None:
                lock["citizen"].append(ev.citizen_id)
                lock["scene"].append(ev.scene_id)
                lock["behaviour"].append(ev.behaviour)
                lock["kind"].append(kind)
                lock["period"].append(period)
        cols["ord"].append(i)
        cols["citizen"].append(ev.citizen_id)
        cols["scene"].append(ev.scene_id)
        cols["behaviour"].append(ev.behaviour)
        cols["day"].append(p.day)
        cols["year"].append(year)
        cols["grams"].append(p.grams)
        cols["day_cap"].append(p.day_cap)
        cols["year_cap"].append(p.year_cap)
    await session.execute(_LOCK_USAGE, lock)
    for ord_, g in (await session.execute(_APPLY_CAPS, cols)).all():
        granted[ord_] = int(g)
    return granted


_INSERT_DEAD = text("""
INSERT INTO ingest_dead_letters (topic, key, payload, scene_id, event_id, reason_code, reason)
SELECT :topic, k, p, s, e, c, r FROM unnest(
    CAST(:key AS bytea[]), CAST(:payload AS bytea[]), CAST(:scene AS uuid[]),
    CAST(:event AS text[]), CAST(:code AS text[]), CAST(:reason AS text[])
) AS t(k, p, s, e, c, r)
ON CONFLICT DO NOTHING
""")


async def store_dead_letters(session: AsyncSession, topic: str, dead: list[DeadLetter]) -> None:
    if not dead:
        return
    await session.execute(_INSERT_DEAD, {
        "topic": topic,
        "key": [d.key for d in dead],
        "payload": [d.payload for d in dead],
        "scene": [d.scene_id for d in dead],
        "event": [d.event_id for d in dead],
        "code": [d.reason_code for d in dead],
        "reason": [d.reason[:1000] for d in dead],
    })
