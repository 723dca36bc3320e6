"""Requests and answers of the trading system. Money is integer fen, quantities whole tonnes."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

Category = Literal["engineering", "ecological_sink", "carbon_inclusive"]
Side = Literal["buy", "sell"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_FEN = Field(gt=0, le=10**12)
_TONNES = Field(gt=0, le=10**9)


def product_key(category: str, vintage: int | None) -> str:
    """``engineering`` (any vintage) or ``engineering-2024``."""
    return category if vintage is None else f"{category}-{vintage}"


# --- accounts and funds ------------------------------------------------------------------


class Identity(BaseModel):
    """A person's identity (实名): stored encrypted, never returned in full."""

    legal_name: str = Field(min_length=1, max_length=100)
    id_number: str = Field(pattern=r"^\d{17}[\dXx]$")
    phone: str | None = Field(default=None, max_length=20)


class AccountIn(BaseModel):
    organisation_id: UUID
    identity: Identity | None = None


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    organisation_id: UUID
    registry_account_id: UUID
    kind: str
    display_name: str
    available_fen: int
    locked_fen: int
    status: str
    created_at: datetime


class FundsIn(BaseModel):
    """A deposit or withdrawal entered by the exchange with the bank's reference."""

    amount_fen: int = _FEN
    bank_reference: str = Field(min_length=4, max_length=64)


class FundEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    available_delta: int
    locked_delta: int
    bank_reference: str | None
    order_id: int | None
    trade_id: int | None
    at: datetime


# --- configuration and products -----------------------------------------------------------


class ConfigIn(BaseModel):
    """The exchange's market rules (Art. 28)."""

    sessions: list[tuple[str, str]] = Field(min_length=1, max_length=4)
    band_bps: int = Field(gt=0, le=10000)
    fee_bps: int = Field(ge=0, lt=10000)
    deal_ttl_s: int = Field(gt=0, le=30 * 86400)

    @field_validator("sessions")
    @classmethod
    def _sessions(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        last = ""
        for start, end in v:
            if not (_HHMM.match(start) and _HHMM.match(end)) or not start < end or start < last:
                raise ValueError("sessions are ordered, non-overlapping HH:MM ranges")
            last = end
        return v


class ConfigOut(ConfigIn):
    updated_at: datetime
    updated_by: str


class ProductIn(BaseModel):
    category: Category
    vintage: int | None = Field(default=None, ge=2000, le=2100)
    ref_price_fen: int = _FEN


class ProductOut(BaseModel):
    key: str
    category: str
    vintage: int | None
    status: str
    reference_price_fen: int
    band_low_fen: int
    band_high_fen: int
    last_price_fen: int | None


# --- agreement transfer -------------------------------------------------------------------


class DealIn(BaseModel):
    """A proposal of agreement transfer (协议转让) to a named buyer."""

    buyer_account_id: UUID
    category: Category
    vintage: int | None = Field(default=None, ge=2000, le=2100)
    quantity: int = _TONNES
    price_fen: int = _FEN
    expires_in_s: int | None = Field(default=None, gt=0, le=30 * 86400)
    note: str | None = Field(default=None, max_length=500)


class DealOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    seller_account_id: UUID
    buyer_account_id: UUID
    category: str
    vintage: int | None
    quantity: int
    price_fen: int
    state: str
    expires_at: datetime
    trade_id: int | None
    note: str | None
    created_at: datetime
    decided_at: datetime | None


# --- public bidding ------------------------------------------------------------------------


class OrderIn(BaseModel):
    """A limit order (限价委托) in whole tonnes."""

    product: str = Field(min_length=1, max_length=40)
    side: Side
    price_fen: int = _FEN
    quantity: int = _TONNES


class FillOut(BaseModel):
    trade_id: int
    price_fen: int
    quantity: int


class OrderOut(BaseModel):
    id: int
    product: str
    side: str
    price_fen: int
    quantity: int
    filled: int
    state: str
    cancel_reason: str | None
    business_date: date
    created_at: datetime
    fills: list[FillOut] = []


# --- market data (Art. 36) -----------------------------------------------------------------


class PublicTrade(BaseModel):
    """A trade as disclosed: no identities."""

    id: int
    product: str
    method: str
    price_fen: int
    quantity: int
    executed_at: datetime


class Bar(BaseModel):
    """A daily bar (日行情): open, high, low, close, volume, turnover."""

    product: str
    date: date
    open_fen: int
    high_fen: int
    low_fen: int
    close_fen: int
    volume: int
    turnover_fen: int
    trades: int


class Level(BaseModel):
    price_fen: int
    quantity: int
    orders: int


class Depth(BaseModel):
    product: str
    bids: list[Level]
    asks: list[Level]


class CheckOut(BaseModel):
    ok: bool
    deposits_fen: int
    withdrawals_fen: int
    available_fen: int
    locked_fen: int
    fees_fen: int
    problems: list[str]
