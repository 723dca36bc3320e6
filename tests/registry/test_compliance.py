"""Rules found by the article-by-article audit (docs/compliance.md): Art. 17 (records kept),
Art. 22 (a cancelled project never comes back, under any owner; cancellations are public),
Art. 36 (the registry's disclosure) and Art. 38 (a VVB whose recognition is withdrawn)."""

from __future__ import annotations

import uuid
from datetime import date

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from app.runtime import Runtime
from registry import catalog, issuance, projects
from registry.models import Project
from registry.reconcile import reconcile
from tests.registry.factories import (
    ACTOR,
    at,
    holder_with,
    issued,
    org,
    registered_project,
    world,
)
from tests.registry.test_instalments import inst
from tests.registry.test_projects import create, refused


async def test_art22_cancelled_project_never_registers_again_under_any_owner(
        runtime: Runtime) -> None:
    """Art. 22: 注销后的项目不得再次申请登记. The project is its place and methodology: a new or
    sister owner applying for the same site with the same methodology is refused, and the
    cancelled project itself can neither be resubmitted nor apply for reductions."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await registered_project(s, w, site="渝北区 回兴街道 2 号")
        await projects.cancel_project(s, p.id, ground="owner_gone", reason="业主注销",
                                      owner_id=None, actor=ACTOR, now=at("2025-06-02"))
        sister = await world(s)
        sister.methodology = w.methodology
        before = (await s.execute(select(func.count()).select_from(Project))).scalar_one()
        await refused("registry.project_cancelled", create(
            s, sister, site=" 渝北区  回兴街道 2 号", crediting_start=date(2029, 1, 1),
            crediting_end=date(2033, 12, 31)))
        assert (await s.execute(select(func.count()).select_from(Project))).scalar_one() \
            == before
        await refused("registry.wrong_state", projects.submit_project(
            s, p.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-06-03")))
        await refused("registry.project_cancelled", issuance.create_instalment(
            s, p.id, inst(w.verifier.id), owner_id=w.owner.id, actor=ACTOR,
            now=at("2025-06-03")))
        # Another place, same methodology and owner: a different project, admitted.
        other = await create(s, sister, site="渝北区 回兴街道 3 号")
        assert other.state == "draft"


async def test_art38_a_vvb_whose_recognition_is_withdrawn_may_not_validate_or_verify(
        runtime: Runtime) -> None:
    """Art. 38 (a VVB's false report is dealt with under the rules) with Art. 21: once the
    bureau withdraws its recognition, the VVB's validation and verification reports are
    refused, for projects and instalments it was already named on."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        draft = await create(s, w)
        p = await registered_project(s, w)
        i = await issuance.create_instalment(s, p.id, inst(w.verifier.id), owner_id=w.owner.id,
                                             actor=ACTOR, now=at("2025-05-05"))
        await catalog.revoke_vvb(s, w.validator.id, actor=ACTOR, now=at("2025-05-06"))
        await catalog.revoke_vvb(s, w.verifier.id, actor=ACTOR, now=at("2025-05-06"))
        await refused("registry.vvb_not_recognised", projects.file_validation(
            s, draft.id, vvb_id=w.validator.id, conclusion="positive", report_ref="v",
            actor=ACTOR, now=at("2025-05-07")))
        await refused("registry.vvb_not_recognised", issuance.file_verification(
            s, i.id, vvb_id=w.verifier.id, verified_tonnes=10, report_ref="r", actor=ACTOR,
            now=at("2025-05-07")))
        after = await issuance.instalment_out(s, i.id)
        assert after.verified_tonnes is None and after.state == "draft"


async def test_art36_registry_discloses_methodologies_projects_registrations_cancellations(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 36 (and Art. 22, 29): without login, the registry publishes its methodologies,
    projects, registrations (projects and instalments) and cancellations (of projects and of
    credits), with no personal data."""
    async with runtime.db.transaction() as s:
        w, account, done = await holder_with(s, 12)
        from registry import service

        lk = await service.lock(s, account_id=account, quantity=5, purpose="offset",
                                reference="r")
        await service.cancel_locked(s, lk.id, purpose="neutrality", beneficiary="公示测试活动")
        gone = await registered_project(s, w)
        await projects.cancel_project(s, gone.id, ground="request", reason="项目停运",
                                      owner_id=w.owner.id, actor=ACTOR, now=at("2025-08-01"))
        code = w.methodology.code
    no = done.issued[0].project_no

    async def dataset(name: str) -> list[dict[str, object]]:
        r = await client.get(f"/public/registry/datasets/{name}")
        assert r.status_code == 200, r.text
        rows: list[dict[str, object]] = r.json()
        return rows

    assert code in {m["code"] for m in await dataset("methodologies")}
    shown = {p["no"]: p for p in await dataset("projects")}
    assert shown[no]["state"] == "registered" and shown[gone.no]["state"] == "cancelled"
    regs = {(r["kind"], r["project_no"], r["instalment_no"]) for r in
            await dataset("registrations")}
    assert {("project", no, None), ("instalment", no, 1), ("project", gone.no, None)} <= regs
    credits = [c for c in await dataset("cancellations") if c["beneficiary"] == "公示测试活动"]
    assert [(c["quantity"], c["purpose"]) for c in credits] == [(5, "neutrality")]
    assert str(credits[0]["serials"]).startswith(f"CQCER-{no}-1-2024-")
    cancelled = {c["no"]: c for c in await dataset("project_cancellations")}
    assert cancelled[gone.no]["cancel_ground"] == "request"
    assert cancelled[gone.no]["reason"] == "项目停运"
    for name in ("projects", "registrations", "cancellations", "project_cancellations"):
        body = (await client.get(f"/public/registry/datasets/{name}")).text
        assert "password" not in body and "uscc" not in body


REGISTRY_TABLES = ("organisations", "registry_projects", "registry_instalments",
                   "registry_issuances", "registry_blocks", "registry_movements",
                   "registry_cancellations", "registry_sanctions", "registry_notices",
                   "registry_comments", "registry_fraud_reports")


@pytest.mark.parametrize("verb", ["DELETE FROM {t}", "TRUNCATE {t} CASCADE"])
async def test_art17_registry_records_survive_delete_and_truncate(
        runtime: Runtime, verb: str) -> None:
    """Art. 17: records are kept at least 10 years after the last issuance. PostgreSQL refuses
    DELETE and TRUNCATE on every registry table, so no code path (and no slip at the SQL
    prompt) can remove them."""
    async with runtime.db.transaction() as s:
        await holder_with(s, 2)
        await org(s, kind="trader")
    for table in REGISTRY_TABLES:
        async with runtime.db.session() as s:
            before = (await s.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
        with pytest.raises(DBAPIError, match=r"Art\. 17"):
            async with runtime.db.transaction() as s:
                await s.execute(text(verb.format(t=table)))
        async with runtime.db.session() as s:
            assert (await s.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() \
                == before


async def test_art22_owner_gone_cancels_its_projects_and_credits_publicly(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 22: 项目业主主体灭失 — after its investigation the registry agency cancels the
    owner's registered projects and the CQCER it holds; both cancellations are public; the
    applications in progress close and the organisation can no longer apply. Credits locked
    in an open trade are settled first: until then the finding is refused and changes
    nothing; bad input changes nothing either."""
    from app.auth.tokens import issue_access_token
    from registry import service

    async with runtime.db.transaction() as s:
        w, account, done = await holder_with(s, 30)
        pending = await create(s, w)
        lk = await service.lock(s, account_id=account, quantity=4, purpose="trade",
                                reference="deal-1")
    no = done.issued[0].project_no
    url = f"/v1/admin/registry/organisations/{w.owner.id}/owner-gone"

    def headers(role: str) -> dict[str, str]:
        token = issue_access_token("admin", uuid.uuid4(), roles=frozenset({role}))
        return {"Authorization": f"Bearer {token}"}

    async def state() -> tuple[object, ...]:
        async with runtime.db.session() as s:
            tonnes: dict[str, int] = {}
            for b in await service.holdings(s, account):
                tonnes[b.state] = tonnes.get(b.state, 0) + b.quantity
            blocks = sorted(tonnes.items())
            org_status = (await s.execute(text(
                "SELECT status FROM organisations WHERE id = :o"), {"o": w.owner.id})).scalar()
            states = (await s.execute(text(
                "SELECT array_agg(state ORDER BY no) FROM registry_projects WHERE owner_id = :o"),
                {"o": w.owner.id})).scalar()
        return tuple(blocks), org_status, tuple(states or ())

    before = await state()
    assert before == ((("held", 26), ("locked", 4)), "active", ("registered", "draft"))
    r = await client.post(url, json={"reason": "工商登记已注销"}, headers=headers("operator_admin"))
    assert r.status_code == 403
    r = await client.post(url, json={"reason": "工商登记已注销"},
                          headers=headers("registry_agency"))
    assert (r.status_code, r.json()["code"], r.json()["locked"]) == (
        409, "registry.credits_locked", 4)
    for bad in ({}, {"reason": "   "}, {"reason": "x", "force": True}):
        r = await client.post(url, json=bad, headers=headers("registry_agency"))
        assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    assert await state() == before
    async with runtime.db.transaction() as s:
        await service.unlock(s, lk.id)

    r = await client.post(url, json={"reason": "工商登记已注销（2025-07-15）"},
                          headers=headers("registry_agency"))
    assert r.status_code == 200, r.text
    assert r.json() == {"organisation_id": str(w.owner.id), "status": "dissolved",
                        "cancelled_projects": [no], "closed_applications": 1,
                        "cancelled_tonnes": 30}
    assert await state() == ((("cancelled", 30),), "dissolved", ("cancelled", "rejected"))
    again = await client.post(url, json={"reason": "再次"}, headers=headers("registry_agency"))
    assert (again.status_code, again.json()["code"]) == (409, "registry.wrong_state")

    gone = [c for c in (await client.get("/public/registry/datasets/cancellations")).json()
            if c["purpose"] == "owner_gone" and str(c["serials"]).startswith(f"CQCER-{no}-")]
    assert [c["quantity"] for c in gone] == [30]
    projects_gone = {p["no"]: p for p in
                     (await client.get("/public/registry/datasets/project_cancellations")).json()}
    assert projects_gone[no]["cancel_ground"] == "owner_gone"
    async with runtime.db.transaction() as s:
        await refused("registry.organisation_not_found", create(s, w, site="新址"))
        assert (await projects.project_out(s, pending.id)).state == "rejected"
        assert await reconcile(s) == []


async def test_art18_a_negative_validation_conclusion_ends_the_application(
        runtime: Runtime) -> None:
    """Art. 18: the validation report states a positive or negative conclusion; with a
    negative one the owner cannot submit, and the report stays on record."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        p = await create(s, w)
        await projects.file_validation(s, p.id, vvb_id=w.validator.id, conclusion="negative",
                                       report_ref="val-neg", actor=ACTOR, now=at("2025-03-03"))
        await refused("registry.validation_negative", projects.submit_project(
            s, p.id, owner_id=w.owner.id, actor=ACTOR, now=at("2025-03-04")))
        kept = await s.get(Project, p.id, populate_existing=True)
        assert kept is not None
    assert (kept.state, kept.validation_conclusion, kept.validation_report_ref) == (
        "draft", "negative", "val-neg")


async def test_art6_the_registry_is_the_final_word_on_holder_and_state(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 6: 管理系统记录的信息是判断CQCER归属和状态的最终依据 — the public serial lookup
    answers, for any tonne, the account that holds it and its state, and follows every
    lock, delivery and cancellation made through the registry's credit service."""
    from registry import service

    async with runtime.db.transaction() as s:
        _, seller, done = await holder_with(s, 10)
        buyer = await org(s, kind="trader")
        assert buyer.account_id
    no = done.issued[0].project_no
    serial = f"CQCER-{no}-1-2024-3"

    async def lookup() -> tuple[str, str]:
        r = await client.get(f"/public/registry/serials/{serial}")
        assert r.status_code == 200, r.text
        return r.json()["account_id"], r.json()["state"]

    assert await lookup() == (str(seller), "held")
    async with runtime.db.transaction() as s:
        lk = await service.lock(s, account_id=seller, quantity=4, purpose="trade",
                                reference="deal-9")
    assert await lookup() == (str(seller), "locked")
    async with runtime.db.transaction() as s:
        await service.move_locked(s, lk.id, to_account_id=buyer.account_id)
    assert await lookup() == (str(buyer.account_id), "held")
    async with runtime.db.transaction() as s:
        lk2 = await service.lock(s, account_id=buyer.account_id, quantity=4, purpose="offset",
                                 reference="neutral-9")
        await service.cancel_locked(s, lk2.id, purpose="neutrality", beneficiary="年会")
    assert await lookup() == (str(buyer.account_id), "cancelled")
    r = await client.get(f"/public/registry/serials/CQCER-{no}-1-2024-9")
    assert (r.json()["account_id"], r.json()["state"]) == (str(seller), "held")


async def test_art4_a_district_bureau_reads_only_its_own_district(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 4: 区县生态环境局负责辖区内……监督管理 — a district bureau lists and reads the
    projects and instalments of its own district; another district's are not found. The city
    bureau reads all."""
    from app.auth.tokens import issue_access_token

    async with runtime.db.transaction() as s:
        w = await world(s)
        mine = await registered_project(s, w, district_code="500112")
        inst_mine = await issued(s, w, mine.id, 5)
        theirs = await registered_project(s, w, district_code="500103")
        inst_theirs = await issued(s, w, theirs.id, 5)

    def token(roles: set[str], district: str | None = None) -> dict[str, str]:
        t = issue_access_token("admin", uuid.uuid4(), roles=roles, district=district)
        return {"Authorization": f"Bearer {t}"}

    yubei = token({"district_bureau"}, "500112")
    listed = await client.get("/v1/admin/registry/projects", headers=yubei)
    assert listed.status_code == 200
    ids = {p["id"] for p in listed.json()}
    assert str(mine.id) in ids and str(theirs.id) not in ids
    assert {p["district_code"] for p in listed.json()} == {"500112"}
    for path, ok in ((f"projects/{mine.id}", True), (f"instalments/{inst_mine.id}", True),
                     (f"projects/{theirs.id}", False),
                     (f"instalments/{inst_theirs.id}", False)):
        r = await client.get(f"/v1/admin/registry/{path}", headers=yubei)
        assert r.status_code == (200 if ok else 404), (path, r.text)
        if not ok:
            assert r.json()["code"] in ("registry.project_not_found",
                                        "registry.instalment_not_found")
    nowhere = token({"district_bureau"})
    assert (await client.get("/v1/admin/registry/projects", headers=nowhere)).json() == []
    city = token({"bureau"})
    r = await client.get(f"/v1/admin/registry/projects/{theirs.id}", headers=city)
    assert r.status_code == 200
    ids = {p["id"] for p in (await client.get("/v1/admin/registry/projects",
                                              headers=city)).json()}
    assert {str(mine.id), str(theirs.id)} <= ids


async def test_art11_12_14_three_categories_and_the_bureau_publishes_methodologies(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 11/14: methodologies, projects and CQCER fall into exactly three categories
    (工程类, 生态碳汇类, 碳普惠类) — the API and the database refuse any other. Art. 12: the
    bureau makes and publishes methodologies; no other role may."""
    from app.auth.tokens import issue_access_token

    def token(role: str) -> dict[str, str]:
        t = issue_access_token("admin", uuid.uuid4(), roles={role})
        return {"Authorization": f"Bearer {t}"}

    body = {"code": f"CQ-{uuid.uuid4().hex[:8]}", "title": "测试方法学",
            "category": "engineering", "field": "energy", "baseline": "b",
            "additionality": "a", "formula": "E = B - P", "parameters": {},
            "monitoring_plan_ref": "mp"}
    async with runtime.db.session() as s:
        before = (await s.execute(text("SELECT count(*) FROM registry_methodologies"))).scalar()
    for role in ("registry_agency", "operator_admin", "expert", "vvb"):
        r = await client.post("/v1/admin/registry/methodologies", json=body,
                              headers=token(role))
        assert r.status_code == 403, role
    r = await client.post("/v1/admin/registry/methodologies",
                          json={**body, "category": "forestry"}, headers=token("bureau"))
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    async with runtime.db.session() as s:
        assert (await s.execute(text("SELECT count(*) FROM registry_methodologies"))).scalar() \
            == before
    r = await client.post("/v1/admin/registry/methodologies", json=body,
                          headers=token("bureau"))
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    r = await client.post(f"/v1/admin/registry/methodologies/{mid}/publish",
                          headers=token("registry_agency"))
    assert r.status_code == 403
    r = await client.post(f"/v1/admin/registry/methodologies/{mid}/publish",
                          headers=token("bureau"))
    assert (r.status_code, r.json()["status"]) == (200, "published")
    async with runtime.db.transaction() as s:
        project = await create(s, await world(s))
    for table, row in (("registry_methodologies", mid), ("registry_projects", project.id)):
        with pytest.raises(DBAPIError, match=r"ck_.*category"):
            async with runtime.db.transaction() as s:
                await s.execute(text(f"UPDATE {table} SET category = 'other' WHERE id = :i"),
                                {"i": row})
