"""Art. 22/30 in offsets: a holder the registry dissolved (owner gone, 主体灭失) neither uses
credits nor receives a donation; each refusal leaves no partial state."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import func, select

from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from offsets.models import ComplianceRequest, Retirement
from tests.offsets.factories import bureau, holder
from tests.trading.factories import held, ok, refused

YEAR = 2025


async def _rows(runtime: Runtime) -> tuple[int, int]:
    async with runtime.db.transaction() as s:
        return (
            (await s.execute(select(func.count()).select_from(Retirement))).scalar_one(),
            (await s.execute(select(func.count()).select_from(ComplianceRequest))).scalar_one(),
        )


async def test_art22_art30_a_dissolved_holder_cannot_use_or_receive_credits(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Art. 22: once the registry agency finds the holder gone its CQCER are cancelled and it
    is dissolved; Art. 30: no credit may reach or leave it afterwards. Compliance offsets,
    neutrality, judicial purchase, public-good cancellation and donations by it, and donations
    to it, are refused with ``offsets.organisation_dissolved`` (before any credit is read),
    and nothing changes."""
    async with runtime.db.transaction() as s:
        gone = await holder(s, 20, kind="covered_entity")
        giver = await holder(s, 10)
    ok(await client.put(f"/v1/admin/offsets/caps/{YEAR}/engineering", json={"cap_bps": 1000},
                        headers=bureau()))
    ok(await client.put(f"/v1/admin/offsets/emissions/{gone.org_id}/{YEAR}",
                        json={"verified_tonnes": 500}, headers=bureau()))
    token = issue_access_token("admin", uuid.uuid4(), roles=frozenset({"registry_agency"}))
    done = ok(await client.post(f"/v1/admin/registry/organisations/{gone.org_id}/owner-gone",
                                headers={"Authorization": f"Bearer {token}"},
                                json={"reason": "法院裁定破产终结"}))
    assert done["cancelled_tonnes"] == 20
    before = await _rows(runtime)
    uses = [
        ("/v1/offsets/compliance", {"year": YEAR, "category": "engineering", "quantity": 1}),
        ("/v1/offsets/neutrality", {"subject_kind": "event", "subject_name": "年会",
                                    "emission_tonnes": 1}),
        ("/v1/offsets/judicial", {"category": "ecological_sink", "ordered_tonnes": 1,
                                  "court": "重庆市第一中级人民法院", "case_no": "(2025)渝01刑初1号",
                                  "defendant": "某公司", "defendant_kind": "organisation"}),
        ("/v1/offsets/public-good", {"quantity": 1, "beneficiary": "长江生态保护公益基金"}),
        ("/v1/offsets/donations", {"to_organisation_id": str(giver.org_id), "quantity": 1}),
    ]
    for url, body in uses:
        refused(await client.post(url, json=body, headers=gone.headers),
                "offsets.organisation_dissolved", 409)
    refused(await client.post("/v1/offsets/donations", headers=giver.headers,
                              json={"to_organisation_id": str(gone.org_id), "quantity": 1}),
            "offsets.organisation_dissolved", 409)
    assert await _rows(runtime) == before
    async with runtime.db.transaction() as s:
        assert await held(s, gone.account_id) == {"held": 0, "locked": 0, "cancelled": 20}
        assert await held(s, giver.account_id) == {"held": 10, "locked": 0, "cancelled": 0}
