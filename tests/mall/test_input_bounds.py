"""Values the database or date arithmetic cannot hold are 422 problems, never 500s, and write
nothing (found by the API fuzzer, ``tests/app/test_api_fuzz.py``): a merchant's report period
at year 1 or 9999, an offer's sale window at year 1, a browse filter past INTEGER."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.runtime import Runtime
from tests.mall.conftest import Shop, admin_headers


def _problem(r: httpx.Response, code: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


@pytest.mark.parametrize("route", ["redemptions", "settlement", "settlement.csv"])
@pytest.mark.parametrize(("date_from", "date_to"), [
    ("0001-01-01", "0001-01-02"),  # 00:00 at +08:00 is before year 1 UTC
    ("9999-12-30", "9999-12-31"),  # the last day has no next day to end the period
])
async def test_art33_report_period_outside_the_calendar_is_refused(
    client: httpx.AsyncClient, shop: Shop, route: str, date_from: str, date_to: str
) -> None:
    r = await client.get(f"/v1/merchant/{route}", headers=shop.headers,
                         params={"date_from": date_from, "date_to": date_to})
    _problem(r, "mall.period_invalid")


async def test_art36_offer_browse_filter_past_integer_is_refused(
    client: httpx.AsyncClient,
) -> None:
    _problem(await client.get("/v1/mall/offers", params={"max_points": 67336602839}),
             "request.invalid")
    assert (await client.get("/v1/mall/offers", params={"max_points": 2_147_483_647})
            ).status_code == 200


@pytest.mark.parametrize("window", [
    {"sale_starts_at": "0001-01-01T00:00:00+14:00"},
    {"sale_starts_at": "2025-01-01T00:00:00+08:00", "sale_ends_at": "9999-12-31T23:00:00-12:00"},
])
async def test_art33_offer_sale_window_outside_the_calendar_writes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, shop: Shop, window: dict[str, Any]
) -> None:
    async with runtime.db.session() as s:
        before = await s.scalar(text("SELECT count(*) FROM mall_offers"))
    body = {"merchant_id": str(shop.merchant_id), "title_zh": "咖啡券", "title_en": "Coffee",
            "category": "food", "price_points": 30, "stock_total": 5,
            "voucher_validity_s": 86400, **window}
    _problem(await client.post("/v1/admin/mall/offers", json=body,
                               headers=admin_headers("operator_staff")), "request.invalid")
    async with runtime.db.session() as s:
        assert await s.scalar(text("SELECT count(*) FROM mall_offers")) == before
