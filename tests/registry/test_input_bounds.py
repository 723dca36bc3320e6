"""Out-of-range input is a 422 problem before the database sees it (found by the API fuzzer,
``tests/app/test_api_fuzz.py``): tonnes past BIGINT, vintages past INTEGER, days whose year
arithmetic overflows, VVB fields longer than their column, NUL characters."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import func, select

from app.auth.permissions import ROLES
from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from registry.models import Project, Vvb
from tests.registry.factories import project_in, uscc, world

PROBLEM = "application/problem+json"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_invalid(r: httpx.Response, *fields: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == "request.invalid"
    assert {e["field"] for e in body["errors"]} >= set(fields), body["errors"]


async def test_art27_transfer_and_cancellation_quantities_are_bounded(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 27 transfers and cancellations: a quantity past a trillion tonnes, or a vintage that
    is no year, is refused by validation (it used to reach PostgreSQL and answer 500)."""
    async with runtime.db.transaction() as s:
        w = await world(s)
    owner = _bearer(issue_access_token("org", uuid.uuid4(), scope_id=w.owner.id))
    r = await client.post("/v1/registry/transfers", headers=owner, json={
        "to_account_id": str(uuid.uuid4()), "quantity": 155956686809101258165080555520})
    _assert_invalid(r, "quantity")
    r = await client.post("/v1/registry/cancellations", headers=owner, json={
        "quantity": 5, "purpose": "voluntary", "beneficiary": "某公司",
        "product": {"category": "engineering", "vintage": 862842821159940}})
    _assert_invalid(r, "product.vintage")
    r = await client.post("/v1/registry/cancellations", headers=owner, json={
        "quantity": 2758361752549895889223680, "purpose": "neutrality", "beneficiary": "x"})
    _assert_invalid(r, "quantity")


async def test_art16_project_and_instalment_days_are_bounded(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 16 crediting periods: a year-9999 day would overflow the whole-years arithmetic; it
    is refused as invalid input and no project row is written."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        before = (await s.execute(select(func.count()).select_from(Project))).scalar_one()
    owner = _bearer(issue_access_token("org", uuid.uuid4(), scope_id=w.owner.id))
    body = project_in(w.version_id, w.validator.id).model_dump(mode="json")
    body["crediting_start"], body["crediting_end"] = "9999-01-01", "9999-12-31"
    r = await client.post("/v1/registry/projects", headers=owner, json=body)
    _assert_invalid(r, "crediting_start", "crediting_end")
    r = await client.post(f"/v1/registry/projects/{uuid.uuid4()}/instalments", headers=owner,
                          json={"period_start": "2025-01-01", "period_end": "9999-12-31",
                                "claimed_tonnes": 10**13, "accounting_report_ref": "r",
                                "verifier_vvb_id": str(w.validator.id)})
    _assert_invalid(r, "period_end", "claimed_tonnes")
    async with runtime.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Project))).scalar_one() == before


async def test_vvb_fields_and_nul_are_refused_without_a_row(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """A VVB's field longer than its column, or a name with U+0000, is a 422 problem (the
    latter from the kernel: PostgreSQL text cannot hold NUL) and no VVB is recognised."""
    admin = _bearer(issue_access_token("admin", uuid.uuid4(), roles=frozenset(ROLES)))
    async with runtime.db.transaction() as s:
        before = (await s.execute(select(func.count()).select_from(Vvb))).scalar_one()
    body = {"name": "某核查机构", "uscc": uscc(), "categories": ["engineering"],
            "fields": ["能源" * 40], "valid_from": "2025-01-01", "valid_until": "2027-12-31"}
    _assert_invalid(await client.post("/v1/admin/registry/vvbs", headers=admin, json=body),
                    "fields.0")
    body["fields"], body["name"] = ["能源"], "某核查\x00机构"
    r = await client.post("/v1/admin/registry/vvbs", headers=admin, json=body)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "request.invalid_character"
    async with runtime.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Vvb))).scalar_one() == before
