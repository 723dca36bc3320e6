"""Races through HTTP with real concurrency against real PostgreSQL and Redis: the flash
sale, one citizen firing many requests at once, double scans, cancel against verify."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
from sqlalchemy import text

from app.runtime import Runtime
from mall import flows, service
from tests.mall.conftest import (
    Shop,
    balance,
    citizen,
    citizen_headers,
    give_points,
    make_offer,
    offer_state,
    redeem,
)


async def test_flash_sale_1000_citizens_100_in_stock_exact(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    """1,000 distinct citizens at once for 100 units: exactly 100 vouchers, stock 0, every
    loser a clear ``mall.sold_out``, no balance negative (Art. 34: points leave only by the
    citizen's own redemption — winners hold exactly the price, losers keep everything)."""
    offer = await make_offer(runtime, shop, stock=100, price=20, limit_per_citizen=1)
    citizens = [uuid.uuid4() for _ in range(1000)]
    await give_points(runtime, citizens, 30)
    responses = await asyncio.gather(*[redeem(client, offer, c) for c in citizens])
    outcome = Counter(
        "won" if r.status_code == 201 else r.json().get("code") for r in responses
    )
    assert outcome == {"won": 100, "mall.sold_out": 900}
    assert all(r.status_code == 409 for r in responses if r.status_code != 201)
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 0 and state["gate"] == 0
    assert state["vouchers"] == {"issued": 100}
    assert len({r.json()["code"] for r in responses if r.status_code == 201}) == 100
    async with runtime.db.session() as s:
        rows = (await s.execute(text(
            "SELECT available, held FROM points_accounts WHERE citizen_id = ANY(:c)"),
            {"c": citizens})).all()
    assert min(a for a, _ in rows) >= 0
    assert Counter((a, h) for a, h in rows) == {(10, 20): 100, (30, 0): 900}


async def test_one_citizen_fires_20_requests_at_once_limit_holds(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=100, price=10, limit_per_citizen=1)
    cid = await citizen(runtime, 1000)
    responses = await asyncio.gather(*[redeem(client, offer, cid) for _ in range(20)])
    outcome = Counter(r.status_code if r.status_code == 201 else r.json()["code"]
                      for r in responses)
    assert outcome == {201: 1, "mall.limit_reached": 19}
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 99 and state["gate"] == 99  # losers gave their tokens back
    assert await balance(runtime, cid) == (990, 10)


async def test_per_day_limit_holds_under_a_burst(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=100, price=10, limit_per_citizen=10,
                             limit_per_citizen_per_day=3)
    cid = await citizen(runtime, 1000)
    responses = await asyncio.gather(*[redeem(client, offer, cid) for _ in range(20)])
    outcome = Counter(r.status_code if r.status_code == 201 else r.json()["code"]
                      for r in responses)
    assert outcome == {201: 3, "mall.daily_limit_reached": 17}
    assert (await offer_state(runtime, offer))["stock_left"] == 97
    assert await balance(runtime, cid) == (970, 30)


async def test_last_points_on_two_offers_at_once(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    a = await make_offer(runtime, shop, stock=5, price=20)
    b = await make_offer(runtime, shop, stock=5, price=20)
    cid = await citizen(runtime, 20)
    responses = await asyncio.gather(redeem(client, a, cid), redeem(client, b, cid))
    codes = sorted(str(r.status_code) if r.status_code == 201 else r.json()["code"]
                   for r in responses)
    assert codes == ["201", "mall.insufficient_points"]
    assert await balance(runtime, cid) == (0, 20)
    stocks = [(await offer_state(runtime, o))["stock_left"] for o in (a, b)]
    assert sorted(stocks) == [4, 5]


async def test_a_voucher_scanned_twice_at_the_same_moment_is_used_once(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, price=20)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    body = {"code": v["code"], "store_id": str(shop.store_id)}
    responses = await asyncio.gather(*[
        client.post("/v1/merchant/vouchers/verify", json=body, headers=shop.headers)
        for _ in range(5)
    ])
    outcome = Counter(r.status_code if r.status_code == 200 else r.json()["code"]
                      for r in responses)
    assert outcome == {200: 1, "mall.voucher_used": 4}
    assert await balance(runtime, cid) == (80, 0)


async def test_cancel_against_verify_exactly_one_wins(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    for _ in range(5):
        offer = await make_offer(runtime, shop, stock=1, price=20)
        cid = await citizen(runtime, 100)
        v = (await redeem(client, offer, cid)).json()
        verify, cancel = await asyncio.gather(
            client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                        json={"code": v["code"], "store_id": str(shop.store_id)}),
            client.post(f"/v1/me/mall/vouchers/{v['id']}/cancel",
                        headers=citizen_headers(cid)),
        )
        state = await offer_state(runtime, offer)
        if verify.status_code == 200:
            assert cancel.json()["code"] == "mall.voucher_used"
            assert await balance(runtime, cid) == (80, 0)
            assert state["stock_left"] == 0 and state["vouchers"] == {"used": 1}
        else:
            assert cancel.status_code == 200 and verify.json()["code"] == "mall.voucher_cancelled"
            assert await balance(runtime, cid) == (100, 0)
            assert state["stock_left"] == 1 and state["gate"] == 1


async def test_database_failures_give_gate_tokens_back(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    """Citizens without points pass the gate and fail in the database: each gives its token
    back, so the gate and the stock agree afterwards and a paying citizen still wins."""
    offer = await make_offer(runtime, shop, stock=3, price=20)
    broke = [uuid.uuid4() for _ in range(50)]
    responses = await asyncio.gather(*[redeem(client, offer, c) for c in broke])
    codes = Counter(r.json()["code"] for r in responses)
    # While tokens are out with requests that will fail, others may be shed as sold out.
    assert set(codes) <= {"mall.insufficient_points", "mall.sold_out"}
    assert codes["mall.insufficient_points"] >= 3
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 3 and state["gate"] == 3
    assert (await redeem(client, offer, await citizen(runtime, 20))).status_code == 201


async def test_a_lost_or_low_gate_is_rebuilt_from_the_database(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    offer = await make_offer(runtime, shop, stock=5, price=10)
    cid = await citizen(runtime, 100)
    assert (await redeem(client, offer, cid)).status_code == 201
    await runtime.redis.delete(flows.gate_key(runtime, offer))  # e.g. Redis restarted empty
    assert (await redeem(client, offer, cid)).status_code == 201
    assert (await offer_state(runtime, offer))["gate"] == 3
    # A crash between the gate and its compensation leaves the gate low: it only sheds.
    await runtime.redis.set(flows.gate_key(runtime, offer), 0)
    assert (await redeem(client, offer, cid)).json()["code"] == "mall.sold_out"
    assert await flows.reconcile_gates(runtime) >= 1
    assert (await offer_state(runtime, offer))["gate"] == 3
    assert (await redeem(client, offer, cid)).status_code == 201


async def test_stale_snapshot_never_sells_a_paused_offer(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop
) -> None:
    """Another process pauses the offer; this process still has it cached as on sale. The
    database's version check refuses, and the flow answers from a fresh snapshot."""
    offer = await make_offer(runtime, shop, stock=5, price=10)
    cid = await citizen(runtime, 100)
    assert (await redeem(client, offer, cid)).status_code == 201  # snapshot now cached
    async with runtime.db.transaction() as s:  # no cache invalidation: "another process"
        await service.set_offer_status(s, offer, "paused", actor="admin:other")
    r = await redeem(client, offer, cid)
    assert r.status_code == 409 and r.json()["code"] == "mall.offer_not_on_sale"
    state = await offer_state(runtime, offer)
    assert state["stock_left"] == 4 and state["gate"] == 4
    assert await balance(runtime, cid) == (90, 10)
