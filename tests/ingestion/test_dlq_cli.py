"""``tanhui dlq list`` and ``tanhui dlq replay`` (死信) against the run's database and bus: an
event without a rule at occurred_at is listed with its reason; once the rule is published, a
replay credits it exactly once (a second replay finds nothing open)."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from app.runtime import Runtime
from ingestion import deadletters, service
from tests.ingestion.conftest import ACTOR, balance, credited, drain, make_partner
from tests.ingestion.test_worker import bus_event


async def _tanhui(*args: str) -> Result:
    """Run the real ``tanhui`` command line in a thread (it runs its own event loop)."""
    from app.cli import cli

    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


async def test_dlq_list_shows_a_parked_event_and_replay_credits_it_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestion import cli as dlq_cli
    from scenes import rules
    from scenes import service as scenes
    from scenes.schemas import BehaviourIn, ReductionRuleDraft

    monkeypatch.setattr(dlq_cli, "console", Console(width=250))  # whole event ids in the table
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    async with runtime.db.transaction() as s:
        await scenes.add_behaviour(s, p.scene_id, BehaviourIn(
            code="walk_steps", name_zh="步行", name_en="Walking"), actor=ACTOR)
    orphan = bus_event(p, ref, behaviour="walk_steps", quantity_milli=10_000_000)
    await service.publish_events(runtime, [orphan])
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {}

    listed = await _tanhui("dlq", "list", "--reason", "rule.missing_at_occurred_at")
    assert listed.exit_code == 0, listed.output
    line = next(ln for ln in listed.output.splitlines() if orphan.event_id in ln)
    assert "rule.missing_at_occurred_at" in line
    assert "open dead letter(s)" in listed.output
    async with runtime.db.session() as s:
        (parked,) = [d for d in await deadletters.list_dead_letters(s)
                     if d.event_id == orphan.event_id]
    assert line.strip("│ ").split("│")[0].strip() == str(parked.id)

    refused = await _tanhui("dlq", "replay")  # names nothing: refused, nothing replayed
    assert refused.exit_code != 0

    async with runtime.db.transaction() as s:
        draft = await rules.draft_reduction_rule(s, p.scene_id, ReductionRuleDraft(
            behaviour="walk_steps", unit="step", grams_per_unit=Decimal("0.05"),
            valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)), actor=ACTOR)
        await rules.publish_reduction_rule(s, draft.id, actor=ACTOR)
    replayed = await _tanhui("dlq", "replay", "--id", str(parked.id))
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.output
    again = await _tanhui("dlq", "replay", "--id", str(parked.id))
    assert "replayed 0 dead letter(s)" in again.output
    await drain(runtime)
    assert await credited(runtime, p.scene_id) == {orphan.event_id: 1}
    assert await balance(runtime, citizen) == 50  # 10,000 steps × 0.05 g / 10 g per point

    open_now = await _tanhui("dlq", "list", "--reason", "rule.missing_at_occurred_at")
    assert orphan.event_id not in open_now.output
    everything = await _tanhui("dlq", "list", "--all")
    assert orphan.event_id in everything.output
