"""Compliance offset (履约抵销, Art. 24, 26): eligibility, the bureau's per-category cap, the
bureau's confirmation (cancelled with purpose ``compliance``) or refusal (released)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import func, select

from app.runtime import Runtime
from offsets.models import ComplianceRequest
from tests.offsets.factories import Holder, admin, bureau, holder
from tests.trading.factories import held, ok, refused

YEAR = 2025


async def _setup(client: httpx.AsyncClient, runtime: Runtime, *, credits: int = 100,
                 emissions: int = 500, cap_bps: int = 1000) -> tuple[Holder, str]:
    async with runtime.db.transaction() as s:
        entity = await holder(s, credits, kind="covered_entity")
    ok(await client.put(f"/v1/admin/offsets/caps/{YEAR}/engineering", json={"cap_bps": cap_bps},
                        headers=bureau()))
    ok(await client.put(f"/v1/admin/offsets/emissions/{entity.org_id}/{YEAR}",
                        json={"verified_tonnes": emissions}, headers=bureau()))
    return entity, "engineering"


async def _rows(runtime: Runtime) -> int:
    async with runtime.db.transaction() as s:
        return int((await s.execute(select(func.count()).select_from(ComplianceRequest)))
                   .scalar_one())


async def test_art26_compliance_offset_needs_the_bureaus_confirmation(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 26: the covered entity applies, the bureau confirms; Art. 29: the credits are
    cancelled in the registry for compliance, naming the entity and the year, publicly."""
    entity, cat = await _setup(client, runtime)
    app = ok(await client.post("/v1/offsets/compliance", headers=entity.headers,
                               json={"year": YEAR, "category": cat, "quantity": 30}), 201)
    assert app["state"] == "pending"
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 70, "locked": 30,
                                                    "cancelled": 0}
    pending = ok(await client.get("/v1/admin/offsets/compliance", params={"state": "pending"},
                                  headers=bureau()))
    assert app["id"] in [p["id"] for p in pending]
    done = ok(await client.post(f"/v1/admin/offsets/compliance/{app['id']}/confirm",
                                headers=bureau()))
    assert done["state"] == "confirmed" and done["serials"]
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 70, "locked": 0,
                                                    "cancelled": 30}
    cancellations = ok(await client.get("/public/registry/datasets/cancellations"))
    mine = [c for c in cancellations if c["serials"] == " ".join(done["serials"])]
    assert mine and mine[0]["purpose"] == "compliance" and mine[0]["quantity"] == 30
    assert f"{YEAR}年度履约" in mine[0]["beneficiary"]
    public = ok(await client.get("/public/offsets/compliance"))
    assert app["id"] in [p["id"] for p in public]
    refused(await client.post(f"/v1/admin/offsets/compliance/{app['id']}/confirm",
                              headers=bureau()), "offsets.wrong_state", 409)
    refused(await client.post(f"/v1/admin/offsets/compliance/{app['id']}/refuse",
                              json={"reason": "x"}, headers=bureau()), "offsets.wrong_state")


async def test_art24_the_category_cap_counts_pending_and_confirmed_not_refused(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 24: the bureau caps compliance offsets per category as a share of verified
    emissions (here 10 % of 500 t = 50 t)."""
    entity, cat = await _setup(client, runtime)
    h = entity.headers
    first = ok(await client.post("/v1/offsets/compliance", headers=h,
                                 json={"year": YEAR, "category": cat, "quantity": 30}), 201)
    before = await _rows(runtime)
    body = refused(await client.post("/v1/offsets/compliance", headers=h,
                                      json={"year": YEAR, "category": cat, "quantity": 21}),
                   "offsets.over_cap", 422)
    assert (body["allowed"], body["used"]) == (50, 30)
    assert await _rows(runtime) == before
    second = ok(await client.post("/v1/offsets/compliance", headers=h,
                                  json={"year": YEAR, "category": cat, "quantity": 20}), 201)
    refused_ = ok(await client.post(f"/v1/admin/offsets/compliance/{second['id']}/refuse",
                                    json={"reason": "材料不全"}, headers=bureau()))
    assert refused_["state"] == "refused" and refused_["reason"] == "材料不全"
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 70, "locked": 30,
                                                    "cancelled": 0}
    ok(await client.post("/v1/offsets/compliance", headers=h,
                         json={"year": YEAR, "category": cat, "quantity": 20}), 201)
    # a lower cap set later binds new applications
    ok(await client.put(f"/v1/admin/offsets/caps/{YEAR}/{cat}", json={"cap_bps": 500},
                        headers=bureau()))
    refused(await client.post("/v1/offsets/compliance", headers=h,
                              json={"year": YEAR, "category": cat, "quantity": 1}),
            "offsets.over_cap")
    ok(await client.put(f"/v1/admin/offsets/caps/{YEAR}/{cat}", json={"cap_bps": 1000},
                        headers=bureau()))
    ok(await client.post(f"/v1/admin/offsets/compliance/{first['id']}/refuse",
                         json={"reason": "test"}, headers=bureau()))


async def test_ineligible_applications_are_refused_and_change_nothing(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    entity, cat = await _setup(client, runtime, credits=10)
    async with runtime.db.transaction() as s:
        owner = await holder(s, 10)
    h = entity.headers
    before = await _rows(runtime)
    cases = [
        (owner.headers, {"year": YEAR, "category": cat, "quantity": 1},
         "offsets.not_covered_entity", 403),
        (h, {"year": 2024, "category": cat, "quantity": 1}, "offsets.no_verified_emissions",
         422),
        (h, {"year": YEAR, "category": "carbon_inclusive", "quantity": 1}, "offsets.no_cap",
         422),
        (h, {"year": YEAR, "category": cat, "quantity": 11}, "registry.insufficient_credits",
         409),
        (h, {"year": YEAR, "category": cat, "quantity": 0}, "request.invalid", 422),
        (admin("bureau"), {"year": YEAR, "category": cat, "quantity": 1}, "auth.wrong_kind",
         403),
    ]
    for headers, body, code, status in cases:
        refused(await client.post("/v1/offsets/compliance", json=body, headers=headers), code,
                status)
    # wrong roles on the bureau's routes
    refused(await client.put(f"/v1/admin/offsets/caps/{YEAR}/{cat}", json={"cap_bps": 9000},
                             headers=admin("exchange")), "auth.permission_denied", 403)
    refused(await client.put(f"/v1/admin/offsets/emissions/{owner.org_id}/{YEAR}",
                             json={"verified_tonnes": 1}, headers=bureau()),
            "offsets.not_covered_entity", 422)
    refused(await client.post(f"/v1/admin/offsets/compliance/{uuid.uuid4()}/confirm",
                              headers=h), "auth.wrong_kind", 403)
    refused(await client.post(f"/v1/admin/offsets/compliance/{uuid.uuid4()}/confirm",
                              headers=bureau()), "offsets.request_not_found", 404)
    assert await _rows(runtime) == before
    caps = ok(await client.get("/v1/admin/offsets/caps", params={"year": YEAR},
                               headers=bureau()))
    assert {c["category"]: c["cap_bps"] for c in caps}[cat] == 1000
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 10, "locked": 0,
                                                    "cancelled": 0}


async def test_concurrent_applications_never_exceed_the_cap(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    entity, cat = await _setup(client, runtime, credits=100)
    rs = await asyncio.gather(*(
        client.post("/v1/offsets/compliance", headers=entity.headers,
                    json={"year": YEAR, "category": cat, "quantity": 15})
        for _ in range(6)))
    codes = sorted(r.json().get("code", str(r.status_code)) for r in rs)
    assert codes == ["201"] * 3 + ["offsets.over_cap"] * 3
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 55, "locked": 45,
                                                    "cancelled": 0}
    for r in rs:
        if r.status_code == 201:
            ok(await client.post(f"/v1/admin/offsets/compliance/{r.json()['id']}/refuse",
                                 json={"reason": "test"}, headers=bureau()))
