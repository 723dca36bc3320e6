"""Demo data of the points mall for ``make run`` — every record is labelled demo (演示):
a bus-coupon issuer (20 points for a ¥2 ride coupon) with two stores and two offers."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mall import service
from mall.models import Merchant
from mall.schemas import MerchantIn, OfferIn, StoreIn

NS = uuid.UUID("6d616c6c-0000-4000-8000-64656d6f0001")
MERCHANT_ID = uuid.uuid5(NS, "merchant:bus")
STORE_IDS = (uuid.uuid5(NS, "store:jiefangbei"), uuid.uuid5(NS, "store:shapingba"))
OFFER_IDS = (uuid.uuid5(NS, "offer:ride"), uuid.uuid5(NS, "offer:day-pass"))
ACTOR = "system:seed"
SALE_STARTS = datetime(2024, 9, 1, tzinfo=UTC)  # the Measures' entry into force


async def seed_demo(session: AsyncSession) -> dict[str, Any]:
    """Create the demo merchant, its stores, an API key and two offers on sale, unless they
    exist (running twice is a no-op). The API key is printed only by the run that made it."""
    summary: dict[str, Any] = {"merchant_id": str(MERCHANT_ID),
                               "offer_ids": [str(o) for o in OFFER_IDS]}
    if await session.get(Merchant, MERCHANT_ID) is not None:
        return summary
    await service.create_merchant(
        session,
        MerchantIn(
            name="【演示】重庆公交低碳出行券", name_en="[Demo] Chongqing Bus Coupons",
            contact_name="演示联系人", agreement_no="DEMO-MALL-0001",
            agreement_signed_on=date(2024, 9, 1),
        ),
        actor=ACTOR, merchant_id=MERCHANT_ID, is_demo=True,
    )
    for store_id, (name, address) in zip(
        STORE_IDS,
        (
            ("【演示】解放碑服务点", "重庆市渝中区解放碑"),
            ("【演示】沙坪坝服务点", "重庆市沙坪坝区三峡广场"),
        ),
        strict=True,
    ):
        await service.add_store(session, MERCHANT_ID, StoreIn(name=name, address=address),
                                actor=ACTOR, store_id=store_id)
    offers = (
        OfferIn(
            merchant_id=MERCHANT_ID, title_zh="【演示】2元公交乘车券",
            title_en="[Demo] ¥2 bus ride coupon",
            description_zh="凭券可在重庆市区公交线路乘车一次。演示数据。",
            description_en="One bus ride in central Chongqing. Demo data.",
            category="transport", price_points=20, stock_total=10_000, limit_per_citizen=5,
            limit_per_citizen_per_day=2, sale_starts_at=SALE_STARTS,
            voucher_validity_s=30 * 24 * 3600,
        ),
        OfferIn(
            merchant_id=MERCHANT_ID, title_zh="【演示】轨道交通一日通",
            title_en="[Demo] Metro day pass",
            description_zh="当日不限次数乘坐重庆轨道交通。演示数据。",
            description_en="Unlimited metro rides for one day. Demo data.",
            category="transport", price_points=150, stock_total=500, limit_per_citizen=1,
            sale_starts_at=SALE_STARTS, voucher_validity_s=7 * 24 * 3600,
        ),
    )
    for offer_id, offer in zip(OFFER_IDS, offers, strict=True):
        await service.create_offer(session, offer, actor=ACTOR, offer_id=offer_id, is_demo=True)
        await service.set_offer_status(session, offer_id, "on_sale", actor=ACTOR)
    _, key = await service.issue_api_key(session, MERCHANT_ID, "demo till", actor=ACTOR)
    summary["merchant_api_key"] = key
    summary["store_ids"] = [str(s) for s in STORE_IDS]
    return summary
