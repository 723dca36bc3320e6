"""The trading rules of 第四章 named by article: Art. 23 (the product is CQCER, by category and
vintage), Art. 25 ¶2 (no fraud or collusion: self-trade prevention, one account per holder, the
daily price band), Art. 22/30 (a holder the registry dissolved neither trades nor is traded
with)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from registry import service as registry
from tests.trading.factories import Trader, exchange, held, ok, refused, trader
from trading.models import Deal, FundEntry, Order, Trade, TradingAccount


def _order(side: str, price: int, quantity: int, product: str = "engineering") -> dict[str, Any]:
    return {"product": product, "side": side, "price_fen": price, "quantity": quantity}


def _deal(buyer: Trader, quantity: int, price: int = 5000) -> dict[str, Any]:
    return {"buyer_account_id": str(buyer.account_id), "category": "engineering",
            "quantity": quantity, "price_fen": price}


async def _rows(runtime: Runtime) -> tuple[int, ...]:
    async with runtime.db.transaction() as s:
        return tuple([
            (await s.execute(select(func.count()).select_from(t))).scalar_one()
            for t in (Order, Trade, FundEntry, Deal, TradingAccount)])


async def _funds(client: httpx.AsyncClient, t: Trader) -> tuple[int, int]:
    a = ok(await client.get(f"/v1/admin/trading/accounts/{t.account_id}", headers=exchange()))
    return a["available_fen"], a["locked_fen"]


def _registry_admin() -> dict[str, str]:
    token = issue_access_token("admin", uuid.uuid4(), roles=frozenset({"registry_agency"}),
                               ttl_s=4 * 365 * 86400)
    return {"Authorization": f"Bearer {token}"}


async def test_art23_the_traded_product_is_cqcer_by_category_and_vintage(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 23: the product traded is CQCER, listed by category (and optionally vintage); an
    order delivers only credits of its product's category, and the trade records both."""
    async with runtime.db.transaction() as s:
        eng = await trader(s, credits=5)
        buyer = await trader(s, funds=1_000_000)
    listed = {p["key"]: p for p in ok(await client.get("/public/trading/products"))}
    assert listed[market]["category"] == "engineering"
    # a category outside the three CQCER categories is not a product
    refused(await client.post("/v1/admin/trading/products", headers=exchange(),
                              json={"category": "stocks", "ref_price_fen": 100}),
            "request.invalid", 422)
    sink = ok(await client.post("/v1/admin/trading/products", headers=exchange(),
                                json={"category": "ecological_sink", "vintage": 2025,
                                      "ref_price_fen": 5000}), 201)
    assert (sink["key"], sink["category"], sink["vintage"]) == \
        ("ecological_sink-2025", "ecological_sink", 2025)
    before = await _rows(runtime)
    # the engineering holder has no ecological-sink credits to sell
    refused(await client.post("/v1/trading/orders", json=_order("sell", 5000, 1, sink["key"]),
                              headers=eng.headers), "registry.insufficient_credits", 409)
    assert await _rows(runtime) == before
    ok(await client.post("/v1/trading/orders", json=_order("sell", 5000, 2, market),
                         headers=eng.headers), 201)
    got = ok(await client.post("/v1/trading/orders", json=_order("buy", 5000, 2, market),
                               headers=buyer.headers), 201)
    assert got["state"] == "filled"
    async with runtime.db.transaction() as s:
        t = (await s.execute(select(Trade).where(Trade.buyer_account_id == buyer.account_id)
                             )).scalar_one()
        assert (t.category, t.vintage, t.quantity) == ("engineering", None, 2)
        assert (await held(s, buyer.registry_account_id))["held"] == 2
        bought = await registry.holdings(s, buyer.registry_account_id)
        assert {b.category for b in bought} == {"engineering"}


async def test_art25_no_self_trade_no_wash_account_and_the_price_band(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 25 ¶2: 不得欺诈、相互串通、散布虚假信息哄抬物价. Through the API: an order never
    fills against its own holder's order (self-trade prevention cancels the incoming remainder,
    funds untouched); a deal to oneself is refused; one holder has one trading account (no wash
    trades between accounts of the same organisation); prices outside the day's band are
    refused; every refusal leaves no partial state."""
    async with runtime.db.transaction() as s:
        both = await trader(s, credits=10, funds=100_000)
        other = await trader(s, funds=100_000)
    ask = ok(await client.post("/v1/trading/orders", json=_order("sell", 5000, 3),
                               headers=both.headers), 201)
    bid = ok(await client.post("/v1/trading/orders", json=_order("buy", 5000, 2),
                               headers=both.headers), 201)
    assert (bid["state"], bid["cancel_reason"], bid["fills"]) == \
        ("cancelled", "self_trade_prevented", [])
    assert await _funds(client, both) == (100_000, 0)
    before = await _rows(runtime)
    # an agreement transfer to oneself
    refused(await client.post("/v1/trading/deals", json=_deal(both, 1), headers=both.headers),
            "trading.self_trade", 409)
    # a second trading account for the same organisation (a wash-trade pair)
    refused(await client.post("/v1/admin/trading/accounts", headers=exchange(),
                              json={"organisation_id": str(both.org_id)}),
            "trading.account_exists", 409)
    # the band is ±10 % around the reference price 5000 fen
    products = {p["key"]: p for p in ok(await client.get("/public/trading/products"))}
    low, high = products[market]["band_low_fen"], products[market]["band_high_fen"]
    assert (low, high) == (4500, 5500)
    for who, side, price in ((other, "buy", high + 1), (both, "sell", low - 1)):
        body = refused(await client.post("/v1/trading/orders", json=_order(side, price, 1),
                                         headers=who.headers), "trading.price_out_of_band", 422)
        assert (body["low"], body["high"]) == (low, high)
    assert await _rows(runtime) == before
    assert await _funds(client, other) == (100_000, 0)
    # at the band's edge the other holder's order does fill
    got = ok(await client.post("/v1/trading/orders", json=_order("buy", high, 3),
                               headers=other.headers), 201)
    assert got["state"] == "filled" and got["fills"][0]["price_fen"] == 5000
    async with runtime.db.transaction() as s:
        t = (await s.execute(select(Trade).where(Trade.buyer_account_id == other.account_id)
                             )).scalar_one()
        assert (t.sell_order_id, t.seller_account_id) == (ask["id"], both.account_id)


async def test_art22_art30_a_dissolved_holder_neither_trades_nor_is_traded_with(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 22: after the registry agency finds the owner gone (主体灭失), it is dissolved and
    its CQCER cancelled; Art. 30: nothing may reach or leave it afterwards. Its orders, deal
    proposals and acceptances are refused (``trading.account_closed``), deals to it are
    refused, and its resting bid leaves the book (reservation returned) instead of filling."""
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10, funds=0)
        gone = await trader(s, funds=100_000)
    rest = ok(await client.post("/v1/trading/orders", json=_order("buy", 5000, 2),
                                headers=gone.headers), 201)
    assert rest["state"] == "open"
    pending = ok(await client.post("/v1/trading/deals", json=_deal(gone, 3),
                                   headers=seller.headers), 201)
    ok(await client.post(f"/v1/admin/registry/organisations/{gone.org_id}/owner-gone",
                         headers=_registry_admin(), json={"reason": "工商注销"}))
    before = await _rows(runtime)
    funds = await _funds(client, gone)
    refused(await client.post("/v1/trading/orders", json=_order("buy", 5000, 1),
                              headers=gone.headers), "trading.account_closed", 409)
    refused(await client.post("/v1/trading/deals", json=_deal(seller, 1), headers=gone.headers),
            "trading.account_closed", 409)
    refused(await client.post("/v1/trading/deals", json=_deal(gone, 1), headers=seller.headers),
            "trading.account_closed", 409)
    refused(await client.post(f"/v1/trading/deals/{pending['id']}/accept",
                              headers=gone.headers), "trading.account_closed", 409)
    refused(await client.post("/v1/admin/trading/accounts", headers=exchange(),
                              json={"organisation_id": str(gone.org_id)}),
            "trading.account_closed", 409)
    assert await _rows(runtime) == before
    assert await _funds(client, gone) == funds
    # a sell at the dissolved holder's resting bid does not fill against it
    ask = ok(await client.post("/v1/trading/orders", json=_order("sell", 5000, 2),
                               headers=seller.headers), 201)
    assert (ask["state"], ask["fills"]) == ("open", [])
    async with runtime.db.transaction() as s:
        r = await s.get(Order, rest["id"])
        assert r is not None and (r.state, r.cancel_reason) == ("cancelled", "account_closed")
        assert (await held(s, gone.registry_account_id)) == {"held": 0, "locked": 0,
                                                             "cancelled": 0}
        assert (await held(s, seller.registry_account_id)) == {"held": 5, "locked": 5,
                                                               "cancelled": 0}
        assert (await s.execute(select(func.count()).select_from(Trade))).scalar_one() == \
            before[1]
    assert await _funds(client, gone) == (100_000, 0)
    ok(await client.post(f"/v1/trading/deals/{pending['id']}/withdraw", headers=seller.headers))
