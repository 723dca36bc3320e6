"""Agreement transfer (协议转让, Art. 25): propose → credits locked → accept (DvP in one
transaction), decline or expiry (released); Art. 37 staff barred; refusals change nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select, text

from app.runtime import Runtime
from tests.trading.factories import Trader, exchange, held, ok, refused, trader
from trading import deals
from trading.models import Deal, FundEntry, Trade
from trading.schemas import DealIn


def _deal(buyer: Trader, quantity: int = 10, price: int = 6000, **kw: Any) -> dict[str, Any]:
    return {"buyer_account_id": str(buyer.account_id), "category": "engineering",
            "quantity": quantity, "price_fen": price, **kw}


async def _balances(client: httpx.AsyncClient, *ts: Trader) -> list[tuple[int, int]]:
    out = []
    for t in ts:
        a = ok(await client.get(f"/v1/admin/trading/accounts/{t.account_id}", headers=exchange()))
        out.append((a["available_fen"], a["locked_fen"]))
    return out


async def _state(runtime: Runtime) -> tuple[int, int, int]:
    async with runtime.db.transaction() as s:
        return (
            (await s.execute(select(func.count()).select_from(Deal))).scalar_one(),
            (await s.execute(select(func.count()).select_from(Trade))).scalar_one(),
            (await s.execute(select(func.count()).select_from(FundEntry))).scalar_one(),
        )


async def test_art25_agreement_transfer_settles_delivery_versus_payment(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=30)
        buyer = await trader(s, funds=1_000_000)
    deal = ok(await client.post("/v1/trading/deals", json=_deal(buyer, 10, 6000),
                                headers=seller.headers), 201)
    assert deal["state"] == "proposed"
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 20, "locked": 10,
                                                             "cancelled": 0}
    listed = ok(await client.get("/v1/trading/deals", headers=buyer.headers))
    assert [d["id"] for d in listed] == [deal["id"]]
    done = ok(await client.post(f"/v1/trading/deals/{deal['id']}/accept", headers=buyer.headers))
    assert done["state"] == "accepted" and done["trade_id"]
    fee = 60_000 * 50 // 10000  # default fee 0.5 %
    assert await _balances(client, buyer, seller) == [(940_000, 0), (60_000 - fee, 0)]
    async with runtime.db.transaction() as s:
        assert await held(s, buyer.registry_account_id) == {"held": 10, "locked": 0,
                                                            "cancelled": 0}
        assert await held(s, seller.registry_account_id) == {"held": 20, "locked": 0,
                                                             "cancelled": 0}
    trades = ok(await client.get("/public/trading/trades", params={"product": "engineering"}))
    mine = [t for t in trades if t["id"] == done["trade_id"]]
    assert mine and mine[0]["method"] == "agreement" and mine[0]["quantity"] == 10
    assert set(mine[0]) == {"id", "product", "method", "price_fen", "quantity", "executed_at"}
    refused(await client.post(f"/v1/trading/deals/{deal['id']}/accept", headers=buyer.headers),
            "trading.wrong_state", 409)


async def test_decline_and_withdraw_release_the_credits(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10)
        buyer = await trader(s, funds=1_000_000)
    d1 = ok(await client.post("/v1/trading/deals", json=_deal(buyer, 6), headers=seller.headers),
            201)
    # only the named buyer may answer, only the seller may withdraw
    refused(await client.post(f"/v1/trading/deals/{d1['id']}/accept", headers=seller.headers),
            "trading.not_party", 403)
    refused(await client.post(f"/v1/trading/deals/{d1['id']}/withdraw", headers=buyer.headers),
            "trading.not_party", 403)
    # the locked tonnes cannot be offered twice
    refused(await client.post("/v1/trading/deals", json=_deal(buyer, 5), headers=seller.headers),
            "registry.insufficient_credits", 409)
    assert ok(await client.post(f"/v1/trading/deals/{d1['id']}/decline",
                                headers=buyer.headers))["state"] == "declined"
    d2 = ok(await client.post("/v1/trading/deals", json=_deal(buyer, 10), headers=seller.headers),
            201)
    assert ok(await client.post(f"/v1/trading/deals/{d2['id']}/withdraw",
                                headers=seller.headers))["state"] == "withdrawn"
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 10, "locked": 0,
                                                             "cancelled": 0}


async def test_an_expired_proposal_cannot_be_accepted_and_is_released(
        client: httpx.AsyncClient, runtime: Runtime, market: str,
        pin: Callable[..., datetime]) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10)
        buyer = await trader(s, funds=1_000_000)
    deal = ok(await client.post("/v1/trading/deals", json=_deal(buyer, 4, expires_in_s=600),
                                headers=seller.headers), 201)
    pin(hhmm="10:11")
    before = await _state(runtime)
    refused(await client.post(f"/v1/trading/deals/{deal['id']}/accept", headers=buyer.headers),
            "trading.deal_expired", 409)
    assert await _state(runtime) == before
    closed = ok(await client.post("/v1/admin/trading/close-day", headers=exchange()))
    assert closed["deals_expired"] >= 1
    async with runtime.db.transaction() as s:
        assert (await s.get(Deal, deal["id"], populate_existing=True)).state == "expired"  # type: ignore[union-attr]
        assert await held(s, seller.registry_account_id) == {"held": 10, "locked": 0,
                                                             "cancelled": 0}
        assert await deals.expire_due(s, actor="test") == 0


async def test_refusals_leave_no_partial_state(client: httpx.AsyncClient, runtime: Runtime,
                                               market: str, pin: Callable[..., datetime]) -> None:
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10)
        poor = await trader(s, funds=1000)
    deal = ok(await client.post("/v1/trading/deals", json=_deal(poor, 5, 6000),
                                headers=seller.headers), 201)
    before = await _state(runtime)
    balances = await _balances(client, poor, seller)
    body = refused(await client.post(f"/v1/trading/deals/{deal['id']}/accept",
                                     headers=poor.headers), "trading.insufficient_funds", 409)
    assert body["needed"] == 30_000
    refused(await client.post("/v1/trading/deals", json=_deal(poor, 11), headers=seller.headers),
            "registry.insufficient_credits", 409)
    refused(await client.post("/v1/trading/deals",
                              json={**_deal(poor, 1), "category": "ecological_sink"},
                              headers=seller.headers), "registry.insufficient_credits", 409)
    refused(await client.post("/v1/trading/deals", json=_deal(poor, 0), headers=seller.headers),
            "request.invalid", 422)
    refused(await client.post("/v1/trading/deals", json=_deal(poor, 1), headers=exchange()),
            "auth.wrong_kind", 403)
    pin(hhmm="12:00")  # the lunch break
    refused(await client.post("/v1/trading/deals", json=_deal(poor, 1), headers=seller.headers),
            "trading.outside_session", 409)
    assert await _state(runtime) == before
    assert await _balances(client, poor, seller) == balances
    async with runtime.db.transaction() as s:
        assert await held(s, seller.registry_account_id) == {"held": 5, "locked": 5,
                                                             "cancelled": 0}


async def test_art37_staff_can_neither_offer_nor_accept(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 37: staff of the registry agency, the operator and the exchange may not trade."""
    async with runtime.db.transaction() as s:
        seller = await trader(s, credits=10)
        staff = [await trader(s, funds=1_000_000, staff_of=who)
                 for who in ("registry_agency", "operator", "exchange")]
        buyer = await trader(s, funds=1_000_000)
    before = await _state(runtime)
    for st in staff:
        refused(await client.post("/v1/trading/deals", json=_deal(st, 1), headers=seller.headers),
                "trading.staff_barred", 403)
        refused(await client.post("/v1/trading/deals", json=_deal(buyer, 1), headers=st.headers),
                "trading.staff_barred", 403)
    assert await _state(runtime) == before
    async with runtime.db.transaction() as s:
        # a holder named in a proposal who becomes staff afterwards cannot accept it (the
        # registry has no service to re-flag a holder, so the test sets the flag directly)
        deal = await deals.propose(s, seller.org_id, DealIn(
            buyer_account_id=buyer.account_id, category="engineering", quantity=2, price_fen=5000),
            actor="test")
        await s.execute(text("UPDATE organisations SET staff_of = 'exchange' WHERE id = :o"),
                        {"o": buyer.org_id})
    refused(await client.post(f"/v1/trading/deals/{deal.id}/accept", headers=buyer.headers),
            "trading.staff_barred", 403)
    async with runtime.db.transaction() as s:
        await s.execute(text("UPDATE organisations SET staff_of = NULL WHERE id = :o"),
                        {"o": buyer.org_id})
        await deals.withdraw(s, seller.org_id, deal.id, actor="test")
