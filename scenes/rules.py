"""Versioned reduction rules and conversion rules (场景评价规范、碳积分转换规则, Art. 31).

A version is drafted, edited while a draft, then published by a holder of ``rules.publish``.
Art. 31 rules enforced here:

- published versions are immutable (409 ``rules.published_immutable``; a trigger backs it);
- versions of one series — a (scene, behaviour) pair, or the single conversion series —
  never overlap (409 ``rules.overlap``) and leave no gap (409 ``rules.gap``) unless the
  publisher says ``allow_gap``;
- a new version starts where the previous one ends: publishing after an open-ended version
  closes it at the new ``valid_from``, which must not lie in the past (409
  ``rules.retroactive``), so a period already credited is never re-priced;
- factors are positive integers in fixed point, never floats (422 ``rules.factor_invalid``).

Publications of one series are serialised by a row lock (reduction rules: the behaviour row)
or a transaction-scoped advisory lock (conversion rules).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.errors import Conflict, Invalid
from scenes.errors import (
    BehaviourUnknown,
    FactorInvalid,
    PublishedImmutable,
    RuleUnknown,
    SceneUnknown,
)
from scenes.models import Behaviour, ConversionRuleVersion, ReductionRuleVersion, Scene
from scenes.schemas import (
    ConversionRuleDraft,
    ConversionRuleOut,
    ConversionRulePatch,
    ReductionRuleDraft,
    ReductionRuleOut,
    ReductionRulePatch,
    milli_text,
)

MAX_GRAMS_PER_UNIT_MILLI = 10**9  # one tonne (10^6 g) per unit: anything above is a typo
MAX_CAP = 10**12
_CONVERSION_LOCK = 0x73_63_6E_63_76  # "scncv": serialises conversion-rule publications


# --- fixed point and validation -------------------------------------------------------------


def to_milli(value: Decimal, *, what: str, code: str = "rules.factor_invalid") -> int:
    """A decimal with at most three decimals as integer milli-units; 422 ``code`` otherwise."""
    try:
        scaled = Decimal(value).scaleb(3)
        exact = scaled == scaled.to_integral_value()
    except (ArithmeticError, ValueError) as exc:  # InvalidOperation, Overflow (1E+999999999)
        raise Invalid(code, f"{what} is not a number.") from exc
    if not scaled.is_finite() or not exact:
        raise Invalid(code, f"{what} may have at most three decimals.")
    return int(scaled)


def _check_factor_milli(milli: int) -> None:
    # Art. 31: a reduction factor is a positive quantity of CO2e per unit.
    if milli <= 0:
        raise FactorInvalid("The emission-reduction factor must be greater than zero.")
    if milli > MAX_GRAMS_PER_UNIT_MILLI:
        raise FactorInvalid("The emission-reduction factor exceeds one tonne per unit.")


def _check_cap(value: int | None, what: str) -> None:
    if value is not None and not 0 < value <= MAX_CAP:
        raise Invalid("rules.cap_invalid", f"{what} must be a positive whole number.")


def _check_window(valid_from: datetime, valid_to: datetime | None) -> None:
    if valid_to is not None and valid_to <= valid_from:
        raise Invalid("rules.window_invalid", "valid_to must be later than valid_from.")


# --- the series check (pure) ----------------------------------------------------------------


class Window(Protocol):
    """A version's identity and validity window ``[valid_from, valid_to)``."""

    @property
    def id(self) -> UUID: ...
    @property
    def version(self) -> int | None: ...
    @property
    def valid_from(self) -> datetime: ...
    @property
    def valid_to(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Span:
    """A plain :class:`Window` (for checks outside the database)."""

    id: UUID
    version: int | None
    valid_from: datetime
    valid_to: datetime | None


def _overlaps(a0: datetime, a1: datetime | None, b0: datetime, b1: datetime | None) -> bool:
    return (a1 is None or b0 < a1) and (b1 is None or a0 < b1)


def plan_publication(
    published: Sequence[Window], new: Window, *, allow_gap: bool, now: datetime
) -> Window | None:
    """Check ``new`` against a series' published versions; return the open-ended version it
    supersedes (to be closed at ``new.valid_from``), if any. Raises 409 on a conflict."""
    supersede: Window | None = None
    spans: list[tuple[Window, datetime, datetime | None]] = []
    for p in published:
        end = p.valid_to
        if end is None and p.valid_from < new.valid_from:
            supersede, end = p, new.valid_from
        spans.append((p, p.valid_from, end))
    for p, start, end in spans:
        if _overlaps(start, end, new.valid_from, new.valid_to):
            raise Conflict(
                "rules.overlap",
                f"The window overlaps published version {p.version}.", version=p.version,
            )
    if supersede is not None and new.valid_from < now:
        raise Conflict(
            "rules.retroactive",
            f"Version {supersede.version} is in force; a successor must start now or later.",
            version=supersede.version,
        )
    if not allow_gap:
        ends_before = [end for _, start, end in spans if start < new.valid_from and end]
        if ends_before and max(ends_before) < new.valid_from:
            raise Conflict("rules.gap", "The window leaves a gap after the previous version; "
                           "pass allow_gap to publish it anyway.")
        starts_after = [start for _, start, _ in spans if start >= new.valid_from]
        if starts_after and new.valid_to is not None and new.valid_to < min(starts_after):
            raise Conflict("rules.gap", "The window leaves a gap before the next version; "
                           "pass allow_gap to publish it anyway.")
    return supersede


# --- reduction rules ------------------------------------------------------------------------


def _in_force(status: str, valid_from: datetime, valid_to: datetime | None, now: datetime) -> bool:
    return status == "published" and valid_from <= now and (valid_to is None or now < valid_to)


def _reduction_out(r: ReductionRuleVersion, scene_code: str, behaviour: str,
                   now: datetime) -> ReductionRuleOut:
    return ReductionRuleOut(
        id=r.id, scene_id=r.scene_id, scene_code=scene_code, behaviour=behaviour,
        version=r.version, status=r.status, unit=r.unit,  # type: ignore[arg-type]
        grams_per_unit=milli_text(r.grams_per_unit_milli) or "0",
        grams_per_unit_milli=r.grams_per_unit_milli,
        max_quantity_per_event=milli_text(r.max_quantity_milli),
        cap_grams_per_event=r.cap_grams_per_event, cap_grams_per_day=r.cap_grams_per_day,
        cap_grams_per_year=r.cap_grams_per_year, valid_from=r.valid_from,
        valid_to=r.valid_to, basis=r.basis, superseded_by=r.superseded_by,
        published_at=r.published_at,
        in_force=_in_force(r.status, r.valid_from, r.valid_to, now),
    )


async def list_reduction_rules(
    session: AsyncSession, *, scene_id: UUID | None = None, behaviour: str | None = None,
    published_only: bool = False, ids: Sequence[UUID] | None = None,
    now: datetime | None = None,
) -> list[ReductionRuleOut]:
    """Reduction rule versions, by scene, behaviour and start (newest version last)."""
    now = now or clock.now()
    stmt = (
        select(ReductionRuleVersion, Scene.code, Behaviour.code)
        .join(Scene, Scene.id == ReductionRuleVersion.scene_id)
        .join(Behaviour, Behaviour.id == ReductionRuleVersion.behaviour_id)
        .order_by(Scene.code, Behaviour.code, ReductionRuleVersion.valid_from,
                  ReductionRuleVersion.created_at)
    )
    if scene_id is not None:
        stmt = stmt.where(ReductionRuleVersion.scene_id == scene_id)
    if behaviour is not None:
        stmt = stmt.where(Behaviour.code == behaviour)
    if published_only:
        stmt = stmt.where(ReductionRuleVersion.status == "published")
    if ids is not None:
        stmt = stmt.where(ReductionRuleVersion.id.in_(ids))
    rows = (await session.execute(stmt)).all()
    return [_reduction_out(r, sc, bc, now) for r, sc, bc in rows]


async def get_reduction_rule(
    session: AsyncSession, rule_id: UUID, *, now: datetime | None = None
) -> ReductionRuleOut:
    found = await list_reduction_rules(session, ids=[rule_id], now=now)
    if not found:
        raise RuleUnknown()
    return found[0]


def _reduction_audit(r: ReductionRuleVersion) -> dict[str, Any]:
    return {
        "scene_id": r.scene_id, "behaviour_id": r.behaviour_id, "unit": r.unit,
        "grams_per_unit_milli": r.grams_per_unit_milli,
        "max_quantity_milli": r.max_quantity_milli,
        "cap_grams_per_event": r.cap_grams_per_event, "cap_grams_per_day": r.cap_grams_per_day,
        "cap_grams_per_year": r.cap_grams_per_year, "valid_from": r.valid_from,
        "valid_to": r.valid_to, "basis": r.basis,
    }


def _validate_reduction(r: ReductionRuleVersion) -> None:
    _check_factor_milli(r.grams_per_unit_milli)
    if r.max_quantity_milli is not None and not 0 < r.max_quantity_milli <= MAX_CAP:
        raise Invalid("rules.cap_invalid",
                      "max_quantity_per_event must be greater than zero and at most 10^9.")
    _check_cap(r.cap_grams_per_event, "cap_grams_per_event")
    _check_cap(r.cap_grams_per_day, "cap_grams_per_day")
    _check_cap(r.cap_grams_per_year, "cap_grams_per_year")
    _check_window(r.valid_from, r.valid_to)


async def draft_reduction_rule(
    session: AsyncSession, scene_id: UUID, data: ReductionRuleDraft, *, actor: str,
    now: datetime | None = None,
) -> ReductionRuleOut:
    """Create a draft version for one of the scene's behaviours (Art. 31)."""
    now = now or clock.now()
    scene = await session.get(Scene, scene_id)
    if scene is None:
        raise SceneUnknown()
    behaviour = await session.scalar(
        select(Behaviour).where(Behaviour.scene_id == scene_id, Behaviour.code == data.behaviour)
    )
    if behaviour is None:
        raise BehaviourUnknown(f"The scene has no behaviour {data.behaviour!r}.")
    rule = ReductionRuleVersion(
        id=uuid.uuid4(), scene_id=scene_id, behaviour_id=behaviour.id, version=None,
        status="draft", unit=data.unit,
        grams_per_unit_milli=to_milli(data.grams_per_unit, what="grams_per_unit"),
        max_quantity_milli=(
            None if data.max_quantity_per_event is None else to_milli(
                data.max_quantity_per_event, what="max_quantity_per_event",
                code="rules.cap_invalid")
        ),
        cap_grams_per_event=data.cap_grams_per_event, cap_grams_per_day=data.cap_grams_per_day,
        cap_grams_per_year=data.cap_grams_per_year, valid_from=data.valid_from,
        valid_to=data.valid_to, basis=data.basis, created_at=now, created_by=actor,
    )
    _validate_reduction(rule)
    session.add(rule)
    await session.flush()
    await audit.append(session, actor=actor, action="rules.reduction.draft",
                       entity="reduction_rule", entity_id=str(rule.id),
                       data=_reduction_audit(rule), now=now)
    return _reduction_out(rule, scene.code, behaviour.code, now)


async def _locked_reduction(session: AsyncSession, rule_id: UUID) -> ReductionRuleVersion:
    rule = await session.scalar(
        select(ReductionRuleVersion).where(ReductionRuleVersion.id == rule_id)
        .with_for_update().execution_options(populate_existing=True)
    )
    if rule is None:
        raise RuleUnknown()
    return rule


async def update_reduction_draft(
    session: AsyncSession, rule_id: UUID, patch: ReductionRulePatch, *, actor: str,
    now: datetime | None = None,
) -> ReductionRuleOut:
    """Edit a draft; 409 ``rules.published_immutable`` for a published version."""
    now = now or clock.now()
    rule = await _locked_reduction(session, rule_id)
    if rule.status == "published":
        raise PublishedImmutable()
    fields = patch.model_fields_set
    for name in ("unit", "grams_per_unit", "valid_from"):
        if name in fields and getattr(patch, name) is None:
            raise Invalid("rules.field_required", f"{name} cannot be removed.")
    if "unit" in fields and patch.unit is not None:
        rule.unit = patch.unit
    if "grams_per_unit" in fields and patch.grams_per_unit is not None:
        rule.grams_per_unit_milli = to_milli(patch.grams_per_unit, what="grams_per_unit")
    if "max_quantity_per_event" in fields:
        q = patch.max_quantity_per_event
        rule.max_quantity_milli = None if q is None else to_milli(
            q, what="max_quantity_per_event", code="rules.cap_invalid")
    for name in ("cap_grams_per_event", "cap_grams_per_day", "cap_grams_per_year",
                 "valid_to", "basis"):
        if name in fields:
            setattr(rule, name, getattr(patch, name))
    if "valid_from" in fields and patch.valid_from is not None:
        rule.valid_from = patch.valid_from
    _validate_reduction(rule)
    await session.flush()
    await audit.append(session, actor=actor, action="rules.reduction.update",
                       entity="reduction_rule", entity_id=str(rule.id),
                       data=_reduction_audit(rule), now=now)
    return await get_reduction_rule(session, rule.id, now=now)


async def publish_reduction_rule(
    session: AsyncSession, rule_id: UUID, *, allow_gap: bool = False, actor: str,
    now: datetime | None = None,
) -> ReductionRuleOut:
    """Publish a draft as the next version of its (scene, behaviour) series (Art. 31/36)."""
    now = now or clock.now()
    draft = await session.get(ReductionRuleVersion, rule_id)
    if draft is None:
        raise RuleUnknown()
    # Serialise publications of this series: lock the behaviour, then re-read the draft.
    await session.execute(
        select(Behaviour.id).where(Behaviour.id == draft.behaviour_id).with_for_update()
    )
    rule = await _locked_reduction(session, rule_id)
    if rule.status == "published":
        raise PublishedImmutable()
    published = list((await session.scalars(
        select(ReductionRuleVersion).where(
            ReductionRuleVersion.behaviour_id == rule.behaviour_id,
            ReductionRuleVersion.status == "published",
        ).order_by(ReductionRuleVersion.valid_from)
    )).all())
    superseded = plan_publication(published, rule, allow_gap=allow_gap, now=now)
    if superseded is not None:
        assert isinstance(superseded, ReductionRuleVersion)
        superseded.valid_to = rule.valid_from
        superseded.superseded_by = rule.id
        await session.flush()
    rule.version = max((p.version or 0 for p in published), default=0) + 1
    rule.status = "published"
    rule.published_at = now
    rule.published_by = actor
    await session.flush()
    await audit.append(
        session, actor=actor, action="rules.reduction.publish", entity="reduction_rule",
        entity_id=str(rule.id),
        data={"version": rule.version, "allow_gap": allow_gap,
              "superseded": superseded.id if superseded else None, **_reduction_audit(rule)},
        now=now,
    )
    return await get_reduction_rule(session, rule.id, now=now)


# --- conversion rules -----------------------------------------------------------------------


def _conversion_out(r: ConversionRuleVersion, now: datetime) -> ConversionRuleOut:
    return ConversionRuleOut(
        id=r.id, version=r.version, status=r.status,  # type: ignore[arg-type]
        grams_per_point=r.grams_per_point, valid_from=r.valid_from, valid_to=r.valid_to,
        basis=r.basis, superseded_by=r.superseded_by, published_at=r.published_at,
        in_force=_in_force(r.status, r.valid_from, r.valid_to, now),
    )


def _validate_conversion(r: ConversionRuleVersion) -> None:
    # Art. 31/34: a conversion needs a positive whole number of grams per point.
    if not 0 < r.grams_per_point <= MAX_CAP:
        raise FactorInvalid("grams_per_point must be a positive whole number.")
    _check_window(r.valid_from, r.valid_to)


def _conversion_audit(r: ConversionRuleVersion) -> dict[str, Any]:
    return {"grams_per_point": r.grams_per_point, "valid_from": r.valid_from,
            "valid_to": r.valid_to, "basis": r.basis}


async def list_conversion_rules(
    session: AsyncSession, *, published_only: bool = False, now: datetime | None = None
) -> list[ConversionRuleOut]:
    now = now or clock.now()
    stmt = select(ConversionRuleVersion).order_by(
        ConversionRuleVersion.valid_from, ConversionRuleVersion.created_at)
    if published_only:
        stmt = stmt.where(ConversionRuleVersion.status == "published")
    return [_conversion_out(r, now) for r in (await session.scalars(stmt)).all()]


async def draft_conversion_rule(
    session: AsyncSession, data: ConversionRuleDraft, *, actor: str,
    now: datetime | None = None,
) -> ConversionRuleOut:
    now = now or clock.now()
    rule = ConversionRuleVersion(
        id=uuid.uuid4(), version=None, status="draft", grams_per_point=data.grams_per_point,
        valid_from=data.valid_from, valid_to=data.valid_to, basis=data.basis,
        created_at=now, created_by=actor,
    )
    _validate_conversion(rule)
    session.add(rule)
    await session.flush()
    await audit.append(session, actor=actor, action="rules.conversion.draft",
                       entity="conversion_rule", entity_id=str(rule.id),
                       data=_conversion_audit(rule), now=now)
    return _conversion_out(rule, now)


async def _locked_conversion(session: AsyncSession, rule_id: UUID) -> ConversionRuleVersion:
    rule = await session.scalar(
        select(ConversionRuleVersion).where(ConversionRuleVersion.id == rule_id)
        .with_for_update().execution_options(populate_existing=True)
    )
    if rule is None:
        raise RuleUnknown()
    return rule


async def update_conversion_draft(
    session: AsyncSession, rule_id: UUID, patch: ConversionRulePatch, *, actor: str,
    now: datetime | None = None,
) -> ConversionRuleOut:
    now = now or clock.now()
    rule = await _locked_conversion(session, rule_id)
    if rule.status == "published":
        raise PublishedImmutable()
    fields = patch.model_fields_set
    for name in ("grams_per_point", "valid_from"):
        if name in fields and getattr(patch, name) is None:
            raise Invalid("rules.field_required", f"{name} cannot be removed.")
    for name in ("grams_per_point", "valid_from", "valid_to", "basis"):
        if name in fields:
            setattr(rule, name, getattr(patch, name))
    _validate_conversion(rule)
    await session.flush()
    await audit.append(session, actor=actor, action="rules.conversion.update",
                       entity="conversion_rule", entity_id=str(rule.id),
                       data=_conversion_audit(rule), now=now)
    return _conversion_out(rule, now)


async def publish_conversion_rule(
    session: AsyncSession, rule_id: UUID, *, allow_gap: bool = False, actor: str,
    now: datetime | None = None,
) -> ConversionRuleOut:
    """Publish a draft as the next conversion version (Art. 31, disclosed under Art. 36)."""
    now = now or clock.now()
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CONVERSION_LOCK})
    rule = await _locked_conversion(session, rule_id)
    if rule.status == "published":
        raise PublishedImmutable()
    published = list((await session.scalars(
        select(ConversionRuleVersion).where(ConversionRuleVersion.status == "published")
        .order_by(ConversionRuleVersion.valid_from)
    )).all())
    superseded = plan_publication(published, rule, allow_gap=allow_gap, now=now)
    if superseded is not None:
        assert isinstance(superseded, ConversionRuleVersion)
        superseded.valid_to = rule.valid_from
        superseded.superseded_by = rule.id
        await session.flush()  # close the old window before the exclusion sees the new one
    version = await session.scalar(select(func.coalesce(func.max(ConversionRuleVersion.version),
                                                        0)))
    rule.version = int(version or 0) + 1
    rule.status = "published"
    rule.published_at = now
    rule.published_by = actor
    await session.flush()
    await audit.append(
        session, actor=actor, action="rules.conversion.publish", entity="conversion_rule",
        entity_id=str(rule.id),
        data={"version": rule.version, "allow_gap": allow_gap,
              "superseded": superseded.id if superseded else None, **_conversion_audit(rule)},
        now=now,
    )
    return _conversion_out(rule, now)

