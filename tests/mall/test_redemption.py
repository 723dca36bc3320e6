"""Two-step redemption (Art. 34): the citizen redeems (hold → voucher), the merchant verifies
(hold redeemed: points cancelled, 注销), or the voucher is cancelled / expires (hold released,
stock returned)."""

from __future__ import annotations

import asyncio
import struct
from datetime import timedelta

import httpx

from app import clock
from app.runtime import Runtime
from mall import flows
from tests.mall.conftest import (
    Shop,
    admin_headers,
    balance,
    citizen,
    citizen_headers,
    make_offer,
    offer_state,
    redeem,
)


async def test_art34_redeem_holds_the_price_and_issues_a_voucher(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=10, price=20)
    cid = await citizen(runtime, 100)
    r = await redeem(client, offer, cid)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["status"] == "issued" and v["price_points"] == 20 and len(v["code"]) >= 22
    assert v["title_zh"] == "乘车券"
    assert await balance(runtime, cid) == (80, 20)
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 9 and state["gate"] == 9
    assert state["vouchers"] == {"issued": 1}
    mine = await client.get("/v1/me/mall/vouchers", headers=citizen_headers(cid))
    assert [x["id"] for x in mine.json()["items"]] == [v["id"]]


async def test_art34_verify_cancels_the_held_points_exactly_once(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, price=20)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    body = {"code": v["code"], "store_id": str(shop.store_id)}
    r = await client.post("/v1/merchant/vouchers/verify", json=body, headers=shop.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "used" and r.json()["store_id"] == str(shop.store_id)
    assert await balance(runtime, cid) == (80, 0)  # 20 points cancelled (注销)
    again = await client.post("/v1/merchant/vouchers/verify", json=body, headers=shop.headers)
    assert again.status_code == 409 and again.json()["code"] == "mall.voucher_used"
    assert again.json()["used_at"] == r.json()["used_at"].replace("Z", "+00:00") or \
        again.json()["used_at"]
    assert await balance(runtime, cid) == (80, 0)
    state = await offer_state(runtime, offer)
    assert state["vouchers"] == {"used": 1} and state["stock_left"] == 9


async def test_cancel_releases_points_and_returns_stock_idempotently(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=3, price=20, limit_per_citizen=1)
    cid = await citizen(runtime, 50)
    v = (await redeem(client, offer, cid)).json()
    url = f"/v1/me/mall/vouchers/{v['id']}/cancel"
    r = await client.post(url, headers=citizen_headers(cid))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert await balance(runtime, cid) == (50, 0)
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 3 and state["gate"] == 3
    again = await client.post(url, headers=citizen_headers(cid))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert (await offer_state(runtime, offer))["stock_left"] == 3
    verify = await client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                               json={"code": v["code"], "store_id": str(shop.store_id)})
    assert verify.status_code == 409 and verify.json()["code"] == "mall.voucher_cancelled"
    # The per-citizen limit counts live vouchers: after cancelling, the citizen may redeem.
    assert (await redeem(client, offer, cid)).status_code == 201


async def test_editing_an_offer_on_sale_keeps_the_price_of_issued_vouchers(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=5, price=20)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    r = await client.patch(f"/v1/admin/mall/offers/{offer}", headers=admin_headers(),
                           json={"price_points": 50, "title_zh": "新乘车券"})
    assert r.status_code == 200 and r.json()["price_points"] == 50
    mine = await client.get(f"/v1/me/mall/vouchers/{v['id']}", headers=citizen_headers(cid))
    assert mine.json()["price_points"] == 20
    await client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                      json={"code": v["code"], "store_id": str(shop.store_id)})
    assert await balance(runtime, cid) == (80, 0)
    v2 = (await redeem(client, offer, cid)).json()
    assert v2["price_points"] == 50 and await balance(runtime, cid) == (30, 50)


async def test_idempotency_key_repeats_the_same_voucher(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=5, price=10)
    cid = await citizen(runtime, 100)
    first = await redeem(client, offer, cid, **{"Idempotency-Key": "k-1"})
    second = await redeem(client, offer, cid, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and second.status_code in (200, 201)
    assert first.json()["id"] == second.json()["id"]
    # The domain is idempotent by itself too, without the HTTP layer's stored answer.
    again, created = await flows.redeem(runtime, cid, offer, request_key="k-1")
    assert str(again.id) == first.json()["id"] and not created
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 4 and state["vouchers"] == {"issued": 1}
    assert await balance(runtime, cid) == (90, 10)


async def test_domain_idempotency_under_concurrent_twins(runtime: Runtime, shop: Shop) -> None:
    offer = await make_offer(runtime, shop, stock=5, price=10)
    cid = await citizen(runtime, 100)
    results = await asyncio.gather(
        *[flows.redeem(runtime, cid, offer, request_key="twin") for _ in range(5)]
    )
    assert len({v.id for v, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 4 and state["gate"] == 4
    assert await balance(runtime, cid) == (90, 10)


async def test_limits_per_citizen_and_per_day(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=10, price=10, limit_per_citizen=2,
                             limit_per_citizen_per_day=1, voucher_validity_s=10 * 86400)
    cid = await citizen(runtime, 100)
    assert (await redeem(client, offer, cid)).status_code == 201
    r = await redeem(client, offer, cid)
    assert r.status_code == 409 and r.json()["code"] == "mall.daily_limit_reached"
    base = clock.now()
    clock.set_clock(lambda: base + timedelta(days=1))
    try:
        assert (await redeem(client, offer, cid)).status_code == 201
        clock.set_clock(lambda: base + timedelta(days=2))
        r = await redeem(client, offer, cid)
        assert r.status_code == 409 and r.json()["code"] == "mall.limit_reached"
    finally:
        clock.set_clock(None)
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 8 and state["gate"] == 8
    assert await balance(runtime, cid) == (80, 20)


async def test_expiry_releases_the_hold_and_returns_stock_exactly_once(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=2, price=30, voucher_validity_s=60)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    later = clock.now() + timedelta(minutes=2)
    clock.set_clock(lambda: later)
    try:
        verify = await client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                                   json={"code": v["code"], "store_id": str(shop.store_id)})
        assert verify.status_code == 409 and verify.json()["code"] == "mall.voucher_expired"
        counts = await asyncio.gather(*[flows.expire_vouchers(runtime) for _ in range(3)])
        assert sum(counts) == 1
        assert await flows.expire_vouchers(runtime) == 0
        cancel = await client.post(f"/v1/me/mall/vouchers/{v['id']}/cancel",
                                   headers=citizen_headers(cid))
        assert cancel.status_code == 409 and cancel.json()["code"] == "mall.voucher_expired"
    finally:
        clock.set_clock(None)
    assert await balance(runtime, cid) == (100, 0)
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 2 and state["gate"] == 2
    assert state["vouchers"] == {"expired": 1}


async def test_expiry_after_the_ledger_released_the_hold_itself(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    from points.service import expire_due

    offer = await make_offer(runtime, shop, stock=2, price=30, voucher_validity_s=60)
    cid = await citizen(runtime, 100)
    await redeem(client, offer, cid)
    later = clock.now() + timedelta(minutes=2)
    async with runtime.db.transaction() as s:
        await expire_due(s, now=later)  # the ledger's own hold expiry ran first
    assert await flows.expire_vouchers(runtime, now=later) == 1
    assert await balance(runtime, cid) == (100, 0)
    assert (await offer_state(runtime, offer))["stock_left"] == 2


async def test_qr_image_of_my_voucher(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    r = await client.get(f"/v1/me/mall/vouchers/{v['id']}/qr.png", headers=citizen_headers(cid))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", r.content[16:24])
    assert width == height and width >= 100


async def test_the_expiry_job_runs_until_stopped(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    from mall.jobs import run_voucher_expiry

    offer = await make_offer(runtime, shop, stock=2, price=30, voucher_validity_s=60)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    later = clock.now() + timedelta(minutes=5)
    clock.set_clock(lambda: later)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(run_voucher_expiry(runtime, stop, interval_s=0.05))
        for _ in range(100):
            mine = await client.get(f"/v1/me/mall/vouchers/{v['id']}",
                                    headers=citizen_headers(cid))
            if mine.json()["status"] == "expired":
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    finally:
        clock.set_clock(None)
    assert mine.json()["status"] == "expired"
    assert await balance(runtime, cid) == (100, 0)
    assert (await offer_state(runtime, offer))["stock_left"] == 2
