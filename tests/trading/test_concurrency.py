"""Concurrent orders (real concurrent HTTP requests, each its own transaction) against the same
credits or funds never oversell or overdraw, and the book stays consistent."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import httpx

from app.runtime import Runtime
from tests.trading.factories import ensure_product, exchange, held, ok, trader


def _codes(responses: Sequence[httpx.Response]) -> Counter[str]:
    return Counter(str(r.status_code) if r.status_code < 400 else r.json()["code"]
                   for r in responses)


async def test_concurrent_buys_never_overdraw_the_funds(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        other = await ensure_product(s, "engineering", 2024)
        buyer = await trader(s, funds=15_000)  # enough for three tonnes at 50.00
    rs = await asyncio.gather(*(
        client.post("/v1/trading/orders", headers=buyer.headers,
                    json={"product": (market, other)[i % 2], "side": "buy", "price_fen": 5000,
                          "quantity": 1})
        for i in range(10)))
    assert _codes(rs) == {"201": 3, "trading.insufficient_funds": 7}
    acct = ok(await client.get(f"/v1/admin/trading/accounts/{buyer.account_id}",
                               headers=exchange()))
    assert (acct["available_fen"], acct["locked_fen"]) == (0, 15_000)


async def test_concurrent_sells_never_oversell_the_credits(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        other = await ensure_product(s, "engineering", 2024)
        seller = await trader(s, credits=10)
    rs = await asyncio.gather(*(
        client.post("/v1/trading/orders", headers=seller.headers,
                    json={"product": (market, other)[i % 2], "side": "sell", "price_fen": 5400,
                          "quantity": 3})
        for i in range(8)))
    assert _codes(rs) == {"201": 3, "registry.insufficient_credits": 5}
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 1, "locked": 9,
                                                             "cancelled": 0}


async def test_concurrent_buyers_share_one_offer_without_oversell(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=5)
        buyers = [await trader(s, funds=10_000) for _ in range(8)]
    ok(await client.post("/v1/trading/orders", headers=seller.headers,
                         json={"product": market, "side": "sell", "price_fen": 5000,
                               "quantity": 5}), 201)
    rs = await asyncio.gather(*(
        client.post("/v1/trading/orders", headers=b.headers,
                    json={"product": market, "side": "buy", "price_fen": 5000, "quantity": 1})
        for b in buyers))
    orders = [ok(r, 201) for r in rs]
    assert sorted(o["state"] for o in orders) == ["filled"] * 5 + ["open"] * 3
    async with runtime.db.transaction() as s:
        got = [(await held(s, b.registry_account_id))["held"] for b in buyers]
        assert sorted(got) == [0, 0, 0, 1, 1, 1, 1, 1]
        assert await held(s, seller.registry_account_id) == {"held": 0, "locked": 0,
                                                             "cancelled": 0}


async def test_a_deal_and_an_order_race_for_the_same_credits(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=6)
        buyer = await trader(s, funds=100_000)
    deal = {"buyer_account_id": str(buyer.account_id), "category": "engineering",
            "quantity": 4, "price_fen": 5000}
    order = {"product": market, "side": "sell", "price_fen": 5000, "quantity": 4}
    rs = await asyncio.gather(
        client.post("/v1/trading/deals", json=deal, headers=seller.headers),
        client.post("/v1/trading/orders", json=order, headers=seller.headers))
    assert sorted(_codes(rs).elements()) == ["201", "registry.insufficient_credits"]
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 2, "locked": 4,
                                                             "cancelled": 0}
    for r in rs:
        if r.status_code == 201 and "buyer_account_id" in r.json():
            ok(await client.post(f"/v1/trading/deals/{r.json()['id']}/withdraw",
                                 headers=seller.headers))
