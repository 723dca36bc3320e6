"""Sanctions (Art. 37–39) and reconciliation."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text

from app.runtime import Runtime
from registry import flows, sanctions, service
from registry.reconcile import reconcile
from tests.registry.factories import ACTOR, at, holder_with, org, registered_project, world
from tests.registry.test_projects import create, refused


async def test_art39_falsification_revokes_and_owner_complies(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w, account, inst = await holder_with(s, 100)
        s1 = await sanctions.sanction_falsification(
            s, inst.project_id, false_quantity=40, deadline=date(2025, 9, 30),
            reason="监测数据篡改", actor=ACTOR, now=at("2025-08-01"))
        assert s1.state == "ordered"
        await refused("registry.project_revoked", _apply_again(s, w, inst.project_id))
        await sanctions.comply(s, s1.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-09-01"))
        blocks = await service.holdings(s, account)
        assert sorted((b.state, b.quantity) for b in blocks) == [("cancelled", 40),
                                                                 ("held", 60)]
        assert s1.state == "complied" and s1.ban_until is None


async def _apply_again(s, w, project_id):  # type: ignore[no-untyped-def]
    from registry import issuance
    from tests.registry.test_instalments import inst

    return await issuance.create_instalment(s, project_id, inst(w.verifier.id, "2023-01-01",
                                                                "2023-12-31"),
                                            owner_id=w.owner.id, actor=ACTOR,
                                            now=at("2025-08-02"))


async def test_art39_forced_cancellation_after_deadline_and_3_year_refusal(
        runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w, account, inst = await holder_with(s, 100)
        buyer = await org(s, kind="trader")
        assert buyer.account_id
        lk = await service.lock(s, account_id=account, quantity=70, purpose="t", reference="r")
        await service.move_locked(s, lk.id, to_account_id=buyer.account_id)
        s1 = await sanctions.sanction_falsification(
            s, inst.project_id, false_quantity=50, deadline=date(2025, 9, 30),
            reason="伪造数据", actor=ACTOR, now=at("2025-08-01"))
        await refused("registry.deadline_not_passed", sanctions.enforce(
            s, s1.id, actor=ACTOR, now=at("2025-09-30")))
        await refused("registry.deadline_passed", sanctions.comply(
            s, s1.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-10-01")))
        await sanctions.enforce(s, s1.id, actor=ACTOR, now=at("2025-10-09"))
        assert s1.state == "enforced" and s1.forced_quantity == 30
        assert s1.ban_until == date(2028, 10, 9)
        assert [b.state for b in await service.holdings(s, account)] == ["cancelled"]
        await refused("registry.sanctioned", create(s, w, site="新址"))
        assert await reconcile(s) == []


async def test_art39_missed_revision_deadline_refuses_for_2_years(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        subject = await _in_assessment(s, w)
        await flows.add_opinion(s, subject, outcome="revise", body="补充", actor="expert")
        await flows.conclude_assessment(s, subject, outcome="revise",
                                        deadline=date(2025, 5, 30), reason=None, actor=ACTOR,
                                        now=at("2025-04-20"))
        await refused("registry.deadline_not_passed", flows.lapse_revision(
            s, subject, actor=ACTOR, now=at("2025-05-30")))
        await refused("registry.revision_deadline_passed", flows.submit_revision(
            s, subject, actor=ACTOR, now=at("2025-05-31")))
        await flows.lapse_revision(s, subject, actor=ACTOR, now=at("2025-05-31"))
        assert subject.state == "rejected"
        from registry.sanctions import check_not_banned

        await refused("registry.sanctioned", check_not_banned(s, w.owner.id, date(2027, 5, 30)))
        await check_not_banned(s, w.owner.id, date(2027, 5, 31))


async def test_art39_failed_second_assessment_refuses_for_2_years(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        subject = await _in_assessment(s, w)
        await flows.add_opinion(s, subject, outcome="revise", body="补充", actor="expert")
        await flows.conclude_assessment(s, subject, outcome="revise",
                                        deadline=date(2025, 5, 30), reason=None, actor=ACTOR,
                                        now=at("2025-04-20"))
        await flows.submit_revision(s, subject, actor=ACTOR, now=at("2025-05-20"))
        await flows.add_opinion(s, subject, outcome="fail", body="仍不符合", actor="expert")
        await refused("registry.second_assessment_final", flows.conclude_assessment(
            s, subject, outcome="revise", deadline=date(2025, 7, 1), reason=None, actor=ACTOR,
            now=at("2025-06-01")))
        await flows.conclude_assessment(s, subject, outcome="fail", deadline=None,
                                        reason="二次评估未通过", actor=ACTOR,
                                        now=at("2025-06-01"))
        assert subject.state == "rejected"
        await refused("registry.sanctioned", registered_project(s, w))


async def _in_assessment(s, w):  # type: ignore[no-untyped-def]
    from registry import projects

    p = await create(s, w)
    await projects.file_validation(s, p.id, vvb_id=w.validator.id, conclusion="positive",
                                   report_ref="v", actor=ACTOR, now=at("2025-03-03"))
    await projects.submit_project(s, p.id, owner_id=w.owner.id, actor=ACTOR,
                                  now=at("2025-03-03"))
    subject = await flows.load(s, "project", p.id)
    await flows.check_completeness(s, subject, complete=True, reason=None, actor=ACTOR,
                                   now=at("2025-03-04"))
    await flows.apply_formally(s, subject, comment_handling=None, actor=ACTOR,
                               now=at("2025-04-15"))
    await flows.review(s, subject, passed=True, reason=None, actor=ACTOR)
    return subject


async def test_art37_staff_of_agency_operator_exchange_are_flagged(runtime: Runtime) -> None:
    """Art. 37: staff may not trade CQCER; trading asks :func:`is_trading_barred`."""
    async with runtime.db.transaction() as s:
        for staff in ("registry_agency", "operator", "exchange"):
            person = await org(s, kind="individual", staff_of=staff)
            assert await service.is_trading_barred(s, person.id)
        assert not await service.is_trading_barred(s, (await org(s, kind="trader")).id)


async def test_reconcile_names_every_difference(runtime: Runtime) -> None:
    """The check reports a block that lost serials (issued != held + locked + cancelled)."""
    async with runtime.db.transaction() as s:
        _, account, inst = await holder_with(s, 10)
    with pytest.raises(RuntimeError, match="roll back"):
        async with runtime.db.transaction() as s:
            await s.execute(text("UPDATE registry_blocks SET serial_end = 8 "
                                 "WHERE account_id = :a"), {"a": account})
            problems = await reconcile(s)
            no = inst.issued[0].project_no
            assert f"project {no}: issued 10 != held 8 + locked 0 + cancelled 0" in problems
            assert any("blocks end at 8, issued 10" in p for p in problems)
            raise RuntimeError("roll back")
    async with runtime.db.transaction() as s:
        assert await reconcile(s) == []
