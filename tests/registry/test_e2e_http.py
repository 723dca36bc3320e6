"""The whole path through the HTTP API: project → notice → registration → issuance → partial
transfer → cancellation; then ``tanhui registry check`` passes."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx

from app import clock
from app.auth.tokens import issue_access_token
from app.calendar.service import add_working_days
from app.runtime import Runtime
from tests.registry.factories import uscc

TANHUI = Path(sys.executable).parent / "tanhui"
# PyJWT also checks ``exp`` against the wall clock, so tokens minted under a clock pinned in
# the past need a long life.
TTL = 4 * 365 * 86400


def admin(role: str, scope: uuid.UUID | None = None) -> dict[str, str]:
    token = issue_access_token("admin", uuid.uuid4(), roles={role}, scope_id=scope,
                               ttl_s=TTL)
    return {"Authorization": f"Bearer {token}"}


def org(org_id: str) -> dict[str, str]:
    token = issue_access_token("org", uuid.uuid4(), scope_id=uuid.UUID(org_id), ttl_s=TTL)
    return {"Authorization": f"Bearer {token}"}


async def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


async def refused(r: httpx.Response, code: str) -> None:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    assert r.json()["code"] == code, r.text


async def _walk(c: httpx.AsyncClient, pin: Callable[[str], datetime], kind: str, sid: str,
                owner: str, notice_day: str, apply_day: str) -> dict[str, Any]:
    """Completeness → notice (public comment, objection, reply) → formal application →
    review → expert opinion → assessment → letter → registration."""
    base = f"/v1/admin/registry/{kind}/{sid}"
    pin(notice_day)
    view = await ok(await c.post(f"{base}/completeness", json={"complete": True},
                                 headers=admin("registry_agency")))
    notice = view["notice"]
    assert view["state"] == "in_notice" and notice["starts_on"] == notice_day
    notices = await ok(await c.get("/public/registry/datasets/notices"))
    assert notice["id"] in {n["id"] for n in notices}
    comment = await ok(await c.post(f"/public/registry/notices/{notice['id']}/comments", json={
        "author_name": "张三", "body": "请说明基准线", "objection": True}), 201)
    await refused(await c.post(f"/v1/registry/{kind}/{sid}/apply", json={}, headers=org(owner)),
                  "registry.notice_not_ended")
    pin(apply_day)
    await refused(await c.post(f"/v1/registry/{kind}/{sid}/apply", json={}, headers=org(owner)),
                  "registry.objection_unanswered")
    await ok(await c.post(f"/v1/registry/comments/{comment['id']}/reply",
                          json={"reply": "基准线见设计文件第3节"}, headers=org(owner)))
    public = await ok(await c.get(f"/public/registry/notices/{notice['id']}"))
    assert public["comments"][0]["reply"] == "基准线见设计文件第3节"
    await ok(await c.post(f"/v1/registry/{kind}/{sid}/apply",
                          json={"comment_handling": "已公开答复"}, headers=org(owner)))
    await ok(await c.post(f"{base}/review", json={"passed": True},
                          headers=admin("registry_agency")))
    await ok(await c.post(f"{base}/opinions", json={"outcome": "pass", "body": "同意"},
                          headers=admin("expert")), 201)
    await ok(await c.post(f"{base}/assessment", json={"outcome": "pass"},
                          headers=admin("registry_agency")))
    await refused(await c.post(f"{base}/letter", json={"issue": True},
                               headers=admin("registry_agency")), "auth.permission_denied")
    await ok(await c.post(f"{base}/letter", json={"issue": True}, headers=admin("bureau")))
    return await ok(await c.post(f"{base}/register", headers=admin("registry_agency")))


async def test_full_happy_path_through_http(client: httpx.AsyncClient, runtime: Runtime,
                                            pin: Callable[[str], datetime]) -> None:
    """Art. 14–22, 26–29, 36: the end-to-end path of a project and its first instalment."""
    c = client
    pin("2025-03-03")
    m = await ok(await c.post("/v1/admin/registry/methodologies", headers=admin("bureau"), json={
        "code": f"CQ-E2E-{uuid.uuid4().hex[:6]}", "title": "分布式光伏发电", "category":
        "engineering", "field": "energy", "baseline": "电网排放", "additionality": "障碍分析",
        "formula": "ER = EG × EF", "parameters": {"EF": "0.5810"},
        "monitoring_plan_ref": "MP-PV-1"}), 201)
    m = await ok(await c.post(f"/v1/admin/registry/methodologies/{m['id']}/publish",
                              headers=admin("bureau")))
    vvbs = []
    for _ in range(2):
        vvbs.append(await ok(await c.post("/v1/admin/registry/vvbs", headers=admin("bureau"),
                                          json={"name": "核查机构", "uscc": uscc(),
                                                "categories": ["engineering"],
                                                "fields": ["energy"], "valid_from": "2024-01-01",
                                                "valid_until": "2027-12-31"}), 201))
    validator, verifier = vvbs
    username = f"owner-{uuid.uuid4().hex[:8]}"
    owner = await ok(await c.post("/v1/admin/registry/organisations",
                                  headers=admin("registry_agency"), json={
                                      "name": "重庆光伏有限公司", "uscc": uscc(), "kind": "owner",
                                      "username": username, "password": "s3cret-pass"}), 201)
    buyer = await ok(await c.post("/v1/admin/registry/organisations",
                                  headers=admin("registry_agency"), json={
                                      "name": "重庆某会展公司", "uscc": uscc(), "kind": "trader"}),
                     201)
    clock.set_clock(None)  # the login's token is checked against the real clock
    await refused(await c.post("/v1/registry/auth/token",
                               json={"username": username, "password": "wrong-pass"}),
                  "registry.login_failed")
    token = await ok(await c.post("/v1/registry/auth/token",
                                  json={"username": username, "password": "s3cret-pass"}))
    me = await ok(await c.get("/v1/registry/me",
                              headers={"Authorization": f"Bearer {token['access_token']}"}))
    assert me["id"] == owner["id"] == token["organisation_id"]

    pin("2025-03-03")
    project = await ok(await c.post("/v1/registry/projects", headers=org(owner["id"]), json={
        "title": "渝北屋顶光伏", "methodology_version_id": m["versions"][0]["id"],
        "district_code": "500112", "site": f"渝北区 {uuid.uuid4().hex}",
        "operation_start": "2023-06-01", "crediting_start": "2024-01-01",
        "crediting_end": "2028-12-31", "design_document_ref": "PDD-1",
        "validator_vvb_id": validator["id"], "declarations": {
            "registered_elsewhere": False, "green_power_benefit": False,
            "legal_obligation": False, "ets_covered": False, "real_and_additional": True}}), 201)
    pid = project["id"]
    await refused(await c.post(f"/v1/registry/projects/{pid}/submit", headers=org(buyer["id"])),
                  "registry.wrong_role")
    await refused(await c.post(f"/v1/registry/projects/{pid}/submit", headers=org(owner["id"])),
                  "registry.validation_missing")
    await refused(await c.post(f"/v1/admin/registry/projects/{pid}/validation",
                               headers=admin("vvb", uuid.UUID(verifier["id"])),
                               json={"conclusion": "positive", "report_ref": "VAL-1"}),
                  "registry.wrong_role")
    await ok(await c.post(f"/v1/admin/registry/projects/{pid}/validation",
                          headers=admin("vvb", uuid.UUID(validator["id"])),
                          json={"conclusion": "positive", "report_ref": "VAL-1"}))
    await ok(await c.post(f"/v1/registry/projects/{pid}/submit", headers=org(owner["id"])))
    async with runtime.db.transaction() as s:
        expected_end = await add_working_days(s, date(2025, 3, 4), 20)
    view = await _walk(c, pin, "projects", pid, owner["id"], "2025-03-04", "2025-04-10")
    assert view["state"] == "registered"
    assert view["notice"]["ends_on"] == expected_end.isoformat()

    pin("2025-05-06")
    inst = await ok(await c.post(f"/v1/registry/projects/{pid}/instalments",
                                 headers=org(owner["id"]), json={
                                     "period_start": "2024-01-01", "period_end": "2024-12-31",
                                     "claimed_tonnes": 1200, "accounting_report_ref": "ACC-1",
                                     "verifier_vvb_id": verifier["id"]}), 201)
    iid = inst["id"]
    await ok(await c.post(f"/v1/admin/registry/instalments/{iid}/verification",
                          headers=admin("vvb", uuid.UUID(verifier["id"])),
                          json={"verified_tonnes": 1000, "report_ref": "VER-1"}))
    await ok(await c.post(f"/v1/registry/instalments/{iid}/submit", headers=org(owner["id"])))
    view = await _walk(c, pin, "instalments", iid, owner["id"], "2025-05-06", "2025-06-16")
    assert view["state"] == "registered"
    no = project["no"]
    assert [b["serial"] for b in view["issued"]] == [f"CQCER-{no}-1-2024-1-1000"]

    held = await ok(await c.get("/v1/registry/holdings", headers=org(owner["id"])))
    assert [(b["state"], b["quantity"]) for b in held] == [("held", 1000)]
    moved = await ok(await c.post("/v1/registry/transfers", headers=org(owner["id"]), json={
        "to_account_id": buyer["account_id"], "quantity": 300}), 201)
    assert [b["serial"] for b in moved] == [f"CQCER-{no}-1-2024-1-300"]
    done = await ok(await c.post("/v1/registry/cancellations", headers=org(buyer["id"]), json={
        "quantity": 100, "purpose": "neutrality", "beneficiary": "2025 智博会碳中和"}), 201)
    assert [(b["serial"], b["state"]) for b in done] == \
        [(f"CQCER-{no}-1-2024-1-100", "cancelled")]
    buyer_blocks = await ok(await c.get("/v1/registry/holdings", headers=org(buyer["id"])))
    assert sorted((b["state"], b["quantity"]) for b in buyer_blocks) == \
        [("cancelled", 100), ("held", 200)]
    owner_blocks = await ok(await c.get("/v1/registry/holdings", headers=org(owner["id"])))
    assert [(b["state"], b["quantity"]) for b in owner_blocks] == [("held", 700)]

    hit = await ok(await c.get(f"/public/registry/serials/CQCER-{no}-1-2024-42"))
    assert hit["state"] == "cancelled" and hit["account_id"] == buyer["account_id"]
    hit = await ok(await c.get(f"/public/registry/serials/CQCER-{no}-1-2024-999"))
    assert hit["state"] == "held" and hit["account_id"] == owner["account_id"]
    csv = await c.get("/public/registry/datasets/cancellations?format=csv")
    assert csv.status_code == 200 and "2025 智博会碳中和" in csv.text
    assert f"CQCER-{no}-1-2024-1-100" in csv.text
    regs = await ok(await c.get("/public/registry/datasets/registrations"))
    assert {(r["kind"], r["project_no"]) for r in regs} >= {("project", no),
                                                            ("instalment", no)}

    proc = await asyncio.create_subprocess_exec(
        str(TANHUI), "registry", "check", env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
