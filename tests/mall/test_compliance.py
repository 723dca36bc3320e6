"""Art. 34 in the mall, as the audit reads it (docs/compliance.md): points have no money value
(an offer is priced in points only, never in cash or points-plus-cash), and a verified
redemption cancels (注销) exactly the held points in the ledger."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from app import clock
from app.runtime import Runtime
from points import service as points
from tests.mall.conftest import (
    Shop,
    admin_headers,
    balance,
    citizen,
    make_offer,
    redeem,
)

MONEY = ("fen", "yuan", "cny", "rmb", "cash", "money", "amount", "currency", "value",
         "exchange_rate")


@pytest.mark.parametrize("money", [
    {"price_fen": 200}, {"cash_price": "2.00"}, {"price_yuan": 2}, {"money_value": 1},
    {"points_per_yuan": 100}, {"cash_top_up_fen": 100},
])
async def test_art34_an_offer_cannot_carry_a_cash_price(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop, money: dict[str, object],
) -> None:
    """Art. 34: 碳积分不具有货币属性 — creating or editing an offer with any cash price or
    points-to-money rate is refused (422) and writes nothing."""
    body = {
        "merchant_id": str(shop.merchant_id), "title_zh": "乘车券", "title_en": "Ride coupon",
        "category": "transport", "price_points": 20, "stock_total": 5,
        "sale_starts_at": (clock.now() - timedelta(days=1)).isoformat(),
        "voucher_validity_s": 3600,
    }
    async with runtime.db.session() as s:
        before = await s.scalar(text("SELECT count(*) FROM mall_offers"))
    r = await client.post("/v1/admin/mall/offers", json={**body, **money},
                          headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    async with runtime.db.session() as s:
        assert await s.scalar(text("SELECT count(*) FROM mall_offers")) == before
    offer = await make_offer(runtime, shop, price=20)
    url = f"/v1/admin/mall/offers/{offer}"
    first = (await client.get(url, headers=admin_headers())).json()
    r = await client.patch(url, json=money, headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    assert (await client.get(url, headers=admin_headers())).json() == first


async def test_art34_no_mall_table_or_public_answer_gives_points_a_money_value(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop,
) -> None:
    """Art. 34: no column of the mall's tables, and no field the citizen or the public sees,
    carries a cash price or a money value of points; prices are integer points."""
    async with runtime.db.session() as s:
        cols = (await s.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name LIKE 'mall\\_%'"))).all()
    assert cols
    assert [c for c, _ in cols if any(w in c for w in MONEY)] == []
    prices = {(c, t) for c, t in cols if "price" in c}
    assert prices == {("price_points", "integer")}
    await make_offer(runtime, shop, price=20)
    for url in ("/v1/mall/offers", "/public/mall/stats", "/public/mall/merchants"):
        r = await client.get(url)
        assert r.status_code == 200, url
        keys = _keys(r.json())
        assert [k for k in keys if any(w in k.lower() for w in MONEY)] == [], url


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


async def test_art34_verified_redemption_is_a_redemption_entry_in_the_ledger(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop,
) -> None:
    """Art. 34: 已兑换商品或服务的碳积分由运营主体予以注销 — after the merchant verifies the
    voucher, the ledger holds a ``redemption`` entry of exactly the price against the
    citizen's hold; the points do not come back and nothing else left the account."""
    offer = await make_offer(runtime, shop, price=35)
    cid = await citizen(runtime, 100)
    v = (await redeem(client, offer, cid)).json()
    r = await client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                          json={"code": v["code"], "store_id": str(shop.store_id)})
    assert r.status_code == 200, r.text
    async with runtime.db.session() as s:
        page = await points.statement(s, cid)
        holds = await points.open_holds(s, cid)
    kinds = [(e.kind, e.points) for e in page.items]
    assert kinds == [("redemption", 35), ("hold", 35), ("credit", 100)]
    redemption = page.items[0]
    assert redemption.hold_id is not None and holds == []
    assert await balance(runtime, cid) == (65, 0)
