"""The operator's side (Art. 33): onboarding merchants and stores, API keys, offers and their
status, every write audited; and the citizen's cached browse."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import text

from app import clock
from app.runtime import Runtime
from mall import flows, service
from mall.seed import MERCHANT_ID, OFFER_IDS
from mall.seed import seed_demo as mall_seed
from tests.mall.conftest import (
    Shop,
    admin_headers,
    citizen,
    make_offer,
    offer_state,
    redeem,
)

MERCHANT = {
    "name": "重庆低碳书店", "name_en": "Chongqing Low-carbon Books", "contact_name": "李四",
    "contact_phone": "+86 139 0000 1111", "agreement_no": "AG-2024-001",
    "agreement_signed_on": "2024-09-01", "credit_code": "91500000MA5U000000",
}


async def _audit_count(runtime: Runtime, entity_id: str) -> int:
    async with runtime.db.session() as s:
        return int(await s.scalar(
            text("SELECT count(*) FROM audit_log WHERE entity_id = :e"), {"e": entity_id}
        ) or 0)


async def test_art33_operator_onboards_a_merchant_with_stores_and_a_key(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    h = admin_headers()
    body = {**MERCHANT, "agreement_no": f"AG-{uuid.uuid4().hex[:8]}"}
    r = await client.post("/v1/admin/mall/merchants", json=body, headers=h)
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["contact_phone_masked"] == "139****1111" and m["status"] == "active"
    async with runtime.db.session() as s:  # the phone is stored only encrypted
        raw = await s.scalar(text("SELECT contact_phone_enc FROM mall_merchants WHERE id = :i"),
                             {"i": m["id"]})
    assert raw is not None and b"13900001111" not in bytes(raw)
    dup = await client.post("/v1/admin/mall/merchants", json=body, headers=h)
    assert dup.status_code == 409 and dup.json()["code"] == "mall.agreement_exists"
    store = await client.post(f"/v1/admin/mall/merchants/{m['id']}/stores", headers=h,
                              json={"name": "观音桥店", "address": "江北区观音桥",
                                    "district_code": "500105"})
    assert store.status_code == 201
    key = await client.post(f"/v1/admin/mall/merchants/{m['id']}/api-keys", headers=h,
                            json={"label": "收银台1"})
    assert key.status_code == 201
    merchant_h = {"X-Api-Key": key.json()["key"]}
    assert (await client.get("/v1/merchant/offers", headers=merchant_h)).status_code == 200
    got = await client.get(f"/v1/admin/mall/merchants/{m['id']}", headers=admin_headers("auditor"))
    assert [s["name"] for s in got.json()["stores"]] == ["观音桥店"]
    revoke = await client.delete(
        f"/v1/admin/mall/merchants/{m['id']}/api-keys/{key.json()['id']}", headers=h)
    assert revoke.status_code == 204
    assert (await client.get("/v1/merchant/offers", headers=merchant_h)).status_code == 401
    assert await _audit_count(runtime, m["id"]) == 3  # onboarding, key issued, key revoked
    assert await _audit_count(runtime, store.json()["id"]) == 1


async def test_merchant_bad_input_creates_nothing(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    async with runtime.db.session() as s:
        before = await s.scalar(text("SELECT count(*) FROM mall_merchants"))
    h = admin_headers()
    for bad in ({**MERCHANT, "credit_code": "123"}, {**MERCHANT, "name": ""},
                {**MERCHANT, "agreement_signed_on": "yesterday"},
                {**MERCHANT, "unknown": 1}):
        r = await client.post("/v1/admin/mall/merchants", json=bad, headers=h)
        assert r.status_code == 422 and r.json()["code"] == "request.invalid"
    r = await client.post("/v1/admin/mall/merchants", headers=h, json={
        **MERCHANT, "agreement_no": "AG-dates", "agreement_expires_on": "2024-01-01"})
    assert r.status_code == 422 and r.json()["code"] == "mall.agreement_dates"
    r = await client.post("/v1/admin/mall/merchants", headers=h, json={
        **MERCHANT, "agreement_no": "AG-phone", "contact_phone": "12345"})
    assert r.status_code == 422 and r.json()["code"] == "auth.phone_invalid"
    async with runtime.db.session() as s:
        assert await s.scalar(text("SELECT count(*) FROM mall_merchants")) == before


async def test_offer_lifecycle_and_transitions(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    h = admin_headers("operator_staff")
    now = clock.now()
    body = {"merchant_id": str(shop.merchant_id), "title_zh": "咖啡券", "title_en": "Coffee",
            "category": "food", "price_points": 30, "stock_total": 5,
            "sale_starts_at": (now - timedelta(hours=1)).isoformat(),
            "voucher_validity_s": 86400, "image_url": "https://img.example.cn/coffee.png"}
    r = await client.post("/v1/admin/mall/offers", json=body, headers=h)
    assert r.status_code == 201 and r.json()["status"] == "draft"
    oid = r.json()["id"]
    bad = await client.post(f"/v1/admin/mall/offers/{oid}/status", json={"status": "paused"},
                            headers=h)
    assert bad.status_code == 409 and bad.json()["code"] == "mall.offer_bad_transition"
    for status in ("on_sale", "paused", "on_sale"):
        r = await client.post(f"/v1/admin/mall/offers/{oid}/status", json={"status": status},
                              headers=h)
        assert r.status_code == 200 and r.json()["status"] == status
    cid = await citizen(runtime, 100)
    assert (await redeem(client, uuid.UUID(oid), cid)).status_code == 201
    low = await client.patch(f"/v1/admin/mall/offers/{oid}", json={"stock_total": 0}, headers=h)
    assert low.status_code == 422 and low.json()["code"] == "mall.stock_below_taken"
    more = await client.patch(f"/v1/admin/mall/offers/{oid}", json={"stock_total": 8}, headers=h)
    assert more.status_code == 200 and more.json()["stock_left"] == 7
    state = await offer_state(runtime, uuid.UUID(oid))
    assert state["stock_left"] == 7 and state["gate"] == 7  # the gate follows the stock edit
    window = await client.patch(f"/v1/admin/mall/offers/{oid}", headers=h,
                                json={"sale_ends_at": (now - timedelta(days=1)).isoformat()})
    assert window.status_code == 422 and window.json()["code"] == "mall.sale_window_invalid"
    end = await client.post(f"/v1/admin/mall/offers/{oid}/status", json={"status": "ended"},
                            headers=h)
    assert end.status_code == 200
    edit = await client.patch(f"/v1/admin/mall/offers/{oid}", json={"title_zh": "x"}, headers=h)
    assert edit.status_code == 409 and edit.json()["code"] == "mall.offer_ended"
    r = await redeem(client, uuid.UUID(oid), cid)
    assert r.status_code == 409 and r.json()["code"] == "mall.offer_not_on_sale"
    assert await _audit_count(runtime, oid) == 6  # refused writes leave no audit record
    for wrong in ({**body, "price_points": 0}, {**body, "price_points": 1.5},
                {**body, "category": "weapons"}, {**body, "sale_starts_at": "2024-01-01T00:00"},
                {**body, "voucher_validity_s": 10}):
        refused = await client.post("/v1/admin/mall/offers", json=wrong, headers=h)
        assert refused.status_code == 422, wrong


async def test_suspending_a_merchant_stops_its_sales_at_once(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=5)
    cid = await citizen(runtime, 100)
    assert (await redeem(client, offer, cid)).status_code == 201
    async with runtime.db.transaction() as s:  # as another process would, without our cache
        from mall.schemas import MerchantPatch

        await service.update_merchant(s, shop.merchant_id, MerchantPatch(status="suspended"),
                                      actor="admin:x")
    r = await redeem(client, offer, cid)
    assert r.status_code == 409 and r.json()["code"] == "mall.offer_not_on_sale"
    assert (await offer_state(runtime, offer))["stock_left"] == 4


async def test_browse_filters_pagination_and_cache(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [await make_offer(runtime, shop, title_zh=f"浏览{tag}-{i}", title_en=f"browse {tag}",
                            category="culture", price=10 * (i + 1)) for i in range(5)]
    await make_offer(runtime, shop, title_zh=f"草稿{tag}", status="draft")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"q": tag, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/mall/offers", params=params)
        assert r.status_code == 200
        seen += [o["id"] for o in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert seen == [str(i) for i in reversed(ids)]  # newest first, drafts never shown
    cheap = await client.get("/v1/mall/offers", params={"q": tag, "max_points": 20})
    assert {o["price_points"] for o in cheap.json()["items"]} == {10, 20}
    assert (await client.get("/v1/mall/offers", params={"category": "toys"})).status_code == 422
    bad = await client.get("/v1/mall/offers", params={"cursor": "!!"})
    assert bad.status_code == 422 and bad.json()["code"] == "mall.cursor_invalid"
    # Served from the cache: a change the cache was not told about is not seen...
    first = await client.get("/v1/mall/offers", params={"q": tag, "limit": 50})
    assert str(ids[0]) in [o["id"] for o in first.json()["items"]]
    async with runtime.db.transaction() as s:
        await service.set_offer_status(s, ids[0], "paused", actor="admin:x")
    again = await client.get("/v1/mall/offers", params={"q": tag, "limit": 50})
    assert str(ids[0]) in [o["id"] for o in again.json()["items"]]
    # ...until an admin write moves the cache on.
    await flows.offers_changed(runtime)
    fresh = await client.get("/v1/mall/offers", params={"q": tag, "limit": 50})
    assert str(ids[0]) not in [o["id"] for o in fresh.json()["items"]]


async def test_demo_seed_is_labelled_and_idempotent(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        first = await mall_seed(s)
    async with runtime.db.transaction() as s:
        second = await mall_seed(s)
    assert "merchant_api_key" in first and "merchant_api_key" not in second
    async with runtime.db.session() as s:
        m = await service.get_merchant(s, MERCHANT_ID)
        offers = [await service.get_offer(s, o) for o in OFFER_IDS]
    assert m.is_demo and "演示" in m.name and len(m.stores) == 2
    assert all(o.is_demo and o.status == "on_sale" for o in offers)
    assert offers[0].price_points == 20 and "2元" in offers[0].title_zh
