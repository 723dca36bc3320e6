"""Merchant reports (redemptions, settlement, CSV) and public disclosure (Art. 36)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import httpx

from app import clock
from app.runtime import Runtime
from mall import flows, service
from mall.schemas import MerchantPatch
from tests.mall.conftest import Shop, citizen, make_offer, make_shop, redeem

# 2027-01-31 17:30 UTC is 2027-02-01 01:30 in Chongqing: business dates are Asia/Shanghai.
AT = datetime(2027, 1, 31, 17, 30, tzinfo=UTC)


async def _redeem_and_verify(client: httpx.AsyncClient, runtime: Runtime, shop: Shop,
                             offer: object, store: object, n: int) -> None:
    for _ in range(n):
        cid = await citizen(runtime, 500)
        v = (await redeem(client, offer, cid)).json()  # type: ignore[arg-type]
        assert v.get("status") == "issued", v
        r = await client.post("/v1/merchant/vouchers/verify", headers=shop.headers,
                              json={"code": v["code"], "store_id": str(store)})
        assert r.status_code == 200, r.text


async def test_settlement_by_offer_and_store_and_csv(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    shop = await make_shop(runtime, name="结算商户")
    other = await make_shop(runtime, name="别家")
    async with runtime.db.transaction() as s:
        from mall.schemas import StoreIn

        second = await service.add_store(s, shop.merchant_id,
                                         StoreIn(name="二号店", address="南岸区"), actor="t")
    clock.set_clock(lambda: AT)
    try:
        ride = await make_offer(runtime, shop, price=20, title_zh="乘车券", stock=50)
        pass_ = await make_offer(runtime, shop, price=150, title_zh="一日通", stock=50)
        await _redeem_and_verify(client, runtime, shop, ride, shop.store_id, 3)
        await _redeem_and_verify(client, runtime, shop, ride, second.id, 1)
        await _redeem_and_verify(client, runtime, shop, pass_, shop.store_id, 2)
        unused = await citizen(runtime, 100)
        await redeem(client, ride, unused)  # issued, never verified: not settled
        foreign = await make_offer(runtime, other, price=20)
        await _redeem_and_verify(client, runtime, other, foreign, other.store_id, 1)
    finally:
        clock.set_clock(None)
    q = {"date_from": "2027-02-01", "date_to": "2027-02-01"}
    r = await client.get("/v1/merchant/settlement", params=q, headers=shop.headers)
    assert r.status_code == 200, r.text
    rep = r.json()
    rows = {(x["title_zh"], x["store_name"]): (x["count"], x["points"]) for x in rep["rows"]}
    assert rows == {("乘车券", "一号店"): (3, 60), ("乘车券", "二号店"): (1, 20),
                    ("一日通", "一号店"): (2, 300)}
    assert rep["total_count"] == 6 and rep["total_points"] == 380
    before = await client.get("/v1/merchant/settlement", headers=shop.headers,
                              params={"date_from": "2027-01-01", "date_to": "2027-01-31"})
    assert before.json()["total_count"] == 0  # 17:30 UTC on the 31st is already February here
    c = await client.get("/v1/merchant/settlement.csv", params=q, headers=shop.headers)
    assert c.status_code == 200 and c.headers["content-type"].startswith("text/csv")
    assert "attachment" in c.headers["content-disposition"]
    text_ = c.content.decode("utf-8")
    assert text_.startswith("\ufeff")
    table = list(csv.reader(io.StringIO(text_.lstrip("\ufeff"))))
    assert table[0][:4] == ["date_from", "date_to", "offer_id", "offer_title"]
    assert table[-1][3] == "TOTAL" and table[-1][-2:] == ["6", "380"]
    red = await client.get("/v1/merchant/redemptions", params={**q, "limit": 4},
                           headers=shop.headers)
    page2 = await client.get("/v1/merchant/redemptions", headers=shop.headers,
                             params={**q, "limit": 4, "cursor": red.json()["next_cursor"]})
    items = red.json()["items"] + page2.json()["items"]
    assert len(items) == 6 and len({i["voucher_id"] for i in items}) == 6
    assert all("citizen_id" not in i and "code" not in i for i in items)
    bad = await client.get("/v1/merchant/settlement", headers=shop.headers,
                           params={"date_from": "2027-02-02", "date_to": "2027-02-01"})
    assert bad.status_code == 422 and bad.json()["code"] == "mall.period_invalid"
    bad = await client.get("/v1/merchant/settlement", headers=shop.headers,
                           params={"date_from": "2027-02-30", "date_to": "2027-03-01"})
    assert bad.status_code == 422 and bad.json()["code"] == "request.invalid"


async def test_art36_public_redemption_statistics_and_merchants(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    shop = await make_shop(runtime, name="公示商户")
    gone = await make_shop(runtime, name="已暂停商户")
    clock.set_clock(lambda: AT.replace(year=2028))
    try:
        food = await make_offer(runtime, shop, price=30, category="food")
        ride = await make_offer(runtime, shop, price=20, category="transport")
        await _redeem_and_verify(client, runtime, shop, food, shop.store_id, 2)
        await _redeem_and_verify(client, runtime, shop, ride, shop.store_id, 1)
        await redeem(client, ride, await citizen(runtime, 100))  # issued only
    finally:
        clock.set_clock(None)
    async with runtime.db.transaction() as s:
        await service.update_merchant(s, gone.merchant_id, MerchantPatch(status="suspended"),
                                      actor="t")
    await flows.offers_changed(runtime)
    r = await client.get("/public/mall/stats", params={"year": 2028})
    assert r.status_code == 200
    rows = {(x["month"], x["category"]): x for x in r.json()["rows"]}
    assert rows[("2028-02", "food")]["redemptions"] == 2
    assert rows[("2028-02", "food")]["points"] == 60
    assert rows[("2028-02", "transport")]["redemptions"] == 1
    assert rows[("2028-02", "transport")]["vouchers_issued"] == 2
    assert "citizen" not in r.text
    m = await client.get("/public/mall/merchants")
    names = {x["name"]: x for x in m.json()}
    assert "公示商户" in names and "已暂停商户" not in names
    assert names["公示商户"]["stores"] == 1
    assert set(names["公示商户"]["categories"]) == {"food", "transport"}
    assert "contact" not in m.text and "agreement_no" not in m.text


async def test_art34_no_mall_route_moves_points_without_the_citizens_hold(app: object) -> None:
    """Art. 34: points leave an account only by the citizen's redemption (or expiry). The
    mall's only point-moving routes are the citizen's redeem/cancel and the merchant's
    verify of a voucher the citizen's own redemption created; no admin route touches
    points, and nothing offers a transfer, a debit or a money value."""
    from fastapi import FastAPI

    assert isinstance(app, FastAPI)
    paths = app.openapi()["paths"]
    writes = sorted(
        (method.upper(), path) for path, ops in paths.items() for method in ops
        if method in ("post", "put", "patch", "delete")
        and (path.startswith("/v1/me/mall") or path.startswith("/v1/merchant"))
    )
    assert writes == [
        ("POST", "/v1/me/mall/offers/{offer_id}/redeem"),
        ("POST", "/v1/me/mall/vouchers/{voucher_id}/cancel"),
        ("POST", "/v1/merchant/vouchers/verify"),
    ]
    mall_paths = [p for p in paths if "/mall" in p or p.startswith("/v1/merchant")]
    assert not [p for p in mall_paths if any(w in p for w in ("transfer", "debit", "adjust",
                                                                "money", "cash"))]
