"""Request and response bodies of the points mall."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl

Category = Literal[
    "transport", "food", "retail", "culture", "services", "public_welfare", "other"
]
MerchantStatus = Literal["pending", "active", "suspended", "terminated"]
OfferStatus = Literal["draft", "on_sale", "paused", "ended"]
VoucherStatus = Literal["issued", "used", "cancelled", "expired"]

MAX_VALIDITY_S = 366 * 24 * 3600


# An instant a request may state: timestamptz holds it (no year 1, no year 9999 at -12:00).
Instant = Annotated[AwareDatetime, Field(ge=datetime(1970, 1, 1, tzinfo=UTC),
                                         lt=datetime(3000, 1, 1, tzinfo=UTC))]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- merchants (碳普惠权益提供单位, Art. 33) ---------------------------------------------


class MerchantIn(_In):
    name: str = Field(min_length=1, max_length=200, description="organisation name (zh-CN)")
    name_en: str | None = Field(default=None, max_length=200)
    credit_code: str | None = Field(
        default=None, pattern=r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$",
        description="统一社会信用代码 (18 characters)",
    )
    contact_name: str = Field(min_length=1, max_length=100)
    contact_phone: str | None = Field(default=None, max_length=32)
    agreement_no: str = Field(min_length=1, max_length=100, description="合作协议编号")
    agreement_signed_on: date
    agreement_expires_on: date | None = None
    status: MerchantStatus = "active"


class MerchantPatch(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    name_en: str | None = Field(default=None, max_length=200)
    contact_name: str | None = Field(default=None, min_length=1, max_length=100)
    contact_phone: str | None = Field(default=None, max_length=32)
    agreement_expires_on: date | None = None
    status: MerchantStatus | None = None


class StoreIn(_In):
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=500)
    district_code: str | None = Field(default=None, pattern=r"^\d{6}$")


class StorePatch(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = Field(default=None, min_length=1, max_length=500)
    status: Literal["open", "closed"] | None = None


class StoreOut(_Out):
    id: UUID
    merchant_id: UUID
    name: str
    address: str
    district_code: str | None
    status: str


class MerchantOut(_Out):
    id: UUID
    name: str
    name_en: str | None
    credit_code: str | None
    contact_name: str
    contact_phone_masked: str | None
    agreement_no: str
    agreement_signed_on: date
    agreement_expires_on: date | None
    status: str
    is_demo: bool
    created_at: datetime
    stores: list[StoreOut] = []


class ApiKeyIn(_In):
    label: str = Field(min_length=1, max_length=100)


class ApiKeyOut(BaseModel):
    id: UUID
    merchant_id: UUID
    label: str
    key: str = Field(description="shown only once")


# --- offers --------------------------------------------------------------------------------


class OfferIn(_In):
    merchant_id: UUID
    title_zh: str = Field(min_length=1, max_length=200)
    title_en: str = Field(min_length=1, max_length=200)
    description_zh: str = Field(default="", max_length=4000)
    description_en: str = Field(default="", max_length=4000)
    image_url: HttpUrl | None = None
    category: Category
    price_points: int = Field(gt=0, le=10_000_000)
    stock_total: int = Field(ge=0, le=100_000_000)
    limit_per_citizen: int | None = Field(default=None, gt=0, le=1_000_000)
    limit_per_citizen_per_day: int | None = Field(default=None, gt=0, le=1_000_000)
    sale_starts_at: Instant
    sale_ends_at: Instant | None = None
    voucher_validity_s: int = Field(ge=60, le=MAX_VALIDITY_S)


class OfferPatch(_In):
    """Editing an offer, even on sale, never touches vouchers already issued (they keep
    their price and expiry)."""

    title_zh: str | None = Field(default=None, min_length=1, max_length=200)
    title_en: str | None = Field(default=None, min_length=1, max_length=200)
    description_zh: str | None = Field(default=None, max_length=4000)
    description_en: str | None = Field(default=None, max_length=4000)
    image_url: HttpUrl | None = None
    category: Category | None = None
    price_points: int | None = Field(default=None, gt=0, le=10_000_000)
    stock_total: int | None = Field(default=None, ge=0, le=100_000_000)
    limit_per_citizen: int | None = Field(default=None, gt=0, le=1_000_000)
    limit_per_citizen_per_day: int | None = Field(default=None, gt=0, le=1_000_000)
    sale_starts_at: Instant | None = None
    sale_ends_at: Instant | None = None
    voucher_validity_s: int | None = Field(default=None, ge=60, le=MAX_VALIDITY_S)


class OfferStatusIn(_In):
    status: Literal["on_sale", "paused", "ended"]


class OfferOut(_Out):
    id: UUID
    merchant_id: UUID
    title_zh: str
    title_en: str
    description_zh: str
    description_en: str
    image_url: str | None
    category: str
    price_points: int
    stock_total: int
    stock_left: int
    limit_per_citizen: int | None
    limit_per_citizen_per_day: int | None
    sale_starts_at: datetime
    sale_ends_at: datetime | None
    voucher_validity_s: int
    status: str
    version: int
    is_demo: bool
    created_at: datetime
    updated_at: datetime


class OfferCard(BaseModel):
    """An offer as citizens browse it (served from the browse cache)."""

    id: UUID
    merchant_id: UUID
    merchant_name: str
    title_zh: str
    title_en: str
    description_zh: str
    description_en: str
    image_url: str | None
    category: str
    price_points: int
    stock_left: int
    sold_out: bool
    limit_per_citizen: int | None
    limit_per_citizen_per_day: int | None
    sale_starts_at: datetime
    sale_ends_at: datetime | None
    voucher_validity_s: int
    is_demo: bool


class OfferPage(BaseModel):
    items: list[OfferCard]
    next_cursor: str | None


class AdminOfferPage(BaseModel):
    items: list[OfferOut]
    next_cursor: str | None


# --- vouchers ------------------------------------------------------------------------------


class VoucherOut(BaseModel):
    """A citizen's voucher (兑换券). ``code`` is the secret shown as QR at the till."""

    id: UUID
    code: str
    offer_id: UUID
    merchant_id: UUID
    title_zh: str
    title_en: str
    category: str
    price_points: int
    status: VoucherStatus
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None
    store_id: UUID | None
    voided_at: datetime | None


class VoucherPage(BaseModel):
    items: list[VoucherOut]
    next_cursor: str | None


class VerifyIn(_In):
    code: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    store_id: UUID


class Redemption(BaseModel):
    """A used voucher as its merchant sees it (no citizen identity, no code)."""

    voucher_id: UUID
    offer_id: UUID
    title_zh: str
    title_en: str
    store_id: UUID | None
    price_points: int
    issued_at: datetime
    used_at: datetime | None
    status: VoucherStatus


class RedemptionPage(BaseModel):
    items: list[Redemption]
    next_cursor: str | None


class SettlementRow(BaseModel):
    offer_id: UUID
    title_zh: str
    store_id: UUID | None
    store_name: str | None
    count: int
    points: int


class Settlement(BaseModel):
    """What a merchant redeemed in ``[date_from, date_to]`` (Asia/Shanghai business dates)."""

    merchant_id: UUID
    date_from: date
    date_to: date
    rows: list[SettlementRow]
    total_count: int
    total_points: int


# --- disclosure (Art. 36) ------------------------------------------------------------------


class StatRow(BaseModel):
    month: str = Field(description="YYYY-MM, Asia/Shanghai")
    category: str
    redemptions: int = Field(description="vouchers used: points cancelled (注销)")
    points: int
    vouchers_issued: int


class PublicStats(BaseModel):
    rows: list[StatRow]
    generated_at: datetime


class PublicMerchant(BaseModel):
    id: UUID
    name: str
    name_en: str | None
    stores: int
    categories: list[str]
    since: date
    is_demo: bool
