"""The trading system's services (交易系统): trading accounts and their funds, the exchange's
market rules, listed products, trading sessions and the daily price band, and the funds
conservation check. Agreement transfer lives in :mod:`trading.deals`, the order book in
:mod:`trading.matching`, market data in :mod:`trading.market`.

Credits are never held here: every lock, delivery and release goes through the registry's
credit service, so the registry stays the final word on who holds which CQCER (Art. 6, 30).

Lock order, everywhere in this package: the product's advisory lock, then the registry
accounts (the registry's own order), then the trading account rows (id order), then the audit
chain. Every transaction takes its row locks before its first audit record, so it never waits
for a row while holding the audit chain's lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from uuid import UUID

from sqlalchemy import ARRAY, Uuid, any_, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock, crypto
from app.calendar.service import is_working_day
from registry import credits as registry_credits
from registry import service as registry
from trading.errors import (
    Conflict,
    Invalid,
    account_closed,
    insufficient_funds,
    not_found,
    outside_session,
    staff_barred,
)
from trading.models import FundEntry, Product, TradingAccount, TradingConfig
from trading.schemas import (
    AccountIn,
    AccountOut,
    CheckOut,
    ConfigIn,
    ConfigOut,
    FundEntryOut,
    ProductIn,
    ProductOut,
    product_key,
)

__all__ = [
    "MarketRules", "account_for_org", "add_product", "ceil_div", "check_funds", "deposit",
    "get_account", "get_config", "load_accounts", "market_rules", "open_account", "prelock",
    "price_band", "products", "reference_price", "require_not_barred", "require_session",
    "set_config", "statement", "withdraw",
]


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


# --- the exchange's rules ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarketRules:
    sessions: tuple[tuple[time, time], ...]
    band_bps: int
    fee_bps: int
    deal_ttl_s: int

    def fee(self, amount_fen: int) -> int:
        """The exchange's fee on a trade, rounded down to the fen."""
        return amount_fen * self.fee_bps // 10000

    def in_session(self, at: datetime) -> bool:
        local = at.astimezone(clock.SHANGHAI).time()
        return any(start <= local < end for start, end in self.sessions)


def _hhmm(s: str) -> time:
    h, m = s.split(":")
    return time(int(h), int(m))


async def market_rules(session: AsyncSession) -> MarketRules:
    cfg = await session.get(TradingConfig, 1)
    assert cfg is not None, "migration 0010 inserts the configuration row"
    return MarketRules(
        sessions=tuple((_hhmm(a), _hhmm(b)) for a, b in cfg.sessions),
        band_bps=cfg.band_bps, fee_bps=cfg.fee_bps, deal_ttl_s=cfg.deal_ttl_s,
    )


async def require_session(session: AsyncSession, rules: MarketRules, at: datetime) -> date:
    """The business date of ``at`` if it lies in a trading session on a working day, else
    ``trading.outside_session`` (an unpublished calendar year raises
    ``calendar.year_not_published``)."""
    day = clock.business_date(at)
    if not await is_working_day(session, day) or not rules.in_session(at):
        raise outside_session()
    return day


async def get_config(session: AsyncSession) -> ConfigOut:
    cfg = await session.get(TradingConfig, 1, populate_existing=True)
    assert cfg is not None
    return ConfigOut(sessions=[(a, b) for a, b in cfg.sessions], band_bps=cfg.band_bps,
                     fee_bps=cfg.fee_bps, deal_ttl_s=cfg.deal_ttl_s,
                     updated_at=cfg.updated_at, updated_by=cfg.updated_by)


async def set_config(session: AsyncSession, data: ConfigIn, *, actor: str,
                     now: datetime | None = None) -> ConfigOut:
    """The exchange changes the market rules (sessions, band, fee, deal expiry); audited."""
    at = now or clock.now()
    cfg = await session.get(TradingConfig, 1, with_for_update=True)
    assert cfg is not None
    cfg.sessions = [list(s) for s in data.sessions]
    cfg.band_bps, cfg.fee_bps, cfg.deal_ttl_s = data.band_bps, data.fee_bps, data.deal_ttl_s
    cfg.updated_at, cfg.updated_by = at, actor
    await session.flush()
    await audit.append(session, actor=actor, action="trading.config", entity="trading_config",
                       entity_id="1", data=data.model_dump(mode="json"), now=at)
    return await get_config(session)


# --- products and the price band -----------------------------------------------------------


def reference_price(product: Product, today: date) -> int:
    """The previous close: the last price of an earlier day, else the close carried into
    today, else the listing reference price."""
    if product.last_trade_date is not None and product.last_trade_date < today \
            and product.last_price_fen is not None:
        return product.last_price_fen
    return product.prev_close_fen


def price_band(product: Product, today: date, band_bps: int) -> tuple[int, int]:
    """Today's price band (涨跌幅限制) around the previous close, in whole fen."""
    ref = reference_price(product, today)
    return ceil_div(ref * (10000 - band_bps), 10000), ref * (10000 + band_bps) // 10000


def _product_out(p: Product, today: date, band_bps: int) -> ProductOut:
    low, high = price_band(p, today, band_bps)
    return ProductOut(key=p.key, category=p.category, vintage=p.vintage, status=p.status,
                      reference_price_fen=reference_price(p, today), band_low_fen=low,
                      band_high_fen=high, last_price_fen=p.last_price_fen)


async def add_product(session: AsyncSession, data: ProductIn, *, actor: str,
                       now: datetime | None = None) -> ProductOut:
    """The exchange lists a product for public bidding with its reference price."""
    at = now or clock.now()
    key = product_key(data.category, data.vintage)
    if await session.get(Product, key) is not None:
        raise Conflict("trading.product_exists", f"Product {key} is already listed.")
    p = Product(key=key, category=data.category, vintage=data.vintage,
                ref_price_fen=data.ref_price_fen, prev_close_fen=data.ref_price_fen,
                status="listed", listed_at=at)
    session.add(p)
    await session.flush()
    await audit.append(session, actor=actor, action="trading.product_list",
                       entity="trading_product", entity_id=key,
                       data=data.model_dump(mode="json"), now=at)
    rules = await market_rules(session)
    return _product_out(p, clock.business_date(at), rules.band_bps)


async def products(session: AsyncSession, *, now: datetime | None = None
                            ) -> list[ProductOut]:
    rules = await market_rules(session)
    today = clock.business_date(now or clock.now())
    rows = (await session.execute(select(Product).order_by(Product.key))).scalars().all()
    return [_product_out(p, today, rules.band_bps) for p in rows]



# --- trading accounts -------------------------------------------------------------------


def _mask_name(name: str) -> str:
    return name[0] + "*" * max(1, len(name) - 1)


def _account_out(a: TradingAccount) -> AccountOut:
    return AccountOut.model_validate(a)


async def open_account(session: AsyncSession, data: AccountIn, *, actor: str,
                       now: datetime | None = None) -> AccountOut:
    """The exchange opens a trading account (开户) for a registry account holder: tied to its
    holding account, with an empty funds account. A person's identity is required and
    stored encrypted, with a blind index so one person has one account."""
    at = now or clock.now()
    org = await registry.get_organisation(session, data.organisation_id)
    assert org.account_id is not None
    if org.status != "active":  # Art. 22: the registry found the holder gone
        raise account_closed()
    individual = org.kind == "individual"
    if individual and data.identity is None:
        raise Invalid("trading.identity_required", "A person's account needs their identity.")
    exists = (await session.execute(
        select(TradingAccount.id).where(TradingAccount.organisation_id == org.id)
    )).scalar_one_or_none()
    if exists is not None:
        raise Conflict("trading.account_exists", "This holder already has a trading account.")
    acct = TradingAccount(id=uuid.uuid4(), organisation_id=org.id,
                          registry_account_id=org.account_id,
                          kind="individual" if individual else "organisation",
                          display_name=org.name, available_fen=0, locked_fen=0,
                          status="active", created_at=at)
    if individual and data.identity is not None:
        idn = data.identity.id_number.upper()
        index = crypto.blind_index(idn, context="trading.id_number")
        taken = (await session.execute(
            select(TradingAccount.id).where(TradingAccount.id_number_index == index)
        )).scalar_one_or_none()
        if taken is not None:
            raise Conflict("trading.identity_exists", "This person already has an account.")
        acct.legal_name_enc = crypto.encrypt(data.identity.legal_name,
                                             context="trading.legal_name")
        acct.id_number_enc = crypto.encrypt(idn, context="trading.id_number")
        acct.id_number_index = index
        if data.identity.phone:
            acct.phone_enc = crypto.encrypt(data.identity.phone, context="trading.phone")
        acct.display_name = _mask_name(data.identity.legal_name)
    session.add(acct)
    await session.flush()
    await audit.append(session, actor=actor, action="trading.account_open",
                       entity="trading_account", entity_id=str(acct.id), now=at,
                       data={"organisation_id": str(org.id), "kind": acct.kind})
    return _account_out(acct)


async def get_account(session: AsyncSession, account_id: UUID) -> AccountOut:
    a = await session.get(TradingAccount, account_id, populate_existing=True)
    if a is None:
        raise not_found("account")
    return _account_out(a)


async def account_for_org(session: AsyncSession, organisation_id: UUID) -> TradingAccount:
    """The trading account of the calling organisation."""
    a = (await session.execute(
        select(TradingAccount).where(TradingAccount.organisation_id == organisation_id)
        .execution_options(populate_existing=True)
    )).scalar_one_or_none()
    if a is None:
        raise not_found("account")
    if a.status != "active":
        raise Conflict("trading.account_inactive", f"The trading account is {a.status}.")
    return a


async def require_not_barred(session: AsyncSession, organisation_ids: Iterable[UUID]) -> None:
    """Art. 37: staff of the registry agency, the operator and the exchange may not trade;
    Art. 22/30: nor may an organisation the registry dissolved (owner gone), nor may anyone
    trade with it (``trading.account_closed``). One statement."""
    refused = await registry_credits.trading_refusals(session, organisation_ids)
    if "dissolved" in refused.values():
        raise account_closed()
    if refused:
        raise staff_barred()


def _any(column: Any, ids: Sequence[UUID]) -> Any:
    """``column = ANY(:ids)``, one uuid[] parameter: one statement text (and prepared plan)
    whatever the batch's number of accounts."""
    return column == any_(bindparam("ids", list(ids), type_=ARRAY(Uuid())))


async def prelock(session: AsyncSession, account_ids: Iterable[UUID]
                  ) -> dict[UUID, TradingAccount]:
    """Take, in the house order, the registry accounts' and then the trading accounts' row
    locks of these trading accounts; return the locked, freshly read rows."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    reg = (await session.execute(
        select(TradingAccount.registry_account_id).where(_any(TradingAccount.id, ids))
    )).scalars().all()
    if len(reg) != len(ids):
        raise not_found("account")
    await registry_credits.lock_accounts(session, reg)
    return await load_accounts(session, ids)


async def load_accounts(session: AsyncSession, ids: Sequence[UUID]) -> dict[UUID, TradingAccount]:
    rows = (await session.execute(
        select(TradingAccount).where(_any(TradingAccount.id, sorted(ids)))
        .order_by(TradingAccount.id).with_for_update()
        .execution_options(populate_existing=True)
    )).scalars().all()
    return {a.id: a for a in rows}


# --- funds ---------------------------------------------------------------------------------


async def _bank_movement(session: AsyncSession, account_id: UUID, kind: str, amount: int,
                         bank_reference: str, actor: str, at: datetime) -> AccountOut:
    used = (await session.execute(
        select(FundEntry.id).where(FundEntry.kind == kind,
                                   FundEntry.bank_reference == bank_reference)
    )).scalar_one_or_none()
    if used is not None:
        raise Conflict("trading.bank_reference_used",
                       f"A {kind} with this bank reference was already entered.")
    accts = await load_accounts(session, [account_id])
    acct = accts.get(account_id)
    if acct is None:
        raise not_found("account")
    delta = amount if kind == "deposit" else -amount
    if acct.available_fen + delta < 0:
        raise insufficient_funds(acct.available_fen, amount)
    acct.available_fen += delta
    session.add(FundEntry(account_id=account_id, kind=kind, available_delta=delta,
                          locked_delta=0, bank_reference=bank_reference, actor=actor, at=at))
    await session.flush()
    await audit.append(session, actor=actor, action=f"trading.{kind}",
                       entity="trading_account", entity_id=str(account_id), now=at,
                       data={"amount_fen": amount, "bank_reference": bank_reference})
    return _account_out(acct)


async def deposit(session: AsyncSession, account_id: UUID, amount_fen: int, bank_reference: str,
                  *, actor: str, now: datetime | None = None) -> AccountOut:
    """The exchange enters a deposit (入金) received on its bank account; audited."""
    return await _bank_movement(session, account_id, "deposit", amount_fen, bank_reference,
                                actor, now or clock.now())


async def withdraw(session: AsyncSession, account_id: UUID, amount_fen: int, bank_reference: str,
                   *, actor: str, now: datetime | None = None) -> AccountOut:
    """The exchange enters a withdrawal (出金) from the available funds; audited."""
    return await _bank_movement(session, account_id, "withdrawal", amount_fen, bank_reference,
                                actor, now or clock.now())


async def statement(session: AsyncSession, account_id: UUID, *, limit: int = 200
                    ) -> list[FundEntryOut]:
    rows = (await session.execute(
        select(FundEntry).where(FundEntry.account_id == account_id)
        .order_by(FundEntry.id.desc()).limit(limit)
    )).scalars().all()
    return [FundEntryOut.model_validate(r) for r in rows]


# --- conservation -------------------------------------------------------------------------

_TOTALS = text("""
    SELECT
      (SELECT coalesce(sum(available_delta), 0) FROM trading_fund_entries
        WHERE kind = 'deposit') AS deposits,
      (SELECT coalesce(-sum(available_delta), 0) FROM trading_fund_entries
        WHERE kind = 'withdrawal') AS withdrawals,
      (SELECT coalesce(sum(available_fen), 0) FROM trading_accounts) AS available,
      (SELECT coalesce(sum(locked_fen), 0) FROM trading_accounts) AS locked,
      (SELECT coalesce(sum(fee_fen), 0) FROM trading_trades) AS fees
""")

# Per account, the journal adds up to the balances, and the locked funds are exactly what the
# open buy orders reserve.
_PER_ACCOUNT = text("""
    WITH j AS (
        SELECT account_id, sum(available_delta) AS av, sum(locked_delta) AS lk
        FROM trading_fund_entries GROUP BY account_id
    ), r AS (
        SELECT account_id, sum(reserved_fen) AS reserved FROM trading_orders
        WHERE state = 'open' AND side = 'buy' GROUP BY account_id
    )
    SELECT a.id, a.available_fen, a.locked_fen, coalesce(j.av, 0) AS av,
           coalesce(j.lk, 0) AS lk, coalesce(r.reserved, 0) AS reserved
    FROM trading_accounts a LEFT JOIN j ON j.account_id = a.id
    LEFT JOIN r ON r.account_id = a.id
    WHERE a.available_fen <> coalesce(j.av, 0) OR a.locked_fen <> coalesce(j.lk, 0)
       OR a.locked_fen <> coalesce(r.reserved, 0)
""")

_TRADES = text("""
    SELECT
      (SELECT coalesce(sum(amount_fen), 0) FROM trading_trades) AS amount,
      (SELECT coalesce(sum(fee_fen), 0) FROM trading_trades) AS fees,
      (SELECT coalesce(-sum(available_delta + locked_delta), 0) FROM trading_fund_entries
        WHERE kind = 'pay') AS paid,
      (SELECT coalesce(sum(available_delta), 0) FROM trading_fund_entries
        WHERE kind = 'receive') AS received
""")


async def check_funds(session: AsyncSession) -> CheckOut:
    """Funds conservation (资金守恒): deposits − withdrawals = available + locked + fees; every
    account's journal adds up to its balances; locked funds = open buy orders' reservations;
    buyers paid exactly the trades' amounts and sellers received them less the fees."""
    t = (await session.execute(_TOTALS)).one()
    problems: list[str] = []
    if t.deposits - t.withdrawals != t.available + t.locked + t.fees:
        problems.append(
            f"deposits {t.deposits} - withdrawals {t.withdrawals} != available {t.available}"
            f" + locked {t.locked} + fees {t.fees}")
    for r in (await session.execute(_PER_ACCOUNT)).all():
        problems.append(
            f"account {r.id}: balances {r.available_fen}/{r.locked_fen}, journal {r.av}/{r.lk},"
            f" open buy orders reserve {r.reserved}")
    tr = (await session.execute(_TRADES)).one()
    if tr.paid != tr.amount or tr.received != tr.amount - tr.fees:
        problems.append(f"trades {tr.amount} (fees {tr.fees}): buyers paid {tr.paid}, sellers "
                        f"received {tr.received}")
    return CheckOut(ok=not problems, deposits_fen=t.deposits, withdrawals_fen=t.withdrawals,
                    available_fen=t.available, locked_fen=t.locked, fees_fen=t.fees,
                    problems=problems)
