"""Public bidding (公开竞价): price-time priority, DvP at every match, partial fills, cancel,
sessions, the daily band, self-trade prevention, Art. 37, and refusals that change nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from app.runtime import Runtime
from tests.trading.factories import Trader, exchange, held, ok, refused, trader
from trading.models import FundEntry, Order, Trade


def _order(side: str, price: int, quantity: int, product: str = "engineering") -> dict[str, Any]:
    return {"product": product, "side": side, "price_fen": price, "quantity": quantity}


async def _place(client: httpx.AsyncClient, t: Trader, side: str, price: int, quantity: int,
                 product: str = "engineering") -> dict[str, Any]:
    r = await client.post("/v1/trading/orders", json=_order(side, price, quantity, product),
                          headers=t.headers)
    return ok(r, 201)  # type: ignore[no-any-return]


async def _funds(client: httpx.AsyncClient, t: Trader) -> tuple[int, int]:
    a = ok(await client.get(f"/v1/admin/trading/accounts/{t.account_id}", headers=exchange()))
    return a["available_fen"], a["locked_fen"]


async def _rows(runtime: Runtime) -> tuple[int, int, int]:
    async with runtime.db.transaction() as s:
        return (
            (await s.execute(select(func.count()).select_from(Order))).scalar_one(),
            (await s.execute(select(func.count()).select_from(Trade))).scalar_one(),
            (await s.execute(select(func.count()).select_from(FundEntry))).scalar_one(),
        )


async def test_art25_public_bidding_price_time_priority_and_dvp(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        a = await trader(s, credits=10)
        b = await trader(s, credits=10)
        c = await trader(s, credits=10)
        buyer = await trader(s, funds=1_000_000)
    a1 = await _place(client, a, "sell", 5000, 2)   # first at 50.00
    b1 = await _place(client, b, "sell", 5000, 2)   # second at 50.00
    c1 = await _place(client, c, "sell", 4900, 1)   # best price, latest
    async with runtime.db.transaction() as s:
        assert (await held(s, a.registry_account_id))["locked"] == 2
    depth = ok(await client.get(f"/public/trading/products/{market}/depth"))
    assert depth["asks"][:2] == [{"price_fen": 4900, "quantity": 1, "orders": 1},
                                 {"price_fen": 5000, "quantity": 4, "orders": 2}]
    got = await _place(client, buyer, "buy", 5100, 4)
    assert got["state"] == "filled"
    # best price first (c at 49.00), then time (a before b); each at the resting price
    assert [(f["price_fen"], f["quantity"]) for f in got["fills"]] == [(4900, 1), (5000, 2),
                                                                       (5000, 1)]
    paid = 4900 + 2 * 5000 + 5000
    assert await _funds(client, buyer) == (1_000_000 - paid, 0)  # price improvement returned
    fee = [x * 50 // 10000 for x in (4900, 10000, 5000)]
    assert [await _funds(client, t) for t in (c, a, b)] == [
        (4900 - fee[0], 0), (10000 - fee[1], 0), (5000 - fee[2], 0)]
    orders = {o["id"]: o for o in ok(await client.get("/v1/trading/orders", headers=b.headers))}
    assert orders[b1["id"]]["filled"] == 1 and orders[b1["id"]]["state"] == "open"
    assert a1["id"] < b1["id"] < c1["id"]
    async with runtime.db.transaction() as s:
        assert await held(s, buyer.registry_account_id) == {"held": 4, "locked": 0,
                                                            "cancelled": 0}
        # b's resting order was split: one tonne delivered, one still locked for the book
        assert await held(s, b.registry_account_id) == {"held": 8, "locked": 1, "cancelled": 0}
    cancelled = ok(await client.post(f"/v1/trading/orders/{b1['id']}/cancel", headers=b.headers))
    assert cancelled["state"] == "cancelled"
    async with runtime.db.transaction() as s:
        assert await held(s, b.registry_account_id) == {"held": 9, "locked": 0, "cancelled": 0}
    refused(await client.post(f"/v1/trading/orders/{b1['id']}/cancel", headers=b.headers),
            "trading.wrong_state", 409)
    refused(await client.post(f"/v1/trading/orders/{a1['id']}/cancel", headers=b.headers),
            "trading.order_not_found", 404)


async def test_a_resting_buy_is_hit_by_a_sell_and_cancel_releases_funds(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10)
        buyer = await trader(s, funds=100_000)
    bid = await _place(client, buyer, "buy", 5200, 5)
    assert await _funds(client, buyer) == (100_000 - 26_000, 26_000)
    hit = await _place(client, seller, "sell", 5100, 3)
    assert [(f["price_fen"], f["quantity"]) for f in hit["fills"]] == [(5200, 3)]
    assert await _funds(client, buyer) == (100_000 - 26_000, 2 * 5200)
    ok(await client.post(f"/v1/trading/orders/{bid['id']}/cancel", headers=buyer.headers))
    assert await _funds(client, buyer) == (100_000 - 3 * 5200, 0)
    async with runtime.db.transaction() as s:
        assert await held(s, buyer.registry_account_id) == {"held": 3, "locked": 0,
                                                            "cancelled": 0}
        assert await held(s, seller.registry_account_id) == {"held": 7, "locked": 0,
                                                             "cancelled": 0}


async def test_self_trade_prevention_cancels_the_incoming_order(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        both = await trader(s, credits=10, funds=100_000)
    ask = await _place(client, both, "sell", 5000, 3)
    bid = await _place(client, both, "buy", 5000, 2)
    assert bid["state"] == "cancelled" and bid["cancel_reason"] == "self_trade_prevented"
    assert bid["fills"] == []
    assert await _funds(client, both) == (100_000, 0)
    depth = ok(await client.get(f"/public/trading/products/{market}/depth"))
    assert {"price_fen": 5000, "quantity": 3, "orders": 1} in depth["asks"]
    ok(await client.post(f"/v1/trading/orders/{ask['id']}/cancel", headers=both.headers))


async def test_refused_orders_change_nothing(client: httpx.AsyncClient, runtime: Runtime,
                                             market: str, pin: Callable[..., datetime]) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=5)
        buyer = await trader(s, funds=10_000)
    before = await _rows(runtime)
    funds = await _funds(client, buyer)
    cases = [
        (seller, _order("sell", 5000, 6), "registry.insufficient_credits", 409),
        (buyer, _order("buy", 5000, 3), "trading.insufficient_funds", 409),
        (buyer, _order("buy", 5501, 1), "trading.price_out_of_band", 422),
        (seller, _order("sell", 4499, 1), "trading.price_out_of_band", 422),
        (buyer, _order("buy", 5000, 1, "no-such-product"), "trading.product_not_found", 404),
        (buyer, {**_order("buy", 5000, 1), "quantity": 1.5}, "request.invalid", 422),
        (buyer, {**_order("buy", 5000, 1), "side": "short"}, "request.invalid", 422),
    ]
    for who, body, code, status in cases:
        refused(await client.post("/v1/trading/orders", json=body, headers=who.headers),
                code, status)
    refused(await client.post("/v1/trading/orders", json=_order("buy", 5000, 1),
                              headers=exchange()), "auth.wrong_kind", 403)
    # outside a session: before the open, the lunch break, after the close, a weekend, a holiday
    for day, hhmm in (("2025-09-10", "09:29"), ("2025-09-10", "11:30"), ("2025-09-10", "15:00"),
                      ("2025-09-13", "10:00"), ("2025-10-01", "10:00")):
        pin(day, hhmm)
        refused(await client.post("/v1/trading/orders", json=_order("buy", 5000, 1),
                                  headers=buyer.headers), "trading.outside_session", 409)
    pin("2027-03-03")
    refused(await client.post("/v1/trading/orders", json=_order("buy", 5000, 1),
                              headers=buyer.headers), "calendar.year_not_published")
    pin()
    assert await _rows(runtime) == before
    assert await _funds(client, buyer) == funds
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 5, "locked": 0,
                                                             "cancelled": 0}
    # a make-up working day on a Sunday (调休上班, 2025-09-28) has sessions
    pin("2025-09-28", "14:00")
    assert (await _place(client, buyer, "buy", 5000, 1))["state"] == "open"


async def test_the_band_follows_the_previous_close(
        client: httpx.AsyncClient, runtime: Runtime, pin: Callable[..., datetime]) -> None:
    """The daily band is centred on the last price of the previous trading day."""
    from tests.trading.factories import consistent, ensure_product
    from trading import matching

    async with runtime.db.transaction() as s:
        key = await ensure_product(s, "carbon_inclusive", 2024, ref=1000)
        seller = await trader(s, credits=10, category="carbon_inclusive")
        buyer = await trader(s, funds=100_000)
    pin("2025-09-11")
    products = {p["key"]: p for p in ok(await client.get("/public/trading/products"))}
    assert (products[key]["band_low_fen"], products[key]["band_high_fen"]) == (900, 1100)
    await _place(client, seller, "sell", 1080, 2, key)
    await _place(client, buyer, "buy", 1100, 1, key)
    # the same day, the band stays around yesterday's close (the listing price)
    refused(await client.post("/v1/trading/orders", json=_order("buy", 1101, 1, key),
                              headers=buyer.headers), "trading.price_out_of_band")
    pin("2025-09-12")
    products = {p["key"]: p for p in ok(await client.get("/public/trading/products"))}
    assert products[key]["reference_price_fen"] == 1080
    assert (products[key]["band_low_fen"], products[key]["band_high_fen"]) == (972, 1188)
    # yesterday's unfilled day order has expired: its tonne is released on the next placement
    got = await _place(client, buyer, "buy", 1188, 1, key)
    assert got["state"] == "open" and got["fills"] == []
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 9, "locked": 0,
                                                             "cancelled": 0}
        await matching.cancel_all(s, actor="test")
    async with runtime.db.transaction() as s:
        await consistent(s)


async def test_art37_staff_accounts_cannot_place_orders(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 37: staff of the registry agency, the operator and the exchange may not trade."""
    async with runtime.db.transaction() as s:
        staff = [await trader(s, funds=100_000, staff_of=who)
                 for who in ("registry_agency", "operator", "exchange")]
    before = await _rows(runtime)
    for st in staff:
        for side in ("buy", "sell"):
            refused(await client.post("/v1/trading/orders", json=_order(side, 5000, 1),
                                      headers=st.headers), "trading.staff_barred", 403)
    assert await _rows(runtime) == before
