"""The lookups ingestion and the points worker use: the rule in force at a time, fixed-point
grams, one query per batch (Art. 31, Art. 34)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from app.runtime import Runtime
from scenes import rules, service
from scenes.errors import SceneUnknown
from scenes.lookup import ConversionRule, Link, ReductionRule, RuleBook
from scenes.schemas import ConversionRuleDraft
from tests.scenes.conftest import (
    T0,
    free_conversion_start,
    grant,
    make_partner,
    make_scene,
    new_citizen,
    new_code,
    publish_rule,
)

D = timedelta(days=1)


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    engine = runtime.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def rule(**kw: object) -> ReductionRule:
    base: dict[str, object] = dict(
        version_id=uuid.uuid4(), version=1, scene_id=uuid.uuid4(), behaviour="ride_km",
        unit="passenger_km", grams_per_unit_milli=26_900, max_quantity_per_event=None,
        cap_grams_per_event=None, cap_grams_per_day=None, cap_grams_per_year=None,
        valid_from=T0, valid_to=None)
    base.update(kw)
    return ReductionRule(**base)  # type: ignore[arg-type]


def test_art31_grams_for_is_integer_fixed_point() -> None:
    """Art. 31: grams = floor(quantity × factor) in integers, cut by the per-event limits."""
    r = rule()
    assert r.grams_for(10_000) == 269  # 10 km × 26.9 g
    assert r.grams_for(1_500) == 40  # 1.5 km × 26.9 = 40.35 → 40
    assert r.grams_for(1) == 0  # 0.001 km → 0.0269 g → 0
    assert r.grams_for(0) == 0
    assert rule(max_quantity_per_event=60_000).grams_for(100_000) == 1614  # cut to 60 km
    assert rule(cap_grams_per_event=500).grams_for(100_000) == 500
    assert rule(grams_per_unit_milli=120_000, unit="trip").grams_for(1_000) == 120
    huge = rule(grams_per_unit_milli=10**9)
    assert huge.grams_for(10**12) == 10**15  # no overflow, no float
    with pytest.raises(ValueError):
        r.grams_for(-1)


@settings(max_examples=200, deadline=None)
@given(
    quantities=st.lists(st.integers(0, 10**13), max_size=50),
    factor=st.integers(1, 10**9),
    most=st.none() | st.integers(1, 10**9),
    cap=st.none() | st.integers(0, 10**9),
)
def test_art31_grams_for_all_is_grams_for_of_each(
    quantities: list[int], factor: int, most: int | None, cap: int | None,
) -> None:
    """Art. 31: the worker's column-at-a-time pricing gives each event exactly
    ``grams_for``."""
    r = rule(grams_per_unit_milli=factor, max_quantity_per_event=most, cap_grams_per_event=cap)
    assert r.grams_for_all(quantities) == [r.grams_for(q) for q in quantities]
    with pytest.raises(ValueError):
        r.grams_for_all([*quantities, -1])


def test_rulebook_answers_as_of_a_time() -> None:
    scene = uuid.uuid4()
    v1 = rule(scene_id=scene, version=1, valid_from=T0, valid_to=T0 + 10 * D,
              grams_per_unit_milli=1_000)
    v2 = rule(scene_id=scene, version=2, valid_from=T0 + 10 * D, valid_to=T0 + 20 * D,
              grams_per_unit_milli=2_000)
    v3 = rule(scene_id=scene, version=3, valid_from=T0 + 30 * D, valid_to=None)
    c1 = ConversionRule(uuid.uuid4(), 1, 10, T0, None)
    book = RuleBook({(scene, "ride_km"): (v1, v2, v3)}, (c1,))
    assert book.rule_at(scene, "ride_km", T0 - timedelta(microseconds=1)) is None
    assert book.rule_at(scene, "ride_km", T0) is v1
    assert book.rule_at(scene, "ride_km", T0 + 10 * D - timedelta(microseconds=1)) is v1
    assert book.rule_at(scene, "ride_km", T0 + 10 * D) is v2  # the end is exclusive
    assert book.rule_at(scene, "ride_km", T0 + 25 * D) is None  # an intended gap
    assert book.rule_at(scene, "ride_km", T0 + 3000 * D) is v3
    assert book.rule_at(scene, "walk", T0) is None
    assert book.rule_at(uuid.uuid4(), "ride_km", T0) is None
    assert book.conversion_at(T0 + D) is c1 and book.conversion_at(T0 - D) is None


def test_art34_link_consented_at() -> None:
    """Art. 34: behaviour at ``t`` counts only inside a consent interval."""
    g1, r1, g2 = T0, T0 + 5 * D, T0 + 8 * D
    ids = (uuid.uuid4(), uuid.uuid4())
    link = Link(uuid.uuid4(), ids[1], ((g1, r1), (g2, None)), ids)
    assert link.consented_at(g1) and link.consent_at(g1) == ids[0]
    assert not link.consented_at(g1 - timedelta(seconds=1))
    assert not link.consented_at(r1)  # revoked at r1: events at or after it are refused
    assert not link.consented_at(T0 + 6 * D)
    assert link.consented_at(g2) and link.consent_at(g2 + D) == ids[1]
    assert link.consenting_now


async def test_rulebook_is_one_query_for_a_batch(runtime: Runtime) -> None:
    scene_a = await make_scene(runtime, behaviours=("ride", "ride_km"))
    scene_b = await make_scene(runtime)
    await publish_rule(runtime, scene_a.id, factor="120", valid_to=T0 + 10 * D)
    await publish_rule(runtime, scene_a.id, factor="130", valid_from=T0 + 10 * D)
    await publish_rule(runtime, scene_a.id, behaviour="ride_km", unit="passenger_km",
                       factor="26.9", max_quantity_per_event=Decimal("60"))
    await publish_rule(runtime, scene_b.id, factor="99")
    start = await free_conversion_start(runtime)
    async with runtime.db.transaction() as s:
        draft = await rules.draft_conversion_rule(
            s, ConversionRuleDraft(grams_per_point=7, valid_from=start,
                                   valid_to=start + 30 * D), actor="test")
        await rules.publish_conversion_rule(s, draft.id, allow_gap=True, actor="test")
    pairs = {(scene_a.id, "ride"), (scene_a.id, "ride_km"), (scene_b.id, "ride"),
             (scene_b.id, "unknown")}
    async with runtime.db.transaction() as s:
        with statements(runtime) as sent:
            book = await service.rulebook(s, pairs)
    assert len(sent) == 1
    assert book.rule_at(scene_a.id, "ride", T0 + D).grams_for(1_000) == 120  # type: ignore[union-attr]
    assert book.rule_at(scene_a.id, "ride", T0 + 11 * D).grams_for(1_000) == 130  # type: ignore[union-attr]
    km = book.rule_at(scene_a.id, "ride_km", T0 + D)
    assert km is not None and km.unit == "passenger_km" and km.max_quantity_per_event == 60_000
    assert book.rule_at(scene_b.id, "ride", T0).grams_per_unit_milli == 99_000  # type: ignore[union-attr]
    assert book.rule_at(scene_b.id, "unknown", T0) is None
    conv = book.conversion_at(start + D)
    assert conv is not None and conv.grams_per_point == 7 and conv.version_id == draft.id
    drafts_only = await make_scene(runtime)
    async with runtime.db.transaction() as s:
        book = await service.rulebook(s, {(drafts_only.id, "ride")})
    assert book.rule_at(drafts_only.id, "ride", T0) is None


async def test_resolve_links_is_one_query_for_a_batch(runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    from scenes import consent

    refs = []
    for _ in range(5):
        citizen = await new_citizen(runtime)
        _, code = await grant(runtime, citizen, scene.code)
        ref = new_code("u")
        async with runtime.db.transaction() as s:
            await consent.redeem_link_code(s, partner.scene_id, link_code=code.code,
                                           partner_user_ref=ref)
        refs.append(ref)
    batch = refs * 200 + [f"unknown-{i}" for i in range(100)]  # 1,100 events
    async with runtime.db.transaction() as s:
        with statements(runtime) as sent:
            links = await service.resolve_links(s, scene.id, batch)
        assert await service.resolve_links(s, scene.id, []) == {}
    assert len(sent) == 1
    assert set(links) == set(refs)
    other = await make_scene(runtime)
    async with runtime.db.transaction() as s:
        assert await service.resolve_links(s, other.id, refs) == {}  # scoped to the scene


async def test_ingest_lookup_of_an_unknown_scene(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        with pytest.raises(SceneUnknown):
            await service.links_for_ingest(s, uuid.uuid4(), [])
