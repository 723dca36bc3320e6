"""Hot-path lookups for ingestion and the points worker: set-based, one query per batch.

Re-exported by :mod:`scenes.service`. Caching decisions:

- :func:`links_for_ingest` (ingestion's path) reads the scene and its ``links_version`` in one
  query per batch and keeps the links of partner user refs in a per-process
  :class:`LinkCache`. Every change of a scene's consents or partner links bumps that version
  and logs the citizen (and ref) in ``scene_link_changes`` (triggers, migration 0011); a
  batch that finds a newer version drops exactly the changed entries before answering. So a
  revocation, a new link or a suspension counts from the next batch (Art. 32, Art. 34) in
  every process, and a steady stream of batches costs one indexed single-row query each.
- :func:`resolve_links` is never cached: one indexed query per call.
- :func:`rulebook` is one query per batch returning every published version for the asked
  (scene, behaviour) pairs plus every published conversion version; published versions only
  ever gain an end when superseded, so nothing stale can be served.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import structlog
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String, Uuid

from app import clock
from app.db import asyncpg_connection
from scenes.errors import SceneNotActive, SceneUnknown

if TYPE_CHECKING:
    from app.runtime import Runtime

log = structlog.get_logger()

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
    citizen_raw: bytes = b""  # ``citizen_id.bytes``, kept for the hot path's bus events

    def __post_init__(self) -> None:
        if not self.citizen_raw:
            object.__setattr__(self, "citizen_raw", self.citizen_id.bytes)

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


# The links of a batch's refs with every consent of their citizen in the scene, oldest first.
_LINKS_SELECT = (
    "SELECT l.partner_user_ref, l.citizen_id, "
    "array_agg(c.id ORDER BY c.granted_at) AS ids, "
    "array_agg(c.granted_at ORDER BY c.granted_at) AS granted, "
    "array_agg(c.revoked_at ORDER BY c.granted_at) AS revoked "
    "FROM partner_links l JOIN consents c "
    "ON c.citizen_id = l.citizen_id AND c.scene_id = l.scene_id "
    "WHERE l.scene_id = {scene} AND l.partner_user_ref = ANY({refs}) "
    "GROUP BY l.partner_user_ref, l.citizen_id"
)


async def resolve_links(
    session: AsyncSession, scene_id: UUID, partner_user_refs: Sequence[str]
) -> dict[str, Link]:
    """The links of a batch's partner user references in one query; unknown refs are absent.

    Never cached; ingestion uses :func:`links_for_ingest`."""
    refs = list(dict.fromkeys(partner_user_refs))
    if not refs:
        return {}
    stmt = text(_LINKS_SELECT.format(scene=":scene", refs=":refs")).bindparams(
        bindparam("refs", type_=ARRAY(String())), bindparam("scene", type_=Uuid()))
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


# --- the link cache of ingestion ------------------------------------------------------------

MAX_CACHED_REFS = 1_000_000  # refs (linked or not) cached per process, all scenes together
MAX_REPLAY = 10_000  # a cache further behind than this many changes drops the scene's entries
LINK_CHANGES_KEPT = timedelta(days=1)  # how long the change log is kept
TRIM_INTERVAL_S = 3600.0

_SCENE_VERSION_SQL = (
    "SELECT s.links_version, s.code, s.status, s.claim_window_days, "
    "ARRAY(SELECT b.code FROM scene_behaviours b WHERE b.scene_id = s.id ORDER BY b.code) "
    "FROM scenes s WHERE s.id = $1"
)
_CHANGES_SQL = (
    "SELECT citizen_id, partner_user_ref FROM scene_link_changes "
    "WHERE scene_id = $1 AND version > $2 AND version <= $3"
)
_LINKS_SQL = _LINKS_SELECT.format(scene="$1", refs="$2::text[]")
_MISS: Any = object()


@dataclass(slots=True, eq=False)
class _SceneLinks:
    """One scene's cached links, valid as of ``version`` of the scene's ``links_version``:
    every change up to that version has been applied, and every entry was read by a
    statement that saw at least that version. ``None`` caches "not linked": linking the ref
    logs the ref itself, which drops the entry."""

    version: int
    refs: dict[str, Link | None] = field(default_factory=dict)
    by_citizen: dict[UUID, str] = field(default_factory=dict)  # a citizen has one ref per scene

    def forget(self) -> None:
        self.refs = {}
        self.by_citizen = {}

    def advance(self, seen: int, version: int, changes: Sequence[Any] | None) -> None:
        """Apply the changes ``(seen, version]`` (``None``: too many to replay)."""
        if self.version >= version:
            return  # another batch of this process applied them (or newer ones) meanwhile
        if changes is None or len(changes) != version - seen:
            # Too far behind, or the log was trimmed under us: replaying would not be exact.
            self.forget()
        else:
            refs = self.refs
            by_citizen = self.by_citizen
            for citizen_id, ref in changes:
                linked = by_citizen.pop(citizen_id, None)
                if linked is not None:
                    refs.pop(linked, None)
                if ref is not None:
                    refs.pop(ref, None)
        self.version = version

    def store(self, refs: Iterable[str], links: dict[str, Link]) -> None:
        cached = self.refs
        by_citizen = self.by_citizen
        for ref in refs:
            link = links.get(ref)
            cached[ref] = link
            if link is not None:
                before = by_citizen.get(link.citizen_id)
                if before is not None and before != ref:
                    cached.pop(before, None)  # the citizen's link moved: the old ref is stale
                by_citizen[link.citizen_id] = ref


class LinkCache:
    """Per-process cache of ``partner_user_ref`` → :class:`Link` (or "not linked") per scene,
    kept exact by the scene's ``links_version`` and change log (see :func:`links_for_ingest`).
    Holds at most ``max_refs`` refs: past that, a scene (then every scene) starts over."""

    def __init__(self, max_refs: int = MAX_CACHED_REFS) -> None:
        self.max_refs = max_refs
        self.scenes: dict[UUID, _SceneLinks] = {}
        self._infos: dict[UUID, tuple[tuple[Any, ...], SceneInfo]] = {}

    def clear(self) -> None:
        self.scenes.clear()
        self._infos.clear()

    def size(self) -> int:
        return sum(len(s.refs) for s in self.scenes.values())

    def cached(self, scene_id: UUID, ref: str) -> Link | bool | None:
        """The cached answer for ``ref``: a link, None (not linked) or False (not cached)."""
        state = self.scenes.get(scene_id)
        if state is None or ref not in state.refs:
            return False
        return state.refs[ref]

    def scene_info(self, scene_id: UUID, row: Sequence[Any]) -> SceneInfo:
        key = (row[1], row[2], row[3], tuple(row[4]))
        hit = self._infos.get(scene_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        info = SceneInfo(scene_id, row[1], row[2], row[3], frozenset(row[4]))
        if len(self._infos) > 10_000:
            self._infos.clear()
        self._infos[scene_id] = (key, info)
        return info

    def store(self, state: _SceneLinks, refs: list[str], links: dict[str, Link]) -> None:
        """Cache a batch's answers for ``refs``, making room first: over the cap the scene
        starts over, and every scene if that is not enough."""
        total = self.size()
        if total + len(refs) > self.max_refs:
            total -= len(state.refs)
            state.forget()
            if total + len(refs) > self.max_refs:
                for other in self.scenes.values():
                    other.forget()
            if len(refs) > self.max_refs:
                return
        state.store(refs, links)


link_cache = LinkCache()
"""The process's cache, used by ingestion's API."""


def _link(r: Any) -> Link:
    ids = r[2]
    return Link(r[1], ids[-1], tuple(zip(r[3], r[4], strict=True)), tuple(ids))


async def links_for_ingest(
    session: AsyncSession, scene_id: UUID, refs: Iterable[str], *,
    cache: LinkCache | None = None,
) -> tuple[SceneInfo, dict[str, Link]]:
    """The scene and the links of ``refs`` as of this batch (unlinked refs are absent).

    Raises 404 ``scene.unknown``, and 409 ``scene.not_active`` unless the scene is active
    (Art. 32). The scene is read fresh; links come from ``cache`` (default: the process's)
    once every change of the scene's consents and links committed before this call has
    dropped its entries, so a revocation or a new link counts from the next batch (Art. 34).
    One query when nothing changed and every ref is cached; at most three.
    """
    cache = link_cache if cache is None else cache
    # The version FIRST: under READ COMMITTED each later statement of this batch sees a
    # snapshot at least as new, so the changes and links read below are never older than
    # the version they are cached under.
    # asyncpg itself, no BEGIN: single-statement reads (an autocommit session on the hot path)
    driver = await asyncpg_connection(session, begin=False)
    row = await driver.fetchrow(_SCENE_VERSION_SQL, scene_id)
    if row is None:
        raise SceneUnknown()
    version = row[0]
    info = cache.scene_info(scene_id, row)
    info.require_accepting()
    state = cache.scenes.get(scene_id)
    if state is None:
        state = cache.scenes[scene_id] = _SceneLinks(version)
    elif state.version < version:
        seen = state.version
        changes = None
        if version - seen <= MAX_REPLAY:
            changes = await driver.fetch(_CHANGES_SQL, scene_id, seen, version)
        # Other batches of this process may have advanced the state meanwhile: advance()
        # applies only what is still newer, and never moves the version back.
        state.advance(seen, version, changes)
    cached = state.refs
    found: dict[str, Link] = {}
    missing: list[str] = []
    for ref in refs:
        link = cached.get(ref, _MISS)
        if link is _MISS:
            missing.append(ref)
        elif link is not None:
            found[ref] = link
    if missing:
        rows = await driver.fetch(_LINKS_SQL, scene_id, missing)
        fetched = {r[0]: _link(r) for r in rows}
        found.update(fetched)
        # Cache them only if no newer change was applied while the query ran: this read may
        # predate that change, and the change's eviction has already happened.
        if cache.scenes.get(scene_id) is state and state.version == version:
            cache.store(state, missing, fetched)
    return info, found


async def trim_link_changes(
    session: AsyncSession, *, keep: timedelta = LINK_CHANGES_KEPT, now: datetime | None = None
) -> int:
    """Delete the link changes logged more than ``keep`` ago; returns how many. A cache
    further behind than what is left notices the gap and starts the scene over."""
    cutoff = (now or clock.now()) - keep
    result = await session.execute(
        text("DELETE FROM scene_link_changes WHERE changed_at < :cutoff"), {"cutoff": cutoff})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def run_link_change_trim(
    runtime: Runtime, stop: asyncio.Event, *, interval_s: float = TRIM_INTERVAL_S
) -> None:
    """Run :func:`trim_link_changes` now and every ``interval_s`` seconds until ``stop``.
    Several processes may run it: the deletes do not conflict."""
    while not stop.is_set():
        try:
            async with runtime.db.transaction() as session:
                deleted = await trim_link_changes(session)
            if deleted:
                log.info("scene_link_changes_trimmed", deleted=deleted)
        except Exception:  # keep the schedule alive; the next run catches up
            log.exception("scene_link_changes_trim_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


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

    def grams_for_all(self, quantities_milli: list[int]) -> list[int]:
        """:meth:`grams_for` of each quantity (the same arithmetic, a batch at a time)."""
        if quantities_milli and min(quantities_milli) < 0:
            raise ValueError("quantity must not be negative")
        q = quantities_milli
        most = self.max_quantity_per_event
        if most is not None:
            q = [x if x < most else most for x in q]
        factor, scale = self.grams_per_unit_milli, MILLI * MILLI
        grams = [x * factor // scale for x in q]
        cap = self.cap_grams_per_event
        if cap is not None:
            grams = [g if g < cap else cap for g in grams]
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
