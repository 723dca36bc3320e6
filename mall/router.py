"""HTTP routes of the points mall (碳普惠商城): citizens, merchants, the operator, the public."""

from __future__ import annotations

import io
from datetime import date
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from app import audit, clock
from app.auth.principal import Principal
from app.deps import (
    CurrentCitizen,
    CurrentMerchant,
    Db,
    RuntimeDep,
    as_citizen,
    read_bearer,
    require,
)
from app.runtime import Runtime
from mall import errors, flows, reports, service
from mall.schemas import (
    AdminOfferPage,
    ApiKeyIn,
    ApiKeyOut,
    Category,
    MerchantIn,
    MerchantOut,
    MerchantPatch,
    OfferIn,
    OfferOut,
    OfferPage,
    OfferPatch,
    OfferStatusIn,
    PublicMerchant,
    PublicStats,
    RedemptionPage,
    Settlement,
    StoreIn,
    StoreOut,
    StorePatch,
    VerifyIn,
    VoucherOut,
    VoucherPage,
    VoucherStatus,
)

router = APIRouter()

if TYPE_CHECKING:
    Manage = Principal
    Read = Principal
else:
    Manage = require("mall.manage")
    Read = require("mall.read")
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
Cursor = Annotated[str | None, Query(max_length=200)]


# --- citizens ------------------------------------------------------------------------------


@router.get("/v1/mall/offers", response_model=OfferPage, tags=["mall"])
async def browse_offers(
    runtime: RuntimeDep,
    category: Category | None = None,
    merchant_id: UUID | None = None,
    max_points: Annotated[int | None, Query(gt=0, le=2_147_483_647)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """Offers on sale now (newest first), for citizens and anyone browsing. Served from a
    short-lived Redis cache: browsing never reaches the points ledger."""
    params = {"category": category, "merchant_id": str(merchant_id) if merchant_id else None,
              "max_points": max_points, "q": q, "cursor": cursor, "limit": limit}

    async def build() -> bytes:
        async with runtime.db.session() as session:
            items, nxt = await service.browse_offers(
                session, category=category, merchant_id=merchant_id, max_points=max_points,
                q=q, cursor=cursor, limit=limit,
            )
        return OfferPage(items=items, next_cursor=nxt).model_dump_json().encode()

    body = await flows.cached(runtime, "browse", params, flows.BROWSE_TTL_S, build)
    return Response(body, media_type="application/json")


@router.get("/v1/mall/offers/{offer_id}", response_model=OfferOut, tags=["mall"])
async def get_offer(offer_id: UUID, db: Db) -> OfferOut:
    async with db.session() as session:
        offer = await service.get_offer(session, offer_id)
    if offer.status == "draft":
        raise errors.offer_not_found()
    return offer


async def _redeeming_citizen(request: Request) -> Principal:
    """``CurrentCitizen`` resolved on the event loop: the flash-sale hot path avoids the
    worker-thread hop FastAPI makes for each synchronous dependency."""
    return as_citizen(read_bearer(request))


RedeemingCitizen = Annotated[Principal, Depends(_redeeming_citizen)]


async def _redeem_fast(request: Request) -> Response:
    """The redeem route's hot path, as a plain route ahead of the documented one below: the
    same authorisation, flow and answers, without FastAPI's per-request dependency solving.
    It matches only a well-formed offer id (``uuid`` convertor); anything else falls through
    to the documented route, which validates it (422)."""
    citizen = as_citizen(read_bearer(request))
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > 255:
        raise errors.invalid("idempotency_key_invalid", "Idempotency-Key is too long.")
    voucher, created = await flows.redeem(
        request.app.state.runtime, citizen.id, request.path_params["offer_id"], request_key=key
    )
    return Response(voucher.model_dump_json(), status_code=201 if created else 200,
                    media_type="application/json")


router.add_route("/v1/me/mall/offers/{offer_id:uuid}/redeem", _redeem_fast, methods=["POST"],
                 include_in_schema=False)


@router.post("/v1/me/mall/offers/{offer_id}/redeem", status_code=201,
             response_model=VoucherOut, tags=["mall"])
async def redeem(
    offer_id: UUID, citizen: RedeemingCitizen, request: Request,
    idempotency_key: IdemKey = None,
) -> Response:
    """Redeem one unit (兑换): stock taken, limit checked and the price held in points, in one
    transaction → a voucher (201). Repeating the same ``Idempotency-Key`` answers the same
    voucher. Refusals (409 unless noted): ``mall.offer_not_found`` (404),
    ``mall.offer_not_on_sale``, ``mall.sold_out``, ``mall.limit_reached``,
    ``mall.daily_limit_reached``, ``mall.insufficient_points``."""
    runtime: Runtime = request.app.state.runtime
    voucher, created = await flows.redeem(
        runtime, citizen.id, offer_id, request_key=idempotency_key
    )
    return Response(voucher.model_dump_json(), status_code=201 if created else 200,
                    media_type="application/json")


@router.get("/v1/me/mall/vouchers", response_model=VoucherPage, tags=["mall"])
async def my_vouchers(
    citizen: CurrentCitizen, db: Db, status: VoucherStatus | None = None, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> VoucherPage:
    async with db.session() as session:
        items, nxt = await service.list_my_vouchers(
            session, citizen.id, status=status, cursor=cursor, limit=limit
        )
    return VoucherPage(items=items, next_cursor=nxt)


@router.get("/v1/me/mall/vouchers/{voucher_id}", response_model=VoucherOut, tags=["mall"])
async def my_voucher(voucher_id: UUID, citizen: CurrentCitizen, db: Db) -> VoucherOut:
    async with db.session() as session:
        return await service.get_my_voucher(session, citizen.id, voucher_id)


@router.get("/v1/me/mall/vouchers/{voucher_id}/qr.png", tags=["mall"],
            responses={200: {"content": {"image/png": {}}}})
async def my_voucher_qr(voucher_id: UUID, citizen: CurrentCitizen, db: Db) -> Response:
    """The voucher's code as a QR image for the till to scan (only while it is usable)."""
    import qrcode

    async with db.session() as session:
        v = await service.get_my_voucher(session, citizen.id, voucher_id)
    if v.status == "used":
        raise errors.voucher_used(v.used_at.isoformat() if v.used_at else None)
    if v.status == "cancelled":
        raise errors.voucher_cancelled()
    if v.status == "expired" or v.expires_at <= clock.now():
        raise errors.voucher_expired()
    img = qrcode.make(v.code, box_size=8, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "private, no-store"})


@router.post("/v1/me/mall/vouchers/{voucher_id}/cancel", response_model=VoucherOut,
             tags=["mall"])
async def cancel_voucher(
    voucher_id: UUID, citizen: CurrentCitizen, runtime: RuntimeDep
) -> VoucherOut:
    """Cancel an unused voucher: the held points come back, the stock returns. Cancelling a
    cancelled voucher again answers it unchanged."""
    return await flows.cancel(runtime, citizen.id, voucher_id)


# --- merchants -----------------------------------------------------------------------------


def _merchant_id(merchant: CurrentMerchant) -> UUID:
    assert merchant.scope_id is not None
    return merchant.scope_id


@router.get("/v1/merchant/offers", response_model=AdminOfferPage, tags=["merchant"])
async def merchant_offers(
    merchant: CurrentMerchant, db: Db, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> AdminOfferPage:
    async with db.session() as session:
        items, nxt = await service.list_offers(
            session, merchant_id=_merchant_id(merchant), cursor=cursor, limit=limit
        )
    return AdminOfferPage(items=items, next_cursor=nxt)


@router.post("/v1/merchant/vouchers/verify", response_model=VoucherOut, tags=["merchant"])
async def verify_voucher(body: VerifyIn, merchant: CurrentMerchant, db: Db) -> VoucherOut:
    """Scan a voucher at a store (核销): the citizen's held points are cancelled (注销,
    Art. 34) and the voucher is used — exactly once. A second scan gets 409
    ``mall.voucher_used`` with the first use's time; also ``mall.voucher_not_found`` (404),
    ``mall.voucher_wrong_merchant`` (403), ``mall.voucher_expired``,
    ``mall.voucher_cancelled``, ``mall.store_not_found`` (404)."""
    async with db.transaction() as session:
        return await service.verify_voucher(
            session, _merchant_id(merchant), body.code, body.store_id,
            actor=audit.actor_of(merchant),
        )


@router.get("/v1/merchant/redemptions", response_model=RedemptionPage, tags=["merchant"])
async def merchant_redemptions(
    merchant: CurrentMerchant, db: Db, date_from: date, date_to: date, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RedemptionPage:
    async with db.session() as session:
        items, nxt = await reports.list_redemptions(
            session, _merchant_id(merchant), date_from=date_from, date_to=date_to,
            cursor=cursor, limit=limit,
        )
    return RedemptionPage(items=items, next_cursor=nxt)


@router.get("/v1/merchant/settlement", response_model=Settlement, tags=["merchant"])
async def merchant_settlement(
    merchant: CurrentMerchant, db: Db, date_from: date, date_to: date
) -> Settlement:
    """Redemptions verified in ``[date_from, date_to]`` (Asia/Shanghai): count and points by
    offer and store."""
    async with db.session() as session:
        return await reports.settlement(
            session, _merchant_id(merchant), date_from=date_from, date_to=date_to
        )


@router.get("/v1/merchant/settlement.csv", tags=["merchant"],
            responses={200: {"content": {"text/csv": {}}}})
async def merchant_settlement_csv(
    merchant: CurrentMerchant, db: Db, date_from: date, date_to: date
) -> Response:
    async with db.session() as session:
        report = await reports.settlement(
            session, _merchant_id(merchant), date_from=date_from, date_to=date_to
        )
    name = f"settlement-{date_from.isoformat()}-{date_to.isoformat()}.csv"
    return Response(
        ("\ufeff" + reports.settlement_csv(report)).encode(), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# --- the operator (admin) ------------------------------------------------------------------


@router.post("/v1/admin/mall/merchants", status_code=201, response_model=MerchantOut,
             tags=["admin: mall"])
async def create_merchant(body: MerchantIn, admin: Manage, runtime: RuntimeDep) -> MerchantOut:
    """Onboard a merchant (碳普惠权益提供单位, Art. 33) under its agreement."""
    async with runtime.db.transaction() as session:
        out = await service.create_merchant(session, body, actor=audit.actor_of(admin))
    await flows.offers_changed(runtime)
    return out


@router.get("/v1/admin/mall/merchants", response_model=list[MerchantOut], tags=["admin: mall"])
async def list_merchants(
    admin: Read, db: Db, status: Annotated[str | None, Query(max_length=20)] = None
) -> list[MerchantOut]:
    async with db.session() as session:
        return await service.list_merchants(session, status=status)


@router.get("/v1/admin/mall/merchants/{merchant_id}", response_model=MerchantOut,
            tags=["admin: mall"])
async def get_merchant(merchant_id: UUID, admin: Read, db: Db) -> MerchantOut:
    async with db.session() as session:
        return await service.get_merchant(session, merchant_id)


@router.patch("/v1/admin/mall/merchants/{merchant_id}", response_model=MerchantOut,
              tags=["admin: mall"])
async def update_merchant(
    merchant_id: UUID, body: MerchantPatch, admin: Manage, runtime: RuntimeDep
) -> MerchantOut:
    async with runtime.db.transaction() as session:
        out, _ = await service.update_merchant(
            session, merchant_id, body, actor=audit.actor_of(admin)
        )
    await flows.offers_changed(runtime)
    return out


@router.post("/v1/admin/mall/merchants/{merchant_id}/stores", status_code=201,
             response_model=StoreOut, tags=["admin: mall"])
async def add_store(merchant_id: UUID, body: StoreIn, admin: Manage, db: Db) -> StoreOut:
    async with db.transaction() as session:
        return await service.add_store(session, merchant_id, body, actor=audit.actor_of(admin))


@router.patch("/v1/admin/mall/stores/{store_id}", response_model=StoreOut, tags=["admin: mall"])
async def update_store(store_id: UUID, body: StorePatch, admin: Manage, db: Db) -> StoreOut:
    async with db.transaction() as session:
        return await service.update_store(session, store_id, body, actor=audit.actor_of(admin))


@router.post("/v1/admin/mall/merchants/{merchant_id}/api-keys", status_code=201,
             response_model=ApiKeyOut, tags=["admin: mall"])
async def issue_api_key(merchant_id: UUID, body: ApiKeyIn, admin: Manage, db: Db) -> ApiKeyOut:
    """A merchant API key (header ``X-Api-Key``); the key is shown only in this answer."""
    async with db.transaction() as session:
        key_id, key = await service.issue_api_key(
            session, merchant_id, body.label, actor=audit.actor_of(admin)
        )
    return ApiKeyOut(id=key_id, merchant_id=merchant_id, label=body.label, key=key)


@router.delete("/v1/admin/mall/merchants/{merchant_id}/api-keys/{key_id}", status_code=204,
               tags=["admin: mall"])
async def revoke_api_key(merchant_id: UUID, key_id: UUID, admin: Manage, db: Db) -> Response:
    async with db.transaction() as session:
        await service.revoke_api_key(session, merchant_id, key_id, actor=audit.actor_of(admin))
    return Response(status_code=204)


@router.post("/v1/admin/mall/offers", status_code=201, response_model=OfferOut,
             tags=["admin: mall"])
async def create_offer(body: OfferIn, admin: Manage, runtime: RuntimeDep) -> OfferOut:
    """A new offer, in draft; publish it with ``POST …/status {"status": "on_sale"}``."""
    async with runtime.db.transaction() as session:
        out = await service.create_offer(session, body, actor=audit.actor_of(admin))
    await flows.offers_changed(runtime, out.id)
    return out


@router.get("/v1/admin/mall/offers", response_model=AdminOfferPage, tags=["admin: mall"])
async def list_offers(
    admin: Read, db: Db, merchant_id: UUID | None = None,
    status: Annotated[str | None, Query(max_length=20)] = None, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> AdminOfferPage:
    async with db.session() as session:
        items, nxt = await service.list_offers(
            session, merchant_id=merchant_id, status=status, cursor=cursor, limit=limit
        )
    return AdminOfferPage(items=items, next_cursor=nxt)


@router.get("/v1/admin/mall/offers/{offer_id}", response_model=OfferOut, tags=["admin: mall"])
async def admin_get_offer(offer_id: UUID, admin: Read, db: Db) -> OfferOut:
    async with db.session() as session:
        return await service.get_offer(session, offer_id)


@router.patch("/v1/admin/mall/offers/{offer_id}", response_model=OfferOut, tags=["admin: mall"])
async def update_offer(
    offer_id: UUID, body: OfferPatch, admin: Manage, runtime: RuntimeDep
) -> OfferOut:
    """Edit an offer, also while on sale. Vouchers already issued keep their price."""
    async with runtime.db.transaction() as session:
        out, delta = await service.update_offer(
            session, offer_id, body, actor=audit.actor_of(admin)
        )
    await flows.give_back(runtime, offer_id, delta)
    await flows.offers_changed(runtime, offer_id)
    return out


@router.post("/v1/admin/mall/offers/{offer_id}/status", response_model=OfferOut,
             tags=["admin: mall"])
async def set_offer_status(
    offer_id: UUID, body: OfferStatusIn, admin: Manage, runtime: RuntimeDep
) -> OfferOut:
    async with runtime.db.transaction() as session:
        out = await service.set_offer_status(
            session, offer_id, body.status, actor=audit.actor_of(admin)
        )
    await flows.offers_changed(runtime, offer_id)
    return out


# --- public disclosure (Art. 36) -----------------------------------------------------------


@router.get("/public/mall/merchants", response_model=list[PublicMerchant], tags=["public"])
async def public_merchants(runtime: RuntimeDep) -> Response:
    """Art. 36: the merchants that accept carbon points."""

    async def build() -> bytes:
        async with runtime.db.session() as session:
            rows = await reports.public_merchants(session)
        return b"[" + b",".join(r.model_dump_json().encode() for r in rows) + b"]"

    body = await flows.cached(runtime, "public_merchants", {}, flows.STATS_TTL_S, build)
    return Response(body, media_type="application/json")


@router.get("/public/mall/stats", response_model=PublicStats, tags=["public"])
async def public_stats(
    runtime: RuntimeDep, year: Annotated[int | None, Query(ge=2024, le=2100)] = None
) -> Response:
    """Art. 36: redemption statistics by month and category (vouchers used, points
    cancelled, vouchers issued)."""

    async def build() -> bytes:
        async with runtime.db.session() as session:
            rows = await reports.public_stats(session, year=year)
        return PublicStats(rows=rows, generated_at=clock.now()).model_dump_json().encode()

    body = await flows.cached(runtime, "stats", {"year": year}, flows.STATS_TTL_S, build)
    return Response(body, media_type="application/json")

