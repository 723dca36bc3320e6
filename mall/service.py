"""The points mall's rules (碳普惠商城): merchants, stores, offers, and the in-transaction
steps of a redemption. Functions take an ``AsyncSession`` and never commit; the redemption
workflow around them (stock gate, compensation, retries) is in :mod:`mall.flows`.

Art. 33: merchants (碳普惠权益提供单位) accept points under an agreement with the operator.
Art. 34: points leave an account only by the citizen's redemption — the mall places a hold
only when the citizen redeems, redeems it (注销) only when the merchant verifies the voucher,
and otherwise releases it (cancellation, expiry).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.crypto import encrypt, mask_phone, normalize_phone
from app.errors import Conflict, DomainError, NotFound
from mall import errors
from mall.models import Merchant, Offer, Store, Voucher
from mall.schemas import (
    MerchantIn,
    MerchantOut,
    MerchantPatch,
    OfferCard,
    OfferIn,
    OfferOut,
    OfferPatch,
    StoreIn,
    StoreOut,
    StorePatch,
    VoucherOut,
)

PHONE_CONTEXT = "mall.merchant.contact_phone"
TOTAL = ""  # LimitCounter.period of the per-offer limit
NO_LIMIT = 2**62

TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"on_sale", "ended"}),
    "on_sale": frozenset({"paused", "ended"}),
    "paused": frozenset({"on_sale", "ended"}),
    "ended": frozenset(),
}


def _now(now: datetime | None) -> datetime:
    return now or clock.now()


# --- cursors -------------------------------------------------------------------------------


def encode_cursor(at: datetime, id_: UUID) -> str:
    raw = orjson.dumps([at.astimezone(UTC).isoformat(), str(id_)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, id_ = orjson.loads(raw)
        return datetime.fromisoformat(at), UUID(id_)
    except (ValueError, TypeError) as exc:
        raise errors.invalid("cursor_invalid", "The cursor is not valid.") from exc


# --- merchants and stores (Art. 33) --------------------------------------------------------


def _merchant_out(m: Merchant, stores: list[Store]) -> MerchantOut:
    out = MerchantOut.model_validate(m)
    out.stores = [StoreOut.model_validate(s) for s in stores]
    return out


async def _merchant(session: AsyncSession, merchant_id: UUID, *, lock: bool = False) -> Merchant:
    stmt = select(Merchant).where(Merchant.id == merchant_id)
    if lock:
        stmt = stmt.with_for_update()
    m = (await session.scalars(stmt)).one_or_none()
    if m is None:
        raise errors.merchant_not_found()
    return m


async def get_merchant(session: AsyncSession, merchant_id: UUID) -> MerchantOut:
    m = await _merchant(session, merchant_id)
    stores = list(
        await session.scalars(
            select(Store).where(Store.merchant_id == merchant_id).order_by(Store.created_at)
        )
    )
    return _merchant_out(m, stores)


async def list_merchants(
    session: AsyncSession, *, status: str | None = None
) -> list[MerchantOut]:
    stmt = select(Merchant).order_by(Merchant.created_at, Merchant.id)
    if status:
        stmt = stmt.where(Merchant.status == status)
    merchants = list(await session.scalars(stmt))
    stores = list(
        await session.scalars(
            select(Store)
            .where(Store.merchant_id.in_([m.id for m in merchants]))
            .order_by(Store.created_at)
        )
    )
    by: dict[UUID, list[Store]] = {}
    for s in stores:
        by.setdefault(s.merchant_id, []).append(s)
    return [_merchant_out(m, by.get(m.id, [])) for m in merchants]


def _phone_fields(phone: str | None) -> dict[str, Any]:
    if phone is None:
        return {"contact_phone_enc": None, "contact_phone_masked": None}
    normal = normalize_phone(phone)
    return {
        "contact_phone_enc": encrypt(normal, context=PHONE_CONTEXT),
        "contact_phone_masked": mask_phone(normal),
    }


async def create_merchant(
    session: AsyncSession, data: MerchantIn, *, actor: str, now: datetime | None = None,
    merchant_id: UUID | None = None, is_demo: bool = False,
) -> MerchantOut:
    """Onboard a merchant (碳普惠权益提供单位) under its agreement with the operator (Art. 33)."""
    now = _now(now)
    if data.agreement_expires_on and data.agreement_expires_on <= data.agreement_signed_on:
        raise errors.invalid("agreement_dates", "The agreement must expire after it is signed.")
    taken = await session.scalar(
        select(Merchant.id).where(Merchant.agreement_no == data.agreement_no)
    )
    if taken is not None:
        raise Conflict("mall.agreement_exists", "A merchant with this agreement number exists.")
    m = Merchant(
        id=merchant_id or uuid.uuid4(),
        name=data.name, name_en=data.name_en, credit_code=data.credit_code,
        contact_name=data.contact_name, agreement_no=data.agreement_no,
        agreement_signed_on=data.agreement_signed_on,
        agreement_expires_on=data.agreement_expires_on, status=data.status,
        is_demo=is_demo, created_at=now, updated_at=now, **_phone_fields(data.contact_phone),
    )
    session.add(m)
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.merchant.create", entity="mall_merchant",
        entity_id=str(m.id),
        data=data.model_dump(mode="json", exclude={"contact_phone"}), now=now,
    )
    return _merchant_out(m, [])


async def update_merchant(
    session: AsyncSession, merchant_id: UUID, patch: MerchantPatch, *, actor: str,
    now: datetime | None = None,
) -> tuple[MerchantOut, bool]:
    """Edit a merchant; returns ``(merchant, sales_affected)``. A merchant that stops being
    active stops selling at once: its offers' versions move, so in-flight redemptions fail."""
    now = _now(now)
    m = await _merchant(session, merchant_id, lock=True)
    changes = patch.model_dump(exclude_unset=True)
    if "contact_phone" in changes:
        for k, v in _phone_fields(changes.pop("contact_phone")).items():
            setattr(m, k, v)
    was_active = m.status == "active"
    for k, v in changes.items():
        setattr(m, k, v)
    m.updated_at = now
    affected = was_active != (m.status == "active")
    if affected:
        await session.execute(
            update(Offer).where(Offer.merchant_id == merchant_id)
            .values(version=Offer.version + 1, updated_at=now)
        )
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.merchant.update", entity="mall_merchant",
        entity_id=str(merchant_id),
        data=patch.model_dump(mode="json", exclude_unset=True, exclude={"contact_phone"}),
        now=now,
    )
    return await get_merchant(session, merchant_id), affected


async def add_store(
    session: AsyncSession, merchant_id: UUID, data: StoreIn, *, actor: str,
    now: datetime | None = None, store_id: UUID | None = None,
) -> StoreOut:
    now = _now(now)
    await _merchant(session, merchant_id)
    s = Store(
        id=store_id or uuid.uuid4(), merchant_id=merchant_id, name=data.name,
        address=data.address, district_code=data.district_code, status="open", created_at=now,
    )
    session.add(s)
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.store.create", entity="mall_store",
        entity_id=str(s.id), data={"merchant_id": str(merchant_id), **data.model_dump()},
        now=now,
    )
    return StoreOut.model_validate(s)


async def update_store(
    session: AsyncSession, store_id: UUID, patch: StorePatch, *, actor: str,
    now: datetime | None = None,
) -> StoreOut:
    s = await session.get(Store, store_id, with_for_update=True)
    if s is None:
        raise errors.store_not_found()
    for k, v in patch.model_dump(exclude_unset=True).items():
        setattr(s, k, v)
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.store.update", entity="mall_store",
        entity_id=str(store_id), data=patch.model_dump(exclude_unset=True), now=_now(now),
    )
    return StoreOut.model_validate(s)


async def issue_api_key(
    session: AsyncSession, merchant_id: UUID, label: str, *, actor: str,
    now: datetime | None = None,
) -> tuple[UUID, str]:
    """A merchant API key issued by the operator; the key itself is returned only now."""
    from app.auth.apikeys import create_api_key

    await _merchant(session, merchant_id)
    key_id, key = await create_api_key(session, merchant_id=merchant_id, label=label)
    await audit.append(
        session, actor=actor, action="mall.api_key.issue", entity="mall_merchant",
        entity_id=str(merchant_id), data={"key_id": str(key_id), "label": label}, now=_now(now),
    )
    return key_id, key


async def revoke_api_key(
    session: AsyncSession, merchant_id: UUID, key_id: UUID, *, actor: str,
    now: datetime | None = None,
) -> None:
    from app.auth.apikeys import list_api_keys
    from app.auth.apikeys import revoke_api_key as revoke

    if key_id not in {k.id for k in await list_api_keys(session, merchant_id)}:
        raise NotFound("mall.api_key_not_found", "No such API key of this merchant.")
    await revoke(session, key_id, now=now)
    await audit.append(
        session, actor=actor, action="mall.api_key.revoke", entity="mall_merchant",
        entity_id=str(merchant_id), data={"key_id": str(key_id)}, now=_now(now),
    )


# --- offers --------------------------------------------------------------------------------


def _check_window(starts: datetime, ends: datetime | None) -> None:
    if ends is not None and ends <= starts:
        raise errors.invalid("sale_window_invalid", "The sale must end after it starts.")


async def create_offer(
    session: AsyncSession, data: OfferIn, *, actor: str, now: datetime | None = None,
    offer_id: UUID | None = None, is_demo: bool = False,
) -> OfferOut:
    """A new offer, in ``draft``: it sells only once published (``on_sale``)."""
    now = _now(now)
    _check_window(data.sale_starts_at, data.sale_ends_at)
    await _merchant(session, data.merchant_id)
    o = Offer(
        id=offer_id or uuid.uuid4(), merchant_id=data.merchant_id, title_zh=data.title_zh,
        title_en=data.title_en, description_zh=data.description_zh,
        description_en=data.description_en,
        image_url=str(data.image_url) if data.image_url else None, category=data.category,
        price_points=data.price_points, stock_total=data.stock_total,
        stock_left=data.stock_total, limit_per_citizen=data.limit_per_citizen,
        limit_per_citizen_per_day=data.limit_per_citizen_per_day,
        sale_starts_at=data.sale_starts_at, sale_ends_at=data.sale_ends_at,
        voucher_validity_s=data.voucher_validity_s, status="draft", version=1,
        is_demo=is_demo, created_at=now, updated_at=now,
    )
    session.add(o)
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.offer.create", entity="mall_offer",
        entity_id=str(o.id), data=data.model_dump(mode="json"), now=now,
    )
    return OfferOut.model_validate(o)


async def _offer(session: AsyncSession, offer_id: UUID, *, lock: bool = False) -> Offer:
    stmt = select(Offer).where(Offer.id == offer_id)
    if lock:
        stmt = stmt.with_for_update()
    o = (await session.scalars(stmt)).one_or_none()
    if o is None:
        raise errors.offer_not_found()
    return o


async def get_offer(session: AsyncSession, offer_id: UUID) -> OfferOut:
    return OfferOut.model_validate(await _offer(session, offer_id))


async def list_offers(
    session: AsyncSession, *, merchant_id: UUID | None = None, status: str | None = None,
    cursor: str | None = None, limit: int = 50,
) -> tuple[list[OfferOut], str | None]:
    stmt = select(Offer).order_by(Offer.created_at.desc(), Offer.id.desc()).limit(limit + 1)
    if merchant_id:
        stmt = stmt.where(Offer.merchant_id == merchant_id)
    if status:
        stmt = stmt.where(Offer.status == status)
    if cursor:
        at, id_ = decode_cursor(cursor)
        stmt = stmt.where(or_(Offer.created_at < at, and_(Offer.created_at == at, Offer.id < id_)))
    rows = list(await session.scalars(stmt))
    nxt = None
    if len(rows) > limit:
        nxt = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id)
    return [OfferOut.model_validate(o) for o in rows[:limit]], nxt


async def update_offer(
    session: AsyncSession, offer_id: UUID, patch: OfferPatch, *, actor: str,
    now: datetime | None = None,
) -> tuple[OfferOut, int]:
    """Edit an offer (also on sale); returns ``(offer, stock_delta)``. Vouchers already issued
    keep the price and expiry they were issued with. Lowering the total stock below what was
    already taken is refused."""
    now = _now(now)
    o = await _offer(session, offer_id, lock=True)
    if o.status == "ended":
        raise Conflict("mall.offer_ended", "An ended offer cannot be edited.")
    changes = patch.model_dump(exclude_unset=True)
    if "image_url" in changes and changes["image_url"] is not None:
        changes["image_url"] = str(changes["image_url"])
    _check_window(
        changes.get("sale_starts_at", o.sale_starts_at),
        changes.get("sale_ends_at", o.sale_ends_at),
    )
    delta = 0
    if "stock_total" in changes:
        taken = o.stock_total - o.stock_left
        new_total = changes.pop("stock_total")
        if new_total < taken:
            raise errors.invalid(
                "stock_below_taken", f"{taken} units are already taken; the stock cannot be lower."
            )
        delta = (new_total - taken) - o.stock_left
        o.stock_total, o.stock_left = new_total, new_total - taken
    for k, v in changes.items():
        setattr(o, k, v)
    o.version += 1
    o.updated_at = now
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.offer.update", entity="mall_offer",
        entity_id=str(offer_id), data=patch.model_dump(mode="json", exclude_unset=True),
        now=now,
    )
    return OfferOut.model_validate(o), delta


async def set_offer_status(
    session: AsyncSession, offer_id: UUID, status: str, *, actor: str,
    now: datetime | None = None,
) -> OfferOut:
    """Publish, pause, resume or end an offer. Publishing needs an active merchant."""
    now = _now(now)
    o = await _offer(session, offer_id, lock=True)
    if o.status == status:
        return OfferOut.model_validate(o)  # idempotent
    if status not in TRANSITIONS[o.status]:
        raise errors.bad_transition(o.status, status)
    if status == "on_sale":
        m = await _merchant(session, o.merchant_id)
        if m.status != "active":
            raise errors.merchant_inactive()
    previous = o.status
    o.status = status
    o.version += 1
    o.updated_at = now
    await session.flush()
    await audit.append(
        session, actor=actor, action="mall.offer.status", entity="mall_offer",
        entity_id=str(offer_id), data={"from": previous, "to": status}, now=now,
    )
    return OfferOut.model_validate(o)


# --- what a redemption needs to know about an offer ----------------------------------------


@dataclass(frozen=True, slots=True)
class OfferSnapshot:
    """The fields a redemption decides on, cached briefly in each process (see flows)."""

    id: UUID
    merchant_id: UUID
    title_zh: str
    title_en: str
    category: str
    price_points: int
    stock_left: int
    limit_per_citizen: int | None
    limit_per_citizen_per_day: int | None
    sale_starts_at: datetime
    sale_ends_at: datetime | None
    voucher_validity_s: int
    status: str
    merchant_active: bool
    version: int

    def refusal(self, now: datetime) -> DomainError | None:
        """Why this offer cannot be redeemed at ``now`` (stock aside), or ``None``."""
        if self.status != "on_sale" or not self.merchant_active:
            return errors.offer_not_on_sale()
        if now < self.sale_starts_at:
            return errors.offer_not_on_sale("The sale of this offer has not started yet.")
        if self.sale_ends_at is not None and now >= self.sale_ends_at:
            return errors.offer_not_on_sale("The sale of this offer has ended.")
        return None


async def offer_snapshot(session: AsyncSession, offer_id: UUID) -> OfferSnapshot:
    row = (
        await session.execute(
            select(
                Offer.id, Offer.merchant_id, Offer.title_zh, Offer.title_en, Offer.category,
                Offer.price_points,
                Offer.stock_left, Offer.limit_per_citizen, Offer.limit_per_citizen_per_day,
                Offer.sale_starts_at, Offer.sale_ends_at, Offer.voucher_validity_s,
                Offer.status, (Merchant.status == "active").label("merchant_active"),
                Offer.version,
            )
            .join(Merchant, Merchant.id == Offer.merchant_id)
            .where(Offer.id == offer_id)
        )
    ).one_or_none()
    if row is None:
        raise errors.offer_not_found()
    return OfferSnapshot(*row)  # type: ignore[call-arg]


# --- redemption, inside one transaction ----------------------------------------------------


class StaleOffer(Exception):
    """The offer changed (price, validity, status) since its snapshot: reload and retry."""


class StockGone(Exception):
    """The database refused the stock (the source of truth): sold out."""


def new_code() -> str:
    """An unguessable voucher code: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


async def _voucher_out(session: AsyncSession, v: Voucher) -> VoucherOut:
    titles = (
        await session.execute(select(Offer.title_zh, Offer.title_en).where(Offer.id == v.offer_id))
    ).one()
    return voucher_out(v, titles.title_zh, titles.title_en)


def voucher_out(v: Voucher, title_zh: str, title_en: str) -> VoucherOut:
    return VoucherOut(
        id=v.id, code=v.code, offer_id=v.offer_id, merchant_id=v.merchant_id,
        title_zh=title_zh, title_en=title_en, category=v.category, price_points=v.price_points,
        status=v.status, issued_at=v.issued_at, expires_at=v.expires_at,  # type: ignore[arg-type]
        used_at=v.used_at, store_id=v.store_id, voided_at=v.voided_at,
    )


async def voucher_by_request_key(
    session: AsyncSession, citizen_id: UUID, request_key: str
) -> VoucherOut | None:
    v = (
        await session.scalars(
            select(Voucher).where(
                Voucher.citizen_id == citizen_id, Voucher.request_key == request_key
            )
        )
    ).one_or_none()
    return await _voucher_out(session, v) if v else None


# One statement after the hold: count the citizen's limits (each counter row gains a unit
# only while under its limit), then — only if both counted — take one unit of stock (the
# hot row, locked from here to the commit), then — only if taken — issue the voucher.
_TAKE = text(
    "WITH counted AS ("
    " INSERT INTO mall_limit_counters AS c (citizen_id, offer_id, period, n)"
    " VALUES (:c, :o, '', 1), (:c, :o, :day, 1)"
    " ON CONFLICT (citizen_id, offer_id, period) DO UPDATE SET n = c.n + 1"
    " WHERE c.n < CASE WHEN c.period = '' THEN CAST(:lim AS bigint)"
    "                  ELSE CAST(:dlim AS bigint) END"
    " RETURNING c.period"
    "), taken AS ("
    " UPDATE mall_offers SET stock_left = stock_left - 1"
    " WHERE id = :o AND version = :ver AND status = 'on_sale' AND stock_left > 0"
    " AND sale_starts_at <= :now AND (sale_ends_at IS NULL OR sale_ends_at > :now)"
    " AND (SELECT count(*) FROM counted) = 2"
    " RETURNING id"
    "), issued AS ("
    " INSERT INTO mall_vouchers (id, code, offer_id, merchant_id, citizen_id, category,"
    "   price_points, hold_id, status, issued_at, issued_on, expires_at, request_key)"
    " SELECT CAST(:vid AS uuid), CAST(:code AS text), taken.id, CAST(:m AS uuid), :c,"
    "   CAST(:cat AS text), CAST(:price AS integer), CAST(:hold AS uuid), 'issued', :now,"
    "   CAST(:on AS date), CAST(:exp AS timestamptz), CAST(:rk AS text) FROM taken"
    " RETURNING id"
    ") SELECT ARRAY(SELECT period FROM counted) AS periods,"
    " (SELECT count(*) FROM issued) AS issued"
)


async def take_voucher(
    session: AsyncSession, offer: OfferSnapshot, citizen_id: UUID, *,
    request_key: str | None = None, now: datetime | None = None,
) -> VoucherOut:
    """The citizen redeems one unit of ``offer`` (兑换): hold the price in points (Art. 34:
    the citizen's own act, first-expiring lots first), count it against the citizen's
    limits, take one unit of stock and issue the voucher — in the caller's transaction, all
    or nothing, in three statements (two of the ledger's, one of ours).

    The hot offer row is locked by the last statement only, so concurrent redemptions queue
    on it just for that statement and the commit. Raises ``mall.insufficient_points``,
    ``mall.limit_reached``, ``mall.daily_limit_reached``, :class:`StockGone` or
    :class:`StaleOffer`.
    """
    from points import service as points

    now = _now(now)
    on = clock.business_date(now)
    limit = offer.limit_per_citizen or NO_LIMIT
    day_limit = offer.limit_per_citizen_per_day or NO_LIMIT
    voucher_id = uuid.uuid4()
    try:
        hold = await points.hold(
            session, citizen_id, offer.price_points, reference=f"mall:voucher:{voucher_id}",
            ttl_s=offer.voucher_validity_s, now=now,
        )
    except (Conflict, NotFound) as exc:
        if exc.code.startswith("points."):
            raise errors.insufficient_points(offer.price_points) from exc
        raise
    # The hold lives exactly as long as the voucher.
    expires_at = hold.expires_at or now + timedelta(seconds=offer.voucher_validity_s)
    code = new_code()
    row = (
        await session.execute(
            _TAKE,
            {"c": citizen_id, "o": offer.id, "day": on.isoformat(), "lim": limit,
             "dlim": day_limit, "ver": offer.version, "now": now, "vid": voucher_id,
             "code": code, "m": offer.merchant_id, "cat": offer.category,
             "price": offer.price_points, "hold": hold.id, "on": on, "exp": expires_at,
             "rk": request_key},
        )
    ).one()
    if TOTAL not in row.periods:
        raise errors.limit_reached(limit)
    if on.isoformat() not in row.periods:
        raise errors.daily_limit_reached(day_limit)
    if not row.issued:
        current = await offer_snapshot(session, offer.id)
        if current.version != offer.version:
            raise StaleOffer
        refusal = current.refusal(now)
        if refusal is not None:
            raise refusal
        raise StockGone
    return VoucherOut(
        id=voucher_id, code=code, offer_id=offer.id, merchant_id=offer.merchant_id,
        title_zh=offer.title_zh, title_en=offer.title_en, category=offer.category,
        price_points=offer.price_points, status="issued", issued_at=now, expires_at=expires_at,
        used_at=None, store_id=None, voided_at=None,
    )


async def _void(
    session: AsyncSession, rows: list[Any], status: str, *, now: datetime
) -> None:
    """Mark issued vouchers ``cancelled``/``expired`` and give back their stock and limit
    units, set-based. The caller has locked ``rows`` and released their holds."""
    ids = [r.id for r in rows]
    await session.execute(
        update(Voucher).where(Voucher.id.in_(ids)).values(status=status, voided_at=now)
    )
    offers = [r.offer_id for r in rows]
    await session.execute(
        text(
            "UPDATE mall_offers o SET stock_left = o.stock_left + x.n "
            "FROM (SELECT offer_id, count(*) AS n FROM unnest(CAST(:offers AS uuid[])) AS offer_id "
            "      GROUP BY offer_id) x WHERE o.id = x.offer_id"
        ),
        {"offers": offers},
    )
    citizens = [r.citizen_id for r in rows] * 2
    periods = [TOTAL] * len(rows) + [r.issued_on.isoformat() for r in rows]
    await session.execute(
        text(
            "UPDATE mall_limit_counters c SET n = c.n - x.k "
            "FROM (SELECT citizen_id, offer_id, period, count(*) AS k "
            "      FROM unnest(CAST(:cs AS uuid[]), CAST(:os AS uuid[]), CAST(:ps AS text[])) "
            "        AS t(citizen_id, offer_id, period) GROUP BY 1, 2, 3) x "
            "WHERE c.citizen_id = x.citizen_id AND c.offer_id = x.offer_id "
            "AND c.period = x.period"
        ),
        {"cs": citizens, "os": offers * 2, "ps": periods},
    )


async def _release_hold(session: AsyncSession, hold_id: UUID, citizen_id: UUID,
                        now: datetime) -> None:
    """Release a voucher's hold; one the ledger already released (its own expiry) is fine."""
    from points import service as points

    current = await points.get_hold(session, hold_id)
    if current.status == "active":
        await points.release(session, hold_id, citizen_id=citizen_id, now=now)
    elif current.status != "released":
        raise Conflict("mall.hold_state", f"The voucher's hold is {current.status}.")


async def cancel_voucher(
    session: AsyncSession, citizen_id: UUID, voucher_id: UUID, *, now: datetime | None = None
) -> tuple[VoucherOut, bool]:
    """The citizen cancels an unused voucher: its hold is released (the points come back),
    the stock and the limit unit are returned. Returns ``(voucher, changed)``; cancelling a
    cancelled voucher again answers the same voucher (idempotent)."""
    now = _now(now)
    v = (
        await session.scalars(
            select(Voucher).where(Voucher.id == voucher_id).with_for_update()
        )
    ).one_or_none()
    if v is None or v.citizen_id != citizen_id:
        raise errors.voucher_not_found()  # another citizen's voucher is not even visible
    if v.status == "cancelled":
        return await _voucher_out(session, v), False
    if v.status == "used":
        raise errors.voucher_used(v.used_at.isoformat() if v.used_at else None)
    if v.status == "expired" or v.expires_at <= now:
        raise errors.voucher_expired()
    await _release_hold(session, v.hold_id, citizen_id, now)
    await _void(session, [v], "cancelled", now=now)
    await session.refresh(v)
    return await _voucher_out(session, v), True


async def verify_voucher(
    session: AsyncSession, merchant_id: UUID, code: str, store_id: UUID, *, actor: str,
    now: datetime | None = None,
) -> VoucherOut:
    """The merchant scans a voucher (核销): its hold is redeemed — the points are cancelled
    (注销, Art. 34) — and the voucher is used, exactly once. The voucher row is locked, so a
    second scan at the same moment waits and then gets ``mall.voucher_used`` (with the first
    use's time): a used voucher is never reported as freshly verified, so a till cannot honour
    it twice. Retries of the same request are answered by the ``Idempotency-Key`` layer."""
    from points import service as points

    now = _now(now)
    store = await session.get(Store, store_id)
    if store is None or store.merchant_id != merchant_id or store.status != "open":
        raise errors.store_not_found()
    merchant_status = await session.scalar(
        select(Merchant.status).where(Merchant.id == merchant_id)
    )
    if merchant_status != "active":
        raise errors.merchant_inactive()
    v = (
        await session.scalars(select(Voucher).where(Voucher.code == code).with_for_update())
    ).one_or_none()
    if v is None:
        raise errors.voucher_not_found()
    if v.merchant_id != merchant_id:
        raise errors.voucher_wrong_merchant()
    if v.status == "used":
        raise errors.voucher_used(v.used_at.isoformat() if v.used_at else None)
    if v.status == "cancelled":
        raise errors.voucher_cancelled()
    if v.status == "expired" or v.expires_at <= now:
        raise errors.voucher_expired()
    await points.redeem(session, v.hold_id, now=now)
    v.status, v.used_at, v.store_id, v.verified_by = "used", now, store_id, actor
    await session.flush()
    return await _voucher_out(session, v)


@dataclass(frozen=True, slots=True)
class Expired:
    voucher_id: UUID
    offer_id: UUID


async def expire_due_vouchers(
    session: AsyncSession, *, now: datetime | None = None, limit: int = 500
) -> list[Expired]:
    """Expire up to ``limit`` issued vouchers past ``expires_at``: holds released, stock and
    limit units returned, each exactly once (rows locked ``SKIP LOCKED``, so concurrent runs
    split the work and a voucher being verified or cancelled is left to that transaction)."""
    now = _now(now)
    rows = (
        await session.execute(
            select(Voucher.id, Voucher.offer_id, Voucher.citizen_id, Voucher.hold_id,
                   Voucher.issued_on)
            .where(Voucher.status == "issued", Voucher.expires_at <= now)
            .order_by(Voucher.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return []
    for r in rows:
        await _release_hold(session, r.hold_id, r.citizen_id, now)
    await _void(session, list(rows), "expired", now=now)
    return [Expired(r.id, r.offer_id) for r in rows]


# --- citizens' reads -----------------------------------------------------------------------


async def get_my_voucher(
    session: AsyncSession, citizen_id: UUID, voucher_id: UUID
) -> VoucherOut:
    v = await session.get(Voucher, voucher_id)
    if v is None or v.citizen_id != citizen_id:
        raise errors.voucher_not_found()
    return await _voucher_out(session, v)


async def list_my_vouchers(
    session: AsyncSession, citizen_id: UUID, *, status: str | None = None,
    cursor: str | None = None, limit: int = 20,
) -> tuple[list[VoucherOut], str | None]:
    stmt = (
        select(Voucher, Offer.title_zh, Offer.title_en)
        .join(Offer, Offer.id == Voucher.offer_id)
        .where(Voucher.citizen_id == citizen_id)
        .order_by(Voucher.issued_at.desc(), Voucher.id.desc())
        .limit(limit + 1)
    )
    if status:
        stmt = stmt.where(Voucher.status == status)
    if cursor:
        at, id_ = decode_cursor(cursor)
        stmt = stmt.where(
            or_(Voucher.issued_at < at, and_(Voucher.issued_at == at, Voucher.id < id_))
        )
    rows = (await session.execute(stmt)).all()
    items = [voucher_out(v, tz, te) for v, tz, te in rows[:limit]]
    nxt = encode_cursor(items[-1].issued_at, items[-1].id) if len(rows) > limit else None
    return items, nxt


async def browse_offers(
    session: AsyncSession, *, category: str | None = None, merchant_id: UUID | None = None,
    max_points: int | None = None, q: str | None = None, cursor: str | None = None,
    limit: int = 20, now: datetime | None = None,
) -> tuple[list[OfferCard], str | None]:
    """Offers on sale now, newest first: the query behind the (cached) citizen browse."""
    now = _now(now)
    stmt = (
        select(Offer, Merchant.name)
        .join(Merchant, Merchant.id == Offer.merchant_id)
        .where(
            Offer.status == "on_sale", Merchant.status == "active",
            Offer.sale_starts_at <= now,
            or_(Offer.sale_ends_at.is_(None), Offer.sale_ends_at > now),
        )
        .order_by(Offer.created_at.desc(), Offer.id.desc())
        .limit(limit + 1)
    )
    if category:
        stmt = stmt.where(Offer.category == category)
    if merchant_id:
        stmt = stmt.where(Offer.merchant_id == merchant_id)
    if max_points is not None:
        stmt = stmt.where(Offer.price_points <= max_points)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(or_(Offer.title_zh.ilike(pattern), Offer.title_en.ilike(pattern)))
    if cursor:
        at, id_ = decode_cursor(cursor)
        stmt = stmt.where(or_(Offer.created_at < at, and_(Offer.created_at == at, Offer.id < id_)))
    rows = (await session.execute(stmt)).all()
    cards = [
        OfferCard(
            id=o.id, merchant_id=o.merchant_id, merchant_name=name, title_zh=o.title_zh,
            title_en=o.title_en, description_zh=o.description_zh,
            description_en=o.description_en, image_url=o.image_url, category=o.category,
            price_points=o.price_points, stock_left=o.stock_left, sold_out=o.stock_left == 0,
            limit_per_citizen=o.limit_per_citizen,
            limit_per_citizen_per_day=o.limit_per_citizen_per_day,
            sale_starts_at=o.sale_starts_at, sale_ends_at=o.sale_ends_at,
            voucher_validity_s=o.voucher_validity_s, is_demo=o.is_demo,
        )
        for o, name in rows[:limit]
    ]
    nxt = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        nxt = encode_cursor(last.created_at, last.id)
    return cards, nxt


async def stock_of(session: AsyncSession, offer_ids: list[UUID]) -> dict[UUID, int]:
    """Stock left per offer, from the database (the source of truth)."""
    rows = await session.execute(
        select(Offer.id, Offer.stock_left).where(Offer.id.in_(offer_ids))
    )
    return {r.id: r.stock_left for r in rows}


async def on_sale_stock(session: AsyncSession) -> dict[UUID, int]:
    rows = await session.execute(
        select(Offer.id, Offer.stock_left).where(Offer.status == "on_sale")
    )
    return {r.id: r.stock_left for r in rows}


async def count_live(session: AsyncSession, offer_id: UUID) -> dict[str, int]:
    """Vouchers of an offer by status (tests and the benchmark check exact counts with it)."""
    rows = await session.execute(
        select(Voucher.status, func.count()).where(Voucher.offer_id == offer_id)
        .group_by(Voucher.status)
    )
    return {status: n for status, n in rows.all()}

