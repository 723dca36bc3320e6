"""Factories of the mall tests: merchants, offers, citizens with points, tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from app import clock
from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from mall import flows, service
from mall.schemas import MerchantIn, OfferIn, StoreIn

ADMIN_ID = uuid.uuid4()
ACTOR = f"admin:{ADMIN_ID}"


def admin_headers(*roles: str) -> dict[str, str]:
    token = issue_access_token("admin", ADMIN_ID, roles=frozenset(roles or {"operator_admin"}))
    return {"Authorization": f"Bearer {token}"}


def citizen_headers(citizen_id: UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_access_token('citizen', citizen_id)}"}


@dataclass
class Shop:
    merchant_id: UUID
    store_id: UUID
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}


async def make_shop(runtime: Runtime, *, name: str = "测试商户") -> Shop:
    async with runtime.db.transaction() as s:
        m = await service.create_merchant(
            s,
            MerchantIn(name=name, contact_name="张三", contact_phone="13912345678",
                       agreement_no=f"T-{uuid.uuid4().hex[:12]}",
                       agreement_signed_on=date(2024, 9, 1)),
            actor=ACTOR,
        )
        st = await service.add_store(s, m.id, StoreIn(name="一号店", address="渝中区"),
                                     actor=ACTOR)
        _, key = await service.issue_api_key(s, m.id, "till", actor=ACTOR)
    return Shop(m.id, st.id, key)


async def make_offer(
    runtime: Runtime, shop: Shop, *, stock: int = 10, price: int = 20,
    status: str = "on_sale", **extra: Any,
) -> UUID:
    fields: dict[str, Any] = {
        "merchant_id": shop.merchant_id, "title_zh": "乘车券", "title_en": "Ride coupon",
        "category": "transport", "price_points": price, "stock_total": stock,
        "sale_starts_at": clock.now() - timedelta(days=1), "voucher_validity_s": 3600,
    }
    fields.update(extra)
    async with runtime.db.transaction() as s:
        o = await service.create_offer(s, OfferIn(**fields), actor=ACTOR)
        if status != "draft":
            await service.set_offer_status(s, o.id, "on_sale", actor=ACTOR)
            if status != "on_sale":
                await service.set_offer_status(s, o.id, status, actor=ACTOR)
    await flows.offers_changed(runtime, o.id)
    return o.id


async def give_points(runtime: Runtime, citizen_ids: list[UUID], points: int) -> None:
    """Credit ``points`` to each citizen (one set-based ledger batch)."""
    from points.service import CreditIn, credit_batch

    scene, rr, cr = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = clock.now()
    async with runtime.db.transaction() as s:
        await credit_batch(s, [
            CreditIn(citizen_id=c, scene_id=scene, event_id=uuid.uuid4().hex, behaviour="bus",
                     occurred_at=now - timedelta(hours=1), grams=points * 10,
                     grams_per_point=10, reduction_rule_version_id=rr,
                     conversion_rule_version_id=cr)
            for c in citizen_ids
        ])


async def citizen(runtime: Runtime, points: int = 100) -> UUID:
    cid = uuid.uuid4()
    if points:
        await give_points(runtime, [cid], points)
    return cid


async def balance(runtime: Runtime, citizen_id: UUID) -> tuple[int, int]:
    from points.service import balance as bal

    async with runtime.db.session() as s:
        b = await bal(s, citizen_id)
    return b.available, b.held


async def offer_state(runtime: Runtime, offer_id: UUID) -> dict[str, Any]:
    """Stock, voucher counts by status and the gate, to compare before/after."""
    async with runtime.db.session() as s:
        o = await service.get_offer(s, offer_id)
        counts = await service.count_live(s, offer_id)
    gate = await runtime.redis.get(flows.gate_key(runtime, offer_id))
    return {"stock_left": o.stock_left, "stock_total": o.stock_total, "vouchers": counts,
            "gate": int(gate) if gate is not None else None}


async def redeem(client: httpx.AsyncClient, offer_id: UUID, citizen_id: UUID,
                 **headers: str) -> httpx.Response:
    return await client.post(f"/v1/me/mall/offers/{offer_id}/redeem",
                             headers={**citizen_headers(citizen_id), **headers})


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def shop(runtime: Runtime) -> Shop:
    return await make_shop(runtime)
