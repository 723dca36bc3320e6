"""Project rules (Art. 13, 15, 17, 20, 21, 22, 43), at the service level."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError
from app.runtime import Runtime
from registry import catalog, flows, projects
from registry.schemas import Declarations, LegacyProjectIn, MethodologyVersionIn, TieIn
from tests.registry.factories import (
    ACTOR,
    at,
    issued,
    methodology,
    project_in,
    registered_project,
    vvb,
    world,
)


async def refused(code: str, coro: Any) -> None:
    with pytest.raises(DomainError) as e:
        await coro
    assert e.value.code == code, e.value


def decl(**over: bool) -> Declarations:
    base = {"registered_elsewhere": False, "green_power_benefit": False,
            "legal_obligation": False, "ets_covered": False, "real_and_additional": True}
    return Declarations(**{**base, **over})


async def create(s: AsyncSession, w: Any, **over: Any) -> projects.ProjectOut:
    return await projects.create_project(
        s, w.owner.id, project_in(w.version_id, w.validator.id,
                                  category=w.methodology.category, **over),
        actor=ACTOR, now=at("2025-03-03"))


async def test_art15_operation_must_start_after_2014_06_19(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        await refused("registry.operation_before_2014",
                      create(s, w, operation_start=date(2014, 6, 19)))
        p = await create(s, w, operation_start=date(2014, 6, 20),
                         crediting_start=date(2024, 1, 1))
        assert p.state == "draft"


async def test_art15_methodology_must_be_published_and_not_repealed(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        draft = await methodology(s, publish=False)
        await refused("registry.methodology_not_published",
                      create(s, w, methodology_version_id=draft.versions[0].id))
        await catalog.repeal_methodology(s, w.methodology.id, actor=ACTOR)
        await refused("registry.methodology_not_published", create(s, w))


async def test_art15_unique_additional_and_not_ets_covered(runtime: Runtime) -> None:
    """Art. 15, 42(10): unique, real and additional; no legal obligation, not under ETS."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        for over, code in (({"registered_elsewhere": True}, "registry.not_unique"),
                           ({"green_power_benefit": True}, "registry.not_unique"),
                           ({"legal_obligation": True}, "registry.legal_obligation"),
                           ({"ets_covered": True}, "registry.ets_covered"),
                           ({"real_and_additional": False}, "registry.not_additional")):
            await refused(code, create(s, w, declarations=decl(**over)))
        inclusive = await world(s, "carbon_inclusive")
        await refused("registry.not_inclusive",
                      create(s, inclusive, declarations=decl(inclusive=False)))


async def test_art15_duplicate_project_same_location_methodology_and_period(
        runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        first = await registered_project(s, w, site="北碚区 天生路 1 号")
        assert first.state == "registered"
        rival = await world(s)
        rival.methodology = w.methodology
        await refused("registry.duplicate_project", create(
            s, rival, site="  北碚区  天生路 1 号 ", crediting_start=date(2026, 1, 1),
            crediting_end=date(2030, 12, 31)))
        later = await create(s, rival, site="北碚区 天生路 1 号",
                             crediting_start=date(2029, 1, 1), crediting_end=date(2033, 12, 31),
                             operation_start=date(2023, 6, 1))
        assert later.state == "draft"


async def test_art16_project_must_lie_in_chongqing(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        await refused("registry.outside_chongqing", create(s, w, district_code="510104"))


async def test_art20_crediting_period_at_most_5_10_40_years(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        for category, years in (("engineering", 5), ("carbon_inclusive", 10),
                                ("ecological_sink", 40)):
            w = await world(s, category)
            ok_end = date(2024 + years - 1, 12, 31)
            await refused("registry.crediting_period_too_long",
                          create(s, w, crediting_end=date(2024 + years, 1, 1)))
            assert (await create(s, w, crediting_end=ok_end)).crediting_end == ok_end


async def test_art21_validator_recognised_in_scope_without_ties(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        narrow = await vvb(s, categories=("ecological_sink",), fields=("forestry",))
        await refused("registry.vvb_out_of_scope", create(s, w, validator_vvb_id=narrow.id))
        await catalog.declare_tie(s, w.validator.id, TieIn(organisation_id=w.owner.id,
                                                           kind="asset"), actor=ACTOR)
        await refused("registry.vvb_conflict", create(s, w))
        other = await vvb(s)
        await catalog.revoke_vvb(s, other.id, actor=ACTOR)
        await refused("registry.vvb_not_recognised", create(s, w, validator_vvb_id=other.id))


async def test_art17_notice_of_20_working_days_comments_and_replies(runtime: Runtime) -> None:
    """Art. 17: 20 working days (National Day week skipped); no formal application before the
    end nor with an unanswered objection; comments only while the notice runs."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await create(s, w)
        await projects.file_validation(s, p.id, vvb_id=w.validator.id, conclusion="positive",
                                       report_ref="v", actor=ACTOR, now=at("2025-09-20"))
        await projects.submit_project(s, p.id, owner_id=w.owner.id, actor=ACTOR,
                                      now=at("2025-09-20"))
        subject = await flows.load(s, "project", p.id)
        notice = await flows.check_completeness(s, subject, complete=True, reason=None,
                                                actor=ACTOR, now=at("2025-09-22"))
        assert notice is not None
        # 2025-09-28 and 10-11 are make-up working days; 10-01..10-08 are holidays.
        assert notice.ends_on == date(2025, 10, 24)
        c = await flows.add_comment(s, notice.id, author_name="李四", body="异议",
                                    objection=True, now=at("2025-10-24"))
        await refused("registry.notice_not_ended", flows.apply_formally(
            s, subject, comment_handling="x", actor=ACTOR, now=at("2025-10-24")))
        await refused("registry.notice_closed", flows.add_comment(
            s, notice.id, author_name="王五", body="晚了", objection=True, now=at("2025-10-25")))
        await refused("registry.objection_unanswered", flows.apply_formally(
            s, subject, comment_handling="x", actor=ACTOR, now=at("2025-10-27")))
        await refused("registry.wrong_role", flows.reply_to_comment(
            s, c.id, owner_id=w.validator.id, reply="?", actor=ACTOR))
        await flows.reply_to_comment(s, c.id, owner_id=w.owner.id, reply="答复", actor=ACTOR)
        await refused("registry.comment_handling_required", flows.apply_formally(
            s, subject, comment_handling=None, actor=ACTOR, now=at("2025-10-27")))
        await flows.apply_formally(s, subject, comment_handling="已答复", actor=ACTOR,
                                   now=at("2025-10-27"))
        assert subject.state == "applied"


async def test_art20_path_wrong_state_expert_opinion_and_withheld_letter(
        runtime: Runtime) -> None:
    """Art. 20: review, expert opinions, assessment; the bureau may withhold the letter."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await create(s, w)
        subject = await flows.load(s, "project", p.id)
        await refused("registry.wrong_state", flows.review(
            s, subject, passed=True, reason=None, actor=ACTOR))
        await refused("registry.validation_missing", projects.submit_project(
            s, p.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-03-03")))
        await projects.file_validation(s, p.id, vvb_id=w.validator.id, conclusion="positive",
                                       report_ref="v", actor=ACTOR, now=at("2025-03-03"))
        await projects.submit_project(s, p.id, owner_id=w.owner.id, actor=ACTOR,
                                      now=at("2025-03-03"))
        await flows.check_completeness(s, subject, complete=True, reason=None, actor=ACTOR,
                                       now=at("2025-03-04"))
        await flows.apply_formally(s, subject, comment_handling=None, actor=ACTOR,
                                   now=at("2025-04-15"))
        await flows.review(s, subject, passed=True, reason=None, actor=ACTOR)
        await refused("registry.no_expert_opinion", flows.conclude_assessment(
            s, subject, outcome="pass", deadline=None, reason=None, actor=ACTOR))
        await flows.add_opinion(s, subject, outcome="pass", body="ok", actor="expert")
        await flows.conclude_assessment(s, subject, outcome="pass", deadline=None, reason=None,
                                        actor=ACTOR)
        await refused("registry.wrong_state", projects.register_project(s, p.id, actor=ACTOR))
        await flows.decide_letter(s, subject, issue=False, reason="供需平衡", actor=ACTOR)
        assert subject.state == "assessed" and subject.withheld_reason == "供需平衡"
        await flows.decide_letter(s, subject, issue=True, reason=None, actor=ACTOR)
        assert (await projects.register_project(s, p.id, actor=ACTOR)).state == "registered"


async def test_art22_cancelled_project_can_never_register_again(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await registered_project(s, w, site="江北区 A 地块")
        await refused("registry.wrong_role", projects.cancel_project(
            s, p.id, ground="request", reason="r", owner_id=w.validator.id, actor=ACTOR))
        done = await projects.cancel_project(s, p.id, ground="request", reason="停运",
                                             owner_id=w.owner.id, actor=ACTOR)
        assert done.state == "cancelled" and done.cancel_ground == "request"
        await refused("registry.project_cancelled", create(
            s, w, site="江北区 A 地块", crediting_start=date(2029, 1, 1),
            crediting_end=date(2033, 12, 31)))
        await refused("registry.project_cancelled", issued(s, w, p.id, 10))


async def test_art43_projects_approved_before_2024_01_20_must_register_again(
        runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        old = await projects.import_legacy(s, LegacyProjectIn(
            **project_in(w.version_id, w.validator.id).model_dump(), owner_id=w.owner.id,
            legacy_approved_on=date(2024, 1, 19)), actor=ACTOR, now=at("2025-03-03"))
        assert old.state == "legacy"
        await refused("registry.reregistration_required", issued(s, w, old.id, 10))
        recent = await projects.import_legacy(s, LegacyProjectIn(
            **project_in(w.version_id, w.validator.id).model_dump(), owner_id=w.owner.id,
            legacy_approved_on=date(2024, 1, 20)), actor=ACTOR, now=at("2025-03-03"))
        assert recent.state == "registered"
        inst = await issued(s, w, recent.id, 10)
        assert inst.state == "registered"
        # Re-registration: the legacy project walks the full path again.
        await projects.file_validation(s, old.id, vvb_id=w.validator.id, conclusion="positive",
                                       report_ref="v2", actor=ACTOR, now=at("2025-03-03"))
        again = await projects.submit_project(s, old.id, owner_id=w.owner.id, actor=ACTOR,
                                              now=at("2025-03-03"))
        assert again.state == "submitted"


async def test_art13_methodology_versions_repeal_and_revision_proposals(
        runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        m = await methodology(s)
        p = await catalog.propose_revision(s, m.id, "排放因子应更新", actor="org:x")
        assert p.status == "open"
        revised = await catalog.revise_methodology(s, m.id, MethodologyVersionIn(
            baseline="b", additionality="a", formula="E = B - P - L",
            parameters={"ef_grid": "0.5366"}, monitoring_plan_ref="mp-2"), actor=ACTOR)
        assert [v.status for v in revised.versions] == ["published", "draft"]
        revised = await catalog.publish_methodology(s, m.id, actor=ACTOR)
        assert [v.status for v in revised.versions] == ["superseded", "published"]
        await catalog.decide_proposal(s, p.id, "accepted", "已采纳", actor=ACTOR)
        gone = await catalog.repeal_methodology(s, m.id, actor=ACTOR)
        assert gone.status == "repealed"
        await refused("registry.wrong_state", catalog.publish_methodology(s, m.id, actor=ACTOR))
