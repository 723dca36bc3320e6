"""Bad input and refusals: problem+json with a stable code, and nothing taken — stock, gate,
vouchers, limit counters and points are the same before and after."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import text

from app import clock
from app.runtime import Runtime
from tests.mall.conftest import (
    Shop,
    admin_headers,
    balance,
    citizen,
    citizen_headers,
    make_offer,
    make_shop,
    offer_state,
    redeem,
)


async def _counters(runtime: Runtime, offer_id: UUID) -> int:
    async with runtime.db.session() as s:
        n = await s.scalar(
            text("SELECT coalesce(sum(n), 0) FROM mall_limit_counters WHERE offer_id = :o"),
            {"o": offer_id},
        )
    return int(n or 0)


async def _snapshot(runtime: Runtime, offer_id: UUID, cid: UUID) -> dict[str, Any]:
    return {**(await offer_state(runtime, offer_id)),
            "counters": await _counters(runtime, offer_id),
            "balance": await balance(runtime, cid)}


def _problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


async def test_art34_not_enough_points_takes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=5, price=20, limit_per_citizen=1)
    cid = await citizen(runtime, 19)
    await redeem(client, offer, await citizen(runtime, 50))  # opens the gate
    before = await _snapshot(runtime, offer, cid)
    _problem(await redeem(client, offer, cid), 409, "mall.insufficient_points")
    assert await _snapshot(runtime, offer, cid) == before
    nobody = uuid.uuid4()  # a citizen never credited has no account at all
    _problem(await redeem(client, offer, nobody), 409, "mall.insufficient_points")
    assert await _snapshot(runtime, offer, cid) == before


@pytest.mark.parametrize("status", ["draft", "paused", "ended"])
async def test_offer_not_on_sale_takes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop, status: str
) -> None:
    offer = await make_offer(runtime, shop, status=status)
    cid = await citizen(runtime, 100)
    before = await _snapshot(runtime, offer, cid)
    _problem(await redeem(client, offer, cid), 409, "mall.offer_not_on_sale")
    assert await _snapshot(runtime, offer, cid) == before


async def test_sale_window_not_open_or_closed(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    now = clock.now()
    future = await make_offer(runtime, shop, sale_starts_at=now + timedelta(days=1))
    past = await make_offer(runtime, shop, sale_starts_at=now - timedelta(days=2),
                            sale_ends_at=now - timedelta(days=1))
    cid = await citizen(runtime, 100)
    for offer in (future, past):
        before = await _snapshot(runtime, offer, cid)
        _problem(await redeem(client, offer, cid), 409, "mall.offer_not_on_sale")
        assert await _snapshot(runtime, offer, cid) == before


async def test_unknown_offer_and_malformed_ids(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    cid = await citizen(runtime, 100)
    _problem(await redeem(client, uuid.uuid4(), cid), 404, "mall.offer_not_found")
    r = await client.post("/v1/me/mall/offers/not-a-uuid/redeem", headers=citizen_headers(cid))
    _problem(r, 422, "request.invalid")
    assert await balance(runtime, cid) == (100, 0)


async def test_sold_out_takes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=1, price=10)
    assert (await redeem(client, offer, await citizen(runtime, 100))).status_code == 201
    cid = await citizen(runtime, 100)
    before = await _snapshot(runtime, offer, cid)
    _problem(await redeem(client, offer, cid), 409, "mall.sold_out")
    assert await _snapshot(runtime, offer, cid) == before
    assert before["stock_left"] == 0 and before["gate"] == 0


async def test_verify_unknown_code_and_malformed_body(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    url = "/v1/merchant/vouchers/verify"
    _problem(await client.post(url, headers=shop.headers,
                               json={"code": "A" * 22, "store_id": str(shop.store_id)}),
             404, "mall.voucher_not_found")
    for body in ({"store_id": str(shop.store_id)}, {"code": "短", "store_id": "x"},
                 {"code": "bad code!!", "store_id": str(shop.store_id)},
                 {"code": "A" * 22, "store_id": str(shop.store_id), "extra": 1}):
        _problem(await client.post(url, headers=shop.headers, json=body), 422, "request.invalid")
    r = await client.post(url, headers=shop.headers, content=b"{not json",
                          )
    _problem(r, 422, "request.invalid")


async def test_a_merchant_cannot_verify_another_merchants_voucher(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    other = await make_shop(runtime, name="别家商户")
    offer = await make_offer(runtime, shop, price=20)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    before = await _snapshot(runtime, offer, cid)
    r = await client.post("/v1/merchant/vouchers/verify", headers=other.headers,
                          json={"code": v["code"], "store_id": str(other.store_id)})
    _problem(r, 403, "mall.voucher_wrong_merchant")
    # Nor through one of the rightful merchant's stores.
    r = await client.post("/v1/merchant/vouchers/verify", headers=other.headers,
                          json={"code": v["code"], "store_id": str(shop.store_id)})
    _problem(r, 404, "mall.store_not_found")
    assert await _snapshot(runtime, offer, cid) == before
    assert before["vouchers"] == {"issued": 1} and before["balance"] == (80, 20)


async def test_a_citizen_cannot_see_or_cancel_another_citizens_voucher(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, price=20)
    owner, intruder = await citizen(runtime, 100), await citizen(runtime, 100)
    v = (await redeem(client, offer, owner)).json()
    before = await _snapshot(runtime, offer, owner)
    h = citizen_headers(intruder)
    _problem(await client.get(f"/v1/me/mall/vouchers/{v['id']}", headers=h),
             404, "mall.voucher_not_found")
    _problem(await client.get(f"/v1/me/mall/vouchers/{v['id']}/qr.png", headers=h),
             404, "mall.voucher_not_found")
    _problem(await client.post(f"/v1/me/mall/vouchers/{v['id']}/cancel", headers=h),
             404, "mall.voucher_not_found")
    assert (await client.get("/v1/me/mall/vouchers", headers=h)).json()["items"] == []
    assert await _snapshot(runtime, offer, owner) == before


async def test_wrong_callers_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop)
    cid = await citizen(runtime, 100)
    _problem(await client.post(f"/v1/me/mall/offers/{offer}/redeem"), 401, "auth.missing")
    _problem(await client.post(f"/v1/me/mall/offers/{offer}/redeem", headers=shop.headers),
             401, "auth.missing")
    _problem(await client.post("/v1/merchant/vouchers/verify", headers=citizen_headers(cid),
                               json={"code": "A" * 22, "store_id": str(shop.store_id)}),
             403, "auth.wrong_kind")
    _problem(await client.post("/v1/merchant/vouchers/verify", headers={"X-Api-Key": "thk_x"},
                               json={"code": "A" * 22, "store_id": str(shop.store_id)}),
             401, "auth.api_key_invalid")
    _problem(await client.post("/v1/admin/mall/offers", headers=admin_headers("auditor"),
                               json={}), 403, "auth.permission_denied")
    _problem(await client.get("/v1/admin/mall/merchants", headers=citizen_headers(cid)),
             403, "auth.wrong_kind")
    assert (await offer_state(runtime, offer))["vouchers"] == {}
