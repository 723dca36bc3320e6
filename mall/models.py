"""Tables of the points mall (碳普惠商城): merchants, stores, offers, vouchers, limit counters.

The mall never stores points balances: a voucher points at its ledger hold (``hold_id``) and
records the price it was bought at, so later edits of the offer never change it.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

MERCHANT_STATUSES = ("pending", "active", "suspended", "terminated")
STORE_STATUSES = ("open", "closed")
OFFER_STATUSES = ("draft", "on_sale", "paused", "ended")
VOUCHER_STATUSES = ("issued", "used", "cancelled", "expired")
CATEGORIES = ("transport", "food", "retail", "culture", "services", "public_welfare", "other")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class Merchant(Base):
    """A merchant accepting points (碳普惠权益提供单位, Art. 33), onboarded under an agreement."""

    __tablename__ = "mall_merchants"

    id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    credit_code: Mapped[str | None] = mapped_column(Text)  # 统一社会信用代码
    contact_name: Mapped[str] = mapped_column(Text)
    contact_phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    contact_phone_masked: Mapped[str | None] = mapped_column(Text)
    agreement_no: Mapped[str] = mapped_column(Text)  # 合作协议编号
    agreement_signed_on: Mapped[date] = mapped_column(Date)
    agreement_expires_on: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(Text)
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", MERCHANT_STATUSES), name="status"),
        UniqueConstraint("agreement_no", name="uq_mall_merchants_agreement_no"),
    )


class Store(Base):
    """A store (门店) of a merchant where vouchers are verified."""

    __tablename__ = "mall_stores"

    id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), primary_key=True)
    merchant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mall_merchants.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    district_code: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint(_in("status", STORE_STATUSES), name="status"),)


class Offer(Base):
    """A good or service offered for points (商品/权益), with its stock and limits."""

    __tablename__ = "mall_offers"

    id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), primary_key=True)
    merchant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mall_merchants.id"), index=True)
    title_zh: Mapped[str] = mapped_column(Text)
    title_en: Mapped[str] = mapped_column(Text)
    description_zh: Mapped[str] = mapped_column(Text)
    description_en: Mapped[str] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    price_points: Mapped[int] = mapped_column(Integer)
    stock_total: Mapped[int] = mapped_column(Integer)
    stock_left: Mapped[int] = mapped_column(Integer)
    limit_per_citizen: Mapped[int | None] = mapped_column(Integer)
    limit_per_citizen_per_day: Mapped[int | None] = mapped_column(Integer)
    sale_starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sale_ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voucher_validity_s: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    is_demo: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", OFFER_STATUSES), name="status"),
        CheckConstraint(_in("category", CATEGORIES), name="category"),
        CheckConstraint("price_points > 0", name="price_positive"),
        CheckConstraint("stock_left >= 0 AND stock_left <= stock_total", name="stock_range"),
        CheckConstraint("limit_per_citizen IS NULL OR limit_per_citizen > 0", name="limit"),
        CheckConstraint(
            "limit_per_citizen_per_day IS NULL OR limit_per_citizen_per_day > 0", name="day_limit"
        ),
        CheckConstraint("voucher_validity_s > 0", name="validity"),
        CheckConstraint("sale_ends_at IS NULL OR sale_ends_at > sale_starts_at", name="window"),
        Index("ix_mall_offers_browse", "status", "created_at", "id"),
    )


class Voucher(Base):
    """A voucher (兑换券) issued by a redemption: backed by a points hold until used or void."""

    __tablename__ = "mall_vouchers"

    id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    offer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mall_offers.id"))
    merchant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mall_merchants.id"))
    citizen_id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True))
    category: Mapped[str] = mapped_column(Text)
    price_points: Mapped[int] = mapped_column(Integer)
    hold_id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), unique=True)
    status: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_on: Mapped[date] = mapped_column(Date)  # business date (Asia/Shanghai) of the day limit
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    store_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("mall_stores.id"))
    verified_by: Mapped[str | None] = mapped_column(Text)
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    request_key: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("status", VOUCHER_STATUSES), name="status"),
        CheckConstraint("price_points > 0", name="price_positive"),
        CheckConstraint("(status = 'used') = (used_at IS NOT NULL)", name="used_at"),
        UniqueConstraint("citizen_id", "request_key", name="uq_mall_vouchers_request_key"),
        Index("ix_mall_vouchers_citizen", "citizen_id", "issued_at", "id"),
        Index("ix_mall_vouchers_offer", "offer_id"),
        Index("ix_mall_vouchers_merchant_used", "merchant_id", "used_at",
              postgresql_where=text("status = 'used'")),
        Index("ix_mall_vouchers_due", "expires_at", postgresql_where=text("status = 'issued'")),
    )


class LimitCounter(Base):
    """Live vouchers (issued or used) of one citizen for one offer: in total (``period`` = ''),
    and per business day (``period`` = 'YYYY-MM-DD'). Cancelled and expired vouchers give their
    unit back, so the limit counts what the citizen actually holds or used."""

    __tablename__ = "mall_limit_counters"

    citizen_id: Mapped[uuid.UUID] = mapped_column(PgUUID(as_uuid=True), primary_key=True)
    offer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("mall_offers.id"), primary_key=True
    )
    period: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("n >= 0", name="n_non_negative"),)
