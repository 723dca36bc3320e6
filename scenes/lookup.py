"""Hot-path lookups for ingestion and the points worker: set-based, one query per batch.

Re-exported by :mod:`scenes.service`. Caching decisions:

- :func:`scene_for_ingest` keeps a per-process cache of :data:`SCENE_TTL_S` (1 s) per scene;
  a status change made in this process drops the entry at once, and other processes see it
  within 1 s. We chose a short TTL over a Redis version key because the Redis key would
  cost a round trip on every batch anyway, while the database row is the truth; 1 s is the
  bound on "refused at once" across processes (Art. 32).
- :func:`resolve_links` is never cached: a revocation must take effect on the next batch
  (Art. 34). It is one indexed query per batch.
- :func:`rulebook` is one query per batch returning every published version for the asked
  (scene, behaviour) pairs plus every published conversion version; published versions only
  ever gain an end when superseded, so nothing stale can be served.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String, Uuid

from scenes.errors import SceneNotActive, SceneUnknown

SCENE_TTL_S = 1.0
MILLI = 1_000


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What ingestion needs of a scene (低碳场景): its status, claim window and behaviours."""

    id: UUID
    code: str
    status: str
    claim_window_days: int
    behaviours: frozenset[str]

    @property
    def accepting(self) -> bool:
        """Art. 32: only an active scene's events are taken."""
        return self.status == "active"

    def require_accepting(self) -> None:
        """Raise 409 ``scene.not_active`` unless the scene is active."""
        if not self.accepting:
            raise SceneNotActive(self.status)


_scene_cache: dict[UUID, tuple[float, SceneInfo]] = {}


def invalidate_scene(scene_id: UUID | None = None) -> None:
    """Drop one scene (or all) from this process's cache; called on every status change."""
    if scene_id is None:
        _scene_cache.clear()
    else:
        _scene_cache.pop(scene_id, None)


async def scene_for_ingest(session: AsyncSession, scene_id: UUID) -> SceneInfo:
    """The scene as of at most :data:`SCENE_TTL_S` ago; 404 ``scene.unknown`` if none.

    The caller refuses events unless ``info.accepting`` (or calls ``require_accepting``).
    """
    mono = time.monotonic()
    hit = _scene_cache.get(scene_id)
    if hit is not None and hit[0] > mono:
        return hit[1]
    row = (
        await session.execute(
            text(
                "SELECT s.id, s.code, s.status, s.claim_window_days, "
                "coalesce(array_agg(b.code) FILTER (WHERE b.code IS NOT NULL), '{}') AS codes "
                "FROM scenes s LEFT JOIN scene_behaviours b ON b.scene_id = s.id "
                "WHERE s.id = :id GROUP BY s.id"
            ),
            {"id": scene_id},
        )
    ).one_or_none()
    if row is None:
        raise SceneUnknown()
    info = SceneInfo(row.id, row.code, row.status, row.claim_window_days, frozenset(row.codes))
    if len(_scene_cache) > 10_000:
        _scene_cache.clear()
    _scene_cache[scene_id] = (mono + SCENE_TTL_S, info)
    return info


@dataclass(frozen=True, slots=True)
class Link:
    """A partner user linked to a citizen, with the citizen's consent history for the scene.

    ``intervals`` are ``(granted_at, revoked_at | None)`` in grant order; ``consent_ids``
    are aligned with them; ``consent_id`` is the newest consent.
    """

    citizen_id: UUID
    consent_id: UUID
    intervals: tuple[tuple[datetime, datetime | None], ...]
    consent_ids: tuple[UUID, ...] = ()

    def consent_at(self, t: datetime) -> UUID | None:
        """The consent in force at ``t`` (granted at or before ``t``, not yet revoked)."""
        for i, (granted, revoked) in enumerate(self.intervals):
            if granted <= t and (revoked is None or t < revoked):
                return self.consent_ids[i] if self.consent_ids else self.consent_id
        return None

    def consented_at(self, t: datetime) -> bool:
        """Art. 34: was behaviour at ``t`` authorised? Events after revocation are refused."""
        return self.consent_at(t) is not None

    @property
    def consenting_now(self) -> bool:
        return bool(self.intervals) and self.intervals[-1][1] is None


async def resolve_links(
    session: AsyncSession, scene_id: UUID, partner_user_refs: Sequence[str]
) -> dict[str, Link]:
    """The links of a batch's partner user references in one query; unknown refs are absent."""
    refs = list(dict.fromkeys(partner_user_refs))
    if not refs:
        return {}
    stmt = text(
        "SELECT l.partner_user_ref, l.citizen_id, "
        "array_agg(c.id ORDER BY c.granted_at) AS ids, "
        "array_agg(c.granted_at ORDER BY c.granted_at) AS granted, "
        "array_agg(c.revoked_at ORDER BY c.granted_at) AS revoked "
        "FROM partner_links l JOIN consents c "
        "ON c.citizen_id = l.citizen_id AND c.scene_id = l.scene_id "
        "WHERE l.scene_id = :scene AND l.partner_user_ref = ANY(:refs) "
        "GROUP BY l.partner_user_ref, l.citizen_id"
    ).bindparams(bindparam("refs", type_=ARRAY(String())), bindparam("scene", type_=Uuid()))
    rows = (await session.execute(stmt, {"scene": scene_id, "refs": refs})).all()
    return {
        r.partner_user_ref: Link(
            citizen_id=r.citizen_id,
            consent_id=r.ids[-1],
            intervals=tuple(zip(r.granted, r.revoked, strict=True)),
            consent_ids=tuple(r.ids),
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class ReductionRule:
    """A published reduction rule version (减排量计算规则, Art. 31), integers only.

    ``grams_per_unit_milli``: milligrams CO2e per unit. ``max_quantity_per_event``: in
    milli-units (quantities arrive with at most 3 decimals). Caps in whole grams. The window
    is ``[valid_from, valid_to)``; ``valid_to`` None is open.
    """

    version_id: UUID
    version: int
    scene_id: UUID
    behaviour: str
    unit: str
    grams_per_unit_milli: int
    max_quantity_per_event: int | None
    cap_grams_per_event: int | None
    cap_grams_per_day: int | None
    cap_grams_per_year: int | None
    valid_from: datetime
    valid_to: datetime | None

    def covers(self, t: datetime) -> bool:
        return self.valid_from <= t and (self.valid_to is None or t < self.valid_to)

    def grams_for(self, quantity_milli: int) -> int:
        """Whole grams for one event: quantity cut to the per-event maximum, factor applied
        with integer arithmetic and floored, then cut to the per-event cap."""
        if quantity_milli < 0:
            raise ValueError("quantity must not be negative")
        q = quantity_milli
        if self.max_quantity_per_event is not None:
            q = min(q, self.max_quantity_per_event)
        grams = q * self.grams_per_unit_milli // (MILLI * MILLI)
        if self.cap_grams_per_event is not None:
            grams = min(grams, self.cap_grams_per_event)
        return grams


@dataclass(frozen=True, slots=True)
class ConversionRule:
    """A published conversion rule version (碳积分转换规则): whole grams per point."""

    version_id: UUID
    version: int
    grams_per_point: int
    valid_from: datetime
    valid_to: datetime | None

    def covers(self, t: datetime) -> bool:
        return self.valid_from <= t and (self.valid_to is None or t < self.valid_to)


_R = TypeVar("_R", ReductionRule, ConversionRule)


def _at(versions: Sequence[_R], t: datetime) -> _R | None:
    # Versions are sorted by valid_from and never overlap: the candidate is the last start ≤ t.
    i = bisect.bisect_right(versions, t, key=lambda v: v.valid_from)
    if i == 0:
        return None
    candidate = versions[i - 1]
    return candidate if candidate.covers(t) else None


@dataclass(frozen=True)
class RuleBook:
    """Published rules for one batch; answers "which version was in force at t"."""

    reduction: dict[tuple[UUID, str], tuple[ReductionRule, ...]] = field(default_factory=dict)
    conversion: tuple[ConversionRule, ...] = ()

    def rule_at(
        self, scene_id: UUID, behaviour: str, occurred_at: datetime
    ) -> ReductionRule | None:
        return _at(self.reduction.get((scene_id, behaviour), ()), occurred_at)

    def conversion_at(self, occurred_at: datetime) -> ConversionRule | None:
        return _at(self.conversion, occurred_at)


_RULEBOOK_SQL = text(
    "SELECT 'r' AS kind, r.id, r.version, r.scene_id, b.code AS behaviour, r.unit, "
    "r.grams_per_unit_milli AS factor, r.max_quantity_milli, r.cap_grams_per_event, "
    "r.cap_grams_per_day, r.cap_grams_per_year, r.valid_from, r.valid_to "
    "FROM reduction_rules r JOIN scene_behaviours b ON b.id = r.behaviour_id "
    "JOIN unnest(CAST(:scene_ids AS uuid[]), CAST(:codes AS text[])) AS p(scene_id, code) "
    "ON p.scene_id = r.scene_id AND p.code = b.code "
    "WHERE r.status = 'published' "
    "UNION ALL "
    "SELECT 'c', c.id, c.version, NULL, NULL, NULL, c.grams_per_point, NULL, NULL, NULL, NULL, "
    "c.valid_from, c.valid_to FROM conversion_rules c WHERE c.status = 'published' "
    "ORDER BY valid_from"
).bindparams(
    bindparam("scene_ids", type_=ARRAY(Uuid())), bindparam("codes", type_=ARRAY(String()))
)


async def rulebook(session: AsyncSession, pairs: Iterable[tuple[UUID, str]]) -> RuleBook:
    """Every published reduction version of ``pairs`` (scene id, behaviour code) and every
    published conversion version, in one query."""
    wanted = sorted(set(pairs), key=lambda p: (str(p[0]), p[1]))
    rows = (
        await session.execute(
            _RULEBOOK_SQL,
            {"scene_ids": [p[0] for p in wanted], "codes": [p[1] for p in wanted]},
        )
    ).all()
    reduction: dict[tuple[UUID, str], list[ReductionRule]] = {}
    conversion: list[ConversionRule] = []
    for r in rows:
        if r.kind == "c":
            conversion.append(ConversionRule(r.id, r.version, r.factor, r.valid_from, r.valid_to))
        else:
            reduction.setdefault((r.scene_id, r.behaviour), []).append(
                ReductionRule(
                    r.id, r.version, r.scene_id, r.behaviour, r.unit, r.factor,
                    r.max_quantity_milli, r.cap_grams_per_event, r.cap_grams_per_day,
                    r.cap_grams_per_year, r.valid_from, r.valid_to,
                )
            )
    return RuleBook({k: tuple(v) for k, v in reduction.items()}, tuple(conversion))
