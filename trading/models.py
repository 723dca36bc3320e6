"""Tables of the trading system (交易系统), run by the exchange (交易机构): trading accounts with
their funds in fen, the fund journal, listed products, orders of the public bidding book,
agreement transfers, trades, and the exchange's configuration.

Credits never live here: the registry holds every tonne (Art. 6, 30). An order or a deal only
names the registry lock that holds its credits.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import TS, Base


class TradingConfig(Base):
    """The exchange's rules of the market (交易规则, Art. 28), one row: trading sessions in
    Asia/Shanghai on working days, the daily price band around the previous close, the fee."""

    __tablename__ = "trading_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sessions: Mapped[list[list[str]]] = mapped_column(JSONB)
    band_bps: Mapped[int] = mapped_column(Integer)
    fee_bps: Mapped[int] = mapped_column(Integer)
    deal_ttl_s: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(TS)
    updated_by: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("id = 1", name="single"),
        CheckConstraint("band_bps > 0 AND band_bps <= 10000", name="band"),
        CheckConstraint("fee_bps >= 0 AND fee_bps < 10000", name="fee"),
        CheckConstraint("deal_ttl_s > 0", name="ttl"),
    )


class Product(Base):
    """A product of the public bidding book: CQCER of one methodology category, optionally one
    vintage (e.g. ``engineering`` or ``ecological_sink-2024``)."""

    __tablename__ = "trading_products"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    category: Mapped[str] = mapped_column(String(20))
    vintage: Mapped[int | None] = mapped_column(Integer)
    ref_price_fen: Mapped[int] = mapped_column(BigInteger)
    last_price_fen: Mapped[int | None] = mapped_column(BigInteger)
    last_trade_date: Mapped[date | None] = mapped_column(Date)
    prev_close_fen: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12), server_default="listed")
    listed_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("ref_price_fen > 0", name="ref_price"),
        CheckConstraint("status IN ('listed', 'halted')", name="status"),
        CheckConstraint(
            "category IN ('engineering', 'ecological_sink', 'carbon_inclusive')", name="category"
        ),
    )


class TradingAccount(Base):
    """A trading account (交易账户) of an organisation or a person, tied to its registry
    holding account, with a funds account in fen: ``available`` and ``locked`` (reserved by
    open buy orders). A person's identity is stored encrypted, with a blind index."""

    __tablename__ = "trading_accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    organisation_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    registry_account_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    kind: Mapped[str] = mapped_column(String(12))
    display_name: Mapped[str] = mapped_column(Text)
    legal_name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_number_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_number_index: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    available_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    locked_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    status: Mapped[str] = mapped_column(String(12), server_default="active")
    created_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("kind IN ('organisation', 'individual')", name="kind"),
        CheckConstraint("available_fen >= 0", name="available"),
        CheckConstraint("locked_fen >= 0", name="locked"),
        CheckConstraint("status IN ('active', 'frozen', 'closed')", name="status"),
        CheckConstraint(
            "kind = 'organisation' OR (legal_name_enc IS NOT NULL AND id_number_enc IS NOT NULL"
            " AND id_number_index IS NOT NULL)",
            name="identity",
        ),
    )


class FundEntry(Base):
    """The immutable fund journal (资金流水): every change of an account's available or
    locked fen, with the bank reference of deposits and withdrawals."""

    __tablename__ = "trading_fund_entries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trading_accounts.id"))
    kind: Mapped[str] = mapped_column(String(12))
    available_delta: Mapped[int] = mapped_column(BigInteger)
    locked_delta: Mapped[int] = mapped_column(BigInteger)
    bank_reference: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    trade_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint(
            "kind IN ('deposit', 'withdrawal', 'reserve', 'release', 'pay', 'receive')",
            name="kind",
        ),
        Index("ix_trading_fund_entries_account", "account_id", "id"),
        Index("uq_trading_fund_entries_bank_reference", "kind", "bank_reference", unique=True,
              postgresql_where=text("bank_reference IS NOT NULL")),
    )


class Order(Base):
    """A limit order of the public bidding book (公开竞价), whole tonnes, valid for its trading
    day. A sell order names the registry lock holding its unfilled tonnes; a buy order holds
    ``reserved_fen`` (unfilled tonnes × limit price) of its account's locked funds."""

    __tablename__ = "trading_orders"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    product_key: Mapped[str] = mapped_column(ForeignKey("trading_products.key"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trading_accounts.id"))
    owner_id: Mapped[uuid.UUID] = mapped_column()
    side: Mapped[str] = mapped_column(String(4))
    price_fen: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)
    filled: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reserved_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lock_id: Mapped[uuid.UUID | None] = mapped_column()
    state: Mapped[str] = mapped_column(String(12))
    cancel_reason: Mapped[str | None] = mapped_column(String(24))
    business_date: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(TS)
    closed_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("side IN ('buy', 'sell')", name="side"),
        CheckConstraint("price_fen > 0", name="price"),
        CheckConstraint("quantity > 0 AND filled >= 0 AND filled <= quantity", name="quantity"),
        CheckConstraint("reserved_fen >= 0", name="reserved"),
        CheckConstraint("state IN ('open', 'filled', 'cancelled')", name="state"),
        CheckConstraint("state <> 'open' OR (side = 'sell') = (lock_id IS NOT NULL)",
                        name="sell_lock"),
        Index("ix_trading_orders_book", "product_key", "side", "price_fen", "id",
              postgresql_where=text("state = 'open'")),
        Index("ix_trading_orders_account", "account_id", "id"),
    )


class Deal(Base):
    """An agreement transfer (协议转让): the seller proposes a quantity and a price to a named
    buyer; its credits are locked until the buyer accepts (settled DvP), declines, or it
    expires."""

    __tablename__ = "trading_deals"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    seller_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trading_accounts.id"))
    buyer_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("trading_accounts.id"))
    category: Mapped[str] = mapped_column(String(20))
    vintage: Mapped[int | None] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(BigInteger)
    price_fen: Mapped[int] = mapped_column(BigInteger)
    lock_id: Mapped[uuid.UUID] = mapped_column()
    state: Mapped[str] = mapped_column(String(12))
    expires_at: Mapped[datetime] = mapped_column(TS)
    trade_id: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    decided_at: Mapped[datetime | None] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("quantity > 0 AND price_fen > 0", name="terms"),
        CheckConstraint(
            "state IN ('proposed', 'accepted', 'declined', 'expired', 'withdrawn')", name="state"
        ),
        CheckConstraint("seller_account_id <> buyer_account_id", name="parties"),
        Index("ix_trading_deals_open", "expires_at", postgresql_where=text("state = 'proposed'")),
        Index("ix_trading_deals_buyer", "buyer_account_id"),
        Index("ix_trading_deals_seller", "seller_account_id"),
    )


class Trade(Base):
    """A trade (成交), settled delivery versus payment in the transaction that made it.
    Disclosed without identities (Art. 36)."""

    __tablename__ = "trading_trades"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    method: Mapped[str] = mapped_column(String(12))
    product_key: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(20))
    vintage: Mapped[int | None] = mapped_column(Integer)
    price_fen: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    fee_fen: Mapped[int] = mapped_column(BigInteger)
    buy_order_id: Mapped[int | None] = mapped_column(BigInteger)
    sell_order_id: Mapped[int | None] = mapped_column(BigInteger)
    deal_id: Mapped[uuid.UUID | None] = mapped_column()
    buyer_account_id: Mapped[uuid.UUID] = mapped_column()
    seller_account_id: Mapped[uuid.UUID] = mapped_column()
    business_date: Mapped[date] = mapped_column(Date)
    executed_at: Mapped[datetime] = mapped_column(TS)

    __table_args__ = (
        CheckConstraint("method IN ('bidding', 'agreement')", name="method"),
        CheckConstraint("quantity > 0 AND price_fen > 0", name="terms"),
        CheckConstraint("amount_fen = price_fen * quantity", name="amount"),
        CheckConstraint("fee_fen >= 0 AND fee_fen <= amount_fen", name="fee"),
        Index("ix_trading_trades_product_date", "product_key", "business_date", "id"),
        Index("ix_trading_trades_date", "business_date"),
    )


