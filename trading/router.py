"""HTTP routes of the trading system: the exchange (``/v1/admin/trading``), traders
(``/v1/trading``, organisation tokens) and the public (``/public/trading``, Art. 36)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from app import clock
from app.audit import actor_of
from app.auth.principal import Principal
from app.deps import Db, RuntimeDep, require
from app.ratelimit import Limit, limiter_for
from registry.auth import CurrentOrg
from trading import deals, market, matching, service
from trading.schemas import (
    AccountIn,
    AccountOut,
    Bar,
    CheckOut,
    ConfigIn,
    ConfigOut,
    DealIn,
    DealOut,
    FundEntryOut,
    FundsIn,
    OrderIn,
    OrderOut,
    ProductIn,
    ProductOut,
    PublicTrade,
)

if TYPE_CHECKING:
    Exchange = Principal
else:
    Exchange = require("trading.operate")

PUBLIC_LIMIT = Limit("public.trading", "240/minute")


async def _public_limit(request: Request, runtime: RuntimeDep) -> None:
    host = request.client.host if request.client else "unknown"
    await limiter_for(runtime).hit(PUBLIC_LIMIT, host, code="public.rate_limited")


admin = APIRouter(prefix="/v1/admin/trading", tags=["trading: exchange"])
trader = APIRouter(prefix="/v1/trading", tags=["trading: traders"])
public = APIRouter(prefix="/public/trading", tags=["trading: disclosure (Art. 36)"],
                   dependencies=[Depends(_public_limit)])


# A trading day the market data can hold; anything else is a 422, never a date overflow.
MarketDay = Annotated[date, Query(ge=date(2000, 1, 1), le=date(2999, 12, 31))]


def _org(org: Principal) -> UUID:
    assert org.scope_id is not None
    return org.scope_id


# --- the exchange --------------------------------------------------------------------------


@admin.post("/accounts", response_model=AccountOut, status_code=201)
async def open_account(body: AccountIn, who: Exchange, db: Db) -> AccountOut:
    """Open a trading account for a registry account holder (organisation or person)."""
    async with db.transaction() as session:
        return await service.open_account(session, body, actor=actor_of(who))


@admin.get("/accounts/{account_id}", response_model=AccountOut)
async def get_account(account_id: UUID, who: Exchange, db: Db) -> AccountOut:
    async with db.transaction() as session:
        return await service.get_account(session, account_id)


@admin.get("/accounts/{account_id}/statement", response_model=list[FundEntryOut])
async def account_statement(account_id: UUID, who: Exchange, db: Db) -> list[FundEntryOut]:
    async with db.transaction() as session:
        return await service.statement(session, account_id)


@admin.post("/accounts/{account_id}/deposits", response_model=AccountOut, status_code=201)
async def deposit(account_id: UUID, body: FundsIn, who: Exchange, db: Db) -> AccountOut:
    """Enter a deposit received on the exchange's bank account (入金)."""
    async with db.transaction() as session:
        return await service.deposit(session, account_id, body.amount_fen, body.bank_reference,
                                     actor=actor_of(who))


@admin.post("/accounts/{account_id}/withdrawals", response_model=AccountOut, status_code=201)
async def withdraw(account_id: UUID, body: FundsIn, who: Exchange, db: Db) -> AccountOut:
    """Enter a withdrawal paid out to the holder's bank account (出金)."""
    async with db.transaction() as session:
        return await service.withdraw(session, account_id, body.amount_fen, body.bank_reference,
                                      actor=actor_of(who))


@admin.get("/config", response_model=ConfigOut)
async def get_config(who: Exchange, db: Db) -> ConfigOut:
    async with db.transaction() as session:
        return await service.get_config(session)


@admin.put("/config", response_model=ConfigOut)
async def set_config(body: ConfigIn, who: Exchange, db: Db) -> ConfigOut:
    """Trading sessions, daily price band, fee and deal expiry (Art. 28)."""
    async with db.transaction() as session:
        return await service.set_config(session, body, actor=actor_of(who))


@admin.post("/products", response_model=ProductOut, status_code=201)
async def add_product(body: ProductIn, who: Exchange, db: Db) -> ProductOut:
    async with db.transaction() as session:
        return await service.add_product(session, body, actor=actor_of(who))


@admin.post("/close-day")
async def close_day(who: Exchange, db: Db) -> dict[str, int]:
    """End of day: expire earlier days' open orders and overdue deal proposals."""
    async with db.transaction() as session:
        orders = await matching.expire_stale(session, actor=actor_of(who))
        expired = await deals.expire_due(session, actor=actor_of(who))
    return {"orders_expired": orders, "deals_expired": expired}


@admin.get("/check", response_model=CheckOut)
async def check(who: Exchange, db: Db) -> CheckOut:
    """Funds conservation: deposits − withdrawals = balances + locked + fees."""
    async with db.transaction() as session:
        return await service.check_funds(session)


# --- traders -------------------------------------------------------------------------------


@trader.get("/account", response_model=AccountOut)
async def my_account(org: CurrentOrg, db: Db) -> AccountOut:
    async with db.transaction() as session:
        acct = await service.account_for_org(session, _org(org))
        return AccountOut.model_validate(acct)


@trader.get("/account/statement", response_model=list[FundEntryOut])
async def my_statement(org: CurrentOrg, db: Db) -> list[FundEntryOut]:
    async with db.transaction() as session:
        acct = await service.account_for_org(session, _org(org))
        return await service.statement(session, acct.id)


@trader.post("/deals", response_model=DealOut, status_code=201)
async def propose(body: DealIn, org: CurrentOrg, db: Db) -> DealOut:
    """Propose an agreement transfer (协议转让) to a named buyer; the credits lock at once."""
    async with db.transaction() as session:
        return await deals.propose(session, _org(org), body, actor=actor_of(org))


@trader.get("/deals", response_model=list[DealOut])
async def my_deals(org: CurrentOrg, db: Db) -> list[DealOut]:
    async with db.transaction() as session:
        return await deals.list_deals(session, _org(org))


@trader.post("/deals/{deal_id}/accept", response_model=DealOut)
async def accept(deal_id: UUID, org: CurrentOrg, db: Db) -> DealOut:
    """Accept: delivery versus payment in one transaction."""
    async with db.transaction() as session:
        return await deals.accept(session, _org(org), deal_id, actor=actor_of(org))


@trader.post("/deals/{deal_id}/decline", response_model=DealOut)
async def decline(deal_id: UUID, org: CurrentOrg, db: Db) -> DealOut:
    async with db.transaction() as session:
        return await deals.decline(session, _org(org), deal_id, actor=actor_of(org))


@trader.post("/deals/{deal_id}/withdraw", response_model=DealOut)
async def withdraw_deal(deal_id: UUID, org: CurrentOrg, db: Db) -> DealOut:
    async with db.transaction() as session:
        return await deals.withdraw(session, _org(org), deal_id, actor=actor_of(org))


@trader.post("/orders", response_model=OrderOut, status_code=201)
async def place_order(body: OrderIn, org: CurrentOrg, db: Db) -> OrderOut:
    """A limit order in the public bidding book (公开竞价); matches settle at once."""
    async with db.transaction() as session:
        return await matching.place_order(session, _org(org), body.product, body.side,
                                          body.price_fen, body.quantity, actor=actor_of(org))


@trader.get("/orders", response_model=list[OrderOut])
async def my_orders(org: CurrentOrg, db: Db) -> list[OrderOut]:
    async with db.transaction() as session:
        return await matching.list_orders(session, _org(org))


@trader.post("/orders/{order_id}/cancel", response_model=OrderOut)
async def cancel_order(
    order_id: Annotated[int, Path(ge=1, le=2**63 - 1)], org: CurrentOrg, db: Db
) -> OrderOut:
    async with db.transaction() as session:
        return await matching.cancel_order(session, _org(org), order_id, actor=actor_of(org))


# --- the public ----------------------------------------------------------------------------


@public.get("/products", response_model=list[ProductOut])
async def products(db: Db) -> list[ProductOut]:
    """Listed products with today's reference price and price band."""
    async with db.transaction() as session:
        return await service.products(session)


@public.get("/trades", response_model=list[PublicTrade])
async def trades(db: Db, product: str | None = None, day: MarketDay | None = None,
                 before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[PublicTrade]:
    """Trades without identities (Art. 36)."""
    async with db.transaction() as session:
        return await market.public_trades(session, product=product, day=day,
                                          before_id=before_id, limit=limit)


@public.get("/products/{key}/bars", response_model=list[Bar])
async def bars(key: str, db: Db, start: MarketDay | None = None, end: MarketDay | None = None
               ) -> list[Bar]:
    """Daily open/high/low/close and volume of a product (default: the last 30 days)."""
    last = end or clock.today()
    first = start or date.fromordinal(last.toordinal() - 30)
    async with db.transaction() as session:
        return await market.bars(session, key, first, last)


@public.get("/products/{key}/depth")
async def depth(key: str, db: Db) -> dict[str, Any]:
    """The best five price levels each side, aggregated."""
    async with db.transaction() as session:
        return {"product": key, **await matching.depth(session, key)}


@public.get("/reports/{month}")
async def report(month: str, db: Db, format: Literal["json", "csv"] = "json") -> Any:
    """The monthly market report (Art. 36), JSON or CSV."""
    async with db.transaction() as session:
        data = await market.monthly_report(session, month)
    if format == "csv":
        return Response("\ufeff" + market.report_csv(data), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition":
                                 f'attachment; filename="cqcer-market-{data["month"]}.csv"'})
    return data


router = APIRouter()
router.include_router(admin)
router.include_router(trader)
router.include_router(public)
