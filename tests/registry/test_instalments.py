"""Reductions and issuance rules (Art. 16, 17, 19, 20, 26)."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from app.runtime import Runtime
from registry import issuance
from registry.schemas import InstalmentIn
from tests.registry.factories import ACTOR, at, issued, registered_project, world
from tests.registry.test_projects import create, refused


def inst(verifier: UUID, start: str = "2024-01-01", end: str = "2024-12-31",
         **over: Any) -> InstalmentIn:
    return InstalmentIn.model_validate({
        "period_start": start, "period_end": end, "claimed_tonnes": 100,
        "accounting_report_ref": "acc", "verifier_vvb_id": verifier, **over})


async def test_art16_only_a_registered_project_applies(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        draft = await create(s, w)
        await refused("registry.wrong_state", issuance.create_instalment(
            s, draft.id, inst(w.verifier.id), owner_id=w.owner.id, actor=ACTOR,
            now=at("2025-05-05")))


async def test_art16_17_period_rules(runtime: Runtime) -> None:
    """Art. 16(3) after 2021-09-14; Art. 16(4) inside Chongqing; Art. 17 whole years, within 5
    years before the application, within the crediting period."""
    async with runtime.db.transaction() as s:
        w = await world(s, "ecological_sink")
        p = await registered_project(s, w, crediting_start=date(2021, 1, 1),
                                     crediting_end=date(2050, 12, 31),
                                     operation_start=date(2020, 1, 1))

        async def try_(code: str, data: InstalmentIn, on: str = "2025-05-05") -> None:
            await refused(code, issuance.create_instalment(
                s, p.id, data, owner_id=w.owner.id, actor=ACTOR, now=at(on)))

        v = w.verifier.id
        await try_("registry.before_2021_09_14", inst(v, "2021-09-14", "2022-09-13"))
        await try_("registry.outside_chongqing", inst(v, district_code="420102"))
        await try_("registry.period_not_whole_years", inst(v, "2024-01-01", "2024-12-30"))
        await try_("registry.period_not_whole_years", inst(v, "2024-01-01", "2025-03-31"))
        await try_("registry.older_than_5_years", inst(v, "2021-09-15", "2022-09-14"),
                   on="2026-09-16")
        await try_("registry.period_not_ended", inst(v, "2024-06-01", "2025-05-31"))
        two_years = await issuance.create_instalment(
            s, p.id, inst(v, "2021-09-15", "2023-09-14"), owner_id=w.owner.id, actor=ACTOR,
            now=at("2025-05-05"))
        assert two_years.no == 1
        outside = await world(s)
        q = await registered_project(s, outside)
        await refused("registry.outside_crediting_period", issuance.create_instalment(
            s, q.id, inst(outside.verifier.id, "2023-01-01", "2023-12-31"),
            owner_id=outside.owner.id, actor=ACTOR, now=at("2025-05-05")))


async def test_art17_validator_may_not_verify_and_verifier_rules(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await registered_project(s, w)
        await refused("registry.validator_cannot_verify", issuance.create_instalment(
            s, p.id, inst(w.validator.id), owner_id=w.owner.id, actor=ACTOR,
            now=at("2025-05-05")))
        i = await issuance.create_instalment(s, p.id, inst(w.verifier.id), owner_id=w.owner.id,
                                             actor=ACTOR, now=at("2025-05-05"))
        await refused("registry.wrong_role", issuance.file_verification(
            s, i.id, vvb_id=w.validator.id, verified_tonnes=10, report_ref="r", actor=ACTOR))
        await refused("registry.verified_exceeds_claim", issuance.file_verification(
            s, i.id, vvb_id=w.verifier.id, verified_tonnes=101, report_ref="r", actor=ACTOR,
            now=at("2025-05-05")))
        await refused("registry.wrong_role", issuance.submit_instalment(
            s, i.id, owner_id=w.verifier.id, actor=ACTOR, now=at("2025-05-05")))
        await refused("registry.verification_missing", issuance.submit_instalment(
            s, i.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-05-05")))


async def test_art20_at_most_one_registration_per_project_per_year(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s, "ecological_sink")
        p = await registered_project(s, w, crediting_start=date(2022, 1, 1),
                                     crediting_end=date(2050, 12, 31),
                                     operation_start=date(2021, 1, 1))
        first = await issued(s, w, p.id, 50, period=("2022-01-01", "2022-12-31"))
        assert first.state == "registered"
        await refused("registry.once_per_year", issued(
            s, w, p.id, 50, period=("2023-01-01", "2023-12-31"), created="2025-08-01",
            applied="2025-09-15", registered="2025-10-15"))
        second = await issued(s, w, p.id, 70, period=("2023-01-01", "2023-12-31"),
                              created="2026-01-05", applied="2026-02-24",
                              registered="2026-03-02")
        assert second.no == 2 and second.issued[0].serial.endswith("-2-2023-1-70")
        await refused("registry.period_overlap", issuance.create_instalment(
            s, p.id, inst(w.verifier.id, "2023-01-01", "2023-12-31"), owner_id=w.owner.id,
            actor=ACTOR, now=at("2027-01-05")))


async def test_art26_issued_quantity_is_the_verified_tonnes(runtime: Runtime) -> None:
    """Art. 19/26: the verification report fixes the quantity; 1 CQCER = 1 tCO2e, serials."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await registered_project(s, w)
        done = await issued(s, w, p.id, 2500)
        [block] = done.issued
        assert (block.serial_start, block.serial_end, block.quantity) == (1, 2500, 2500)
        assert block.state == "held" and block.account_id == w.owner.account_id
        assert block.vintage == 2024 and block.category == "engineering"
