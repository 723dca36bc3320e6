"""The points worker: rules in force at occurred_at, caps, dead letters, redelivery."""

from __future__ import annotations

import datetime as dt
import secrets
from decimal import Decimal

import httpx
from sqlalchemy import text

from app import clock
from app.bus import Message
from app.runtime import Runtime
from ingestion import deadletters, service
from ingestion.schemas import BusEvent
from ingestion.worker import credit_messages
from tests.ingestion.conftest import ACTOR, Partner, balance, credited, drain, make_partner


def bus_event(p: Partner, ref: str, *, quantity_milli: int = 2500,
              at: dt.datetime | None = None, behaviour: str | None = None) -> BusEvent:
    now = clock.now()
    return BusEvent(
        scene_id=p.scene_id, event_id="w-" + secrets.token_hex(8),
        citizen_id=p.citizens[ref], behaviour=behaviour or p.behaviour,
        quantity_milli=quantity_milli, occurred_at=at or now - dt.timedelta(minutes=5),
        received_at=now,
    )


async def publish(runtime: Runtime, p: Partner, events: list[BusEvent]) -> None:
    await service.publish_events(runtime, events)


async def test_art31_caps_per_day_and_year_limit_points(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """Art. 31: the published rule's caps bound a citizen's reduction per event, per
    Asia/Shanghai day and per year; the rest of the batch still counts."""
    p = await make_partner(runtime, citizens=2, cap_event=400, cap_day=600, cap_year=10_000)
    a, b = list(p.citizens)
    day = clock.now().astimezone(dt.timezone(dt.timedelta(hours=8))).replace(
        hour=0, minute=30, second=0, microsecond=0)
    if day > clock.now():
        day -= dt.timedelta(days=1)
    events = [
        p.event(a, quantity="5", at=day),  # 500 g → capped to 400 per event
        p.event(a, quantity="3", at=day + dt.timedelta(minutes=1)),  # 300 g → 200 left today
        p.event(a, quantity="1", at=day + dt.timedelta(minutes=2)),  # 100 g → day cap used up
        p.event(b, quantity="1", at=day),  # another citizen: own caps
    ]
    r = await p.post(client, events)
    assert r.json()["accepted"] == 4
    await drain(runtime)
    assert await balance(runtime, p.citizens[a]) == 60  # 600 g / 10
    assert await balance(runtime, p.citizens[b]) == 10
    assert set((await credited(runtime, p.scene_id)).values()) == {1}
    async with runtime.db.session() as s:
        used = await s.scalar(text(
            "SELECT used_grams FROM ingest_cap_usage WHERE citizen_id = :c AND kind = 'd'"),
            {"c": p.citizens[a]})
    assert used == 600


async def test_redelivered_batch_credits_once_and_counts_caps_once(runtime: Runtime) -> None:
    """The worker died after the database commit, before the bus commit: the batch comes
    again. Nothing is credited twice and the caps are not charged twice."""
    p = await make_partner(runtime, citizens=1, cap_day=2_000)
    ref, citizen = next(iter(p.citizens.items()))
    events = [bus_event(p, ref, quantity_milli=5_000) for _ in range(3)]  # 500 g each
    from ingestion.schemas import ENVELOPE_VERSION, Envelope, bus_encoder

    messages = [Message(service.bucket_key(citizen),
                        bus_encoder.encode(Envelope(ENVELOPE_VERSION, events)))]
    first = await credit_messages(runtime, messages)
    assert (first.credited, first.duplicates) == (3, 0)
    later = bus_event(p, ref, quantity_milli=5_000)
    again = await credit_messages(runtime, [*messages, Message(
        service.bucket_key(citizen), bus_encoder.encode(Envelope(ENVELOPE_VERSION, [later])))])
    assert (again.credited, again.duplicates) == (1, 3)
    # 4 × 500 g within the 2,000 g day cap: all of it counts, once
    assert await balance(runtime, citizen) == 200
    async with runtime.db.session() as s:
        used = await s.scalar(text(
            "SELECT used_grams FROM ingest_cap_usage WHERE citizen_id = :c"), {"c": citizen})
    assert used == 2_000


async def test_missing_rule_goes_to_dead_letters_and_replays_once_fixed(
    runtime: Runtime,
) -> None:
    """An event whose behaviour has no rule in force at occurred_at cannot be priced: it is
    parked with the reason; after the rule is published, a replay credits it."""
    from scenes import rules
    from scenes import service as scenes
    from scenes.schemas import BehaviourIn, ReductionRuleDraft

    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    async with runtime.db.transaction() as s:
        await scenes.add_behaviour(s, p.scene_id, BehaviourIn(
            code="walk_steps", name_zh="步行", name_en="Walking"), actor=ACTOR)
    orphan = bus_event(p, ref, behaviour="walk_steps", quantity_milli=10_000_000)
    ok = bus_event(p, ref)
    await publish(runtime, p, [orphan, ok])
    await publish(runtime, p, [])
    await runtime.bus.publish(service.events_topic(runtime.settings),
                              [Message(b"c00", b"\xc1 not msgpack")])
    await drain(runtime)
    assert set(await credited(runtime, p.scene_id)) == {ok.event_id}
    async with runtime.db.session() as s:
        parked = await deadletters.list_dead_letters(s)
    mine = [d for d in parked if d.event_id == orphan.event_id]
    assert [(d.reason_code, d.scene_id) for d in mine] == [
        ("rule.missing_at_occurred_at", p.scene_id)]
    assert any(d.reason_code == "message.undecodable" for d in parked)

    async with runtime.db.transaction() as s:
        draft = await rules.draft_reduction_rule(s, p.scene_id, ReductionRuleDraft(
            behaviour="walk_steps", unit="step", grams_per_unit=Decimal("0.05"),
            valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)), actor=ACTOR)
        await rules.publish_reduction_rule(s, draft.id, actor=ACTOR)
    async with runtime.db.transaction() as s:
        assert await deadletters.replay_dead_letters(s, runtime, ids=[mine[0].id]) == 1
    async with runtime.db.transaction() as s:
        assert await deadletters.replay_dead_letters(s, runtime, ids=[mine[0].id]) == 0
    await drain(runtime)
    assert set(await credited(runtime, p.scene_id)) == {ok.event_id, orphan.event_id}
    # 10,000 steps × 0.05 g = 500 g = 50 points, plus 25 for the ride
    assert await balance(runtime, citizen) == 75
    async with runtime.db.session() as s:
        left = await deadletters.list_dead_letters(s, include_replayed=True)
    assert [d.replayed_at is not None for d in left if d.id == mine[0].id] == [True]


async def test_art31_one_batch_across_a_rule_change_prices_each_event_by_its_version(
    runtime: Runtime,
) -> None:
    """Art. 31: in one worker batch, events on either side of a reduction rule's change are
    priced by the version in force at their own occurred_at (and the entry names it), while
    another behaviour's events in the same batch take their one version."""
    from scenes import rules
    from scenes import service as scenes
    from scenes.schemas import BehaviourIn, ReductionRuleDraft

    change = clock.now() - dt.timedelta(hours=2)
    p = await make_partner(runtime, citizens=2, grams_per_unit="100", rule_from=change)
    async with runtime.db.transaction() as s:
        earlier = await rules.draft_reduction_rule(s, p.scene_id, ReductionRuleDraft(
            behaviour=p.behaviour, unit=p.unit, grams_per_unit=Decimal("40"),
            valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), valid_to=change), actor=ACTOR)
        await rules.publish_reduction_rule(s, earlier.id, actor=ACTOR)
        await scenes.add_behaviour(s, p.scene_id, BehaviourIn(
            code="walk_steps", name_zh="步行", name_en="Walking"), actor=ACTOR)
        walk = await rules.draft_reduction_rule(s, p.scene_id, ReductionRuleDraft(
            behaviour="walk_steps", unit="step", grams_per_unit=Decimal("0.05"),
            valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)), actor=ACTOR)
        await rules.publish_reduction_rule(s, walk.id, actor=ACTOR)
    a, b = list(p.citizens)
    hour = dt.timedelta(hours=1)
    before = [bus_event(p, a, quantity_milli=1_000, at=change - hour),
              bus_event(p, b, quantity_milli=1_000, at=change - 10 * hour)]
    after = [bus_event(p, a, quantity_milli=1_000, at=change + hour),
             bus_event(p, b, quantity_milli=1_000, at=change + dt.timedelta(minutes=1))]
    steps = [bus_event(p, r, behaviour="walk_steps", quantity_milli=2_000_000, at=change + hour)
             for r in (a, b)]
    from ingestion.schemas import ENVELOPE_VERSION, Envelope, bus_encoder

    mixed = [after[0], steps[0], before[0], after[1], steps[1], before[1]]
    outcome = await credit_messages(runtime, [Message(
        service.bucket_key(p.citizens[a]), bus_encoder.encode(Envelope(ENVELOPE_VERSION, mixed)))])
    assert (outcome.credited, outcome.dead) == (6, [])
    async with runtime.db.session() as s:
        rows = {e: (g, v) for e, g, v in (await s.execute(text(
            "SELECT event_id, grams, reduction_rule_version_id FROM points_entries"
            " WHERE scene_id = :s"), {"s": p.scene_id})).all()}
    assert {rows[ev.event_id] for ev in before} == {(40, earlier.id)}
    (later,) = {rows[ev.event_id] for ev in after}
    assert later[0] == 100 and later[1] not in {earlier.id, walk.id}
    assert {rows[ev.event_id] for ev in steps} == {(100, walk.id)}  # 2,000 steps × 0.05 g
    # a: 40 + 100 + 100 g, b: the same → 24 points each at 10 g a point
    assert await balance(runtime, p.citizens[a]) == 24
    assert await balance(runtime, p.citizens[b]) == 24
