"""Agreement transfer (协议转让, Art. 25): the seller proposes a quantity and a price to a named
buyer; the credits are locked in the registry at once; the buyer accepts (delivery versus
payment in one transaction), declines, or lets it expire (the credits are released).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from registry import service as registry
from registry.schemas import ProductFilter
from trading import service
from trading.errors import Conflict, Forbidden, insufficient_funds, not_found, wrong_state
from trading.models import Deal, FundEntry, Trade, TradingAccount
from trading.schemas import DealIn, DealOut, product_key

__all__ = ["accept", "decline", "expire_due", "list_deals", "propose", "withdraw"]


async def propose(session: AsyncSession, seller_org: UUID, data: DealIn, *, actor: str,
                  now: datetime | None = None) -> DealOut:
    """The seller proposes; its credits of the product are locked at once (Art. 30: the
    registry shows them locked, so they can be neither sold twice nor cancelled meanwhile)."""
    at = now or clock.now()
    rules = await service.market_rules(session)
    await service.require_session(session, rules, at)
    seller = await service.account_for_org(session, seller_org)
    buyer = await session.get(TradingAccount, data.buyer_account_id)
    if buyer is None or buyer.status != "active":
        raise not_found("account")
    if buyer.organisation_id == seller.organisation_id:
        raise Conflict("trading.self_trade", "Seller and buyer are the same holder.")
    # Art. 37: staff may neither offer nor be offered CQCER.
    await service.require_not_barred(session, [seller.organisation_id, buyer.organisation_id])
    deal_id = uuid.uuid4()
    lk = await registry.lock(
        session, account_id=seller.registry_account_id, quantity=data.quantity,
        purpose="agreement_transfer", reference=f"deal:{deal_id}",
        product=ProductFilter(category=data.category, vintage=data.vintage), now=at)
    deal = Deal(id=deal_id, seller_account_id=seller.id, buyer_account_id=buyer.id,
                category=data.category, vintage=data.vintage, quantity=data.quantity,
                price_fen=data.price_fen, lock_id=lk.id, state="proposed",
                expires_at=at + timedelta(seconds=data.expires_in_s or rules.deal_ttl_s),
                note=data.note, created_at=at)
    session.add(deal)
    await session.flush()
    await audit.append(session, actor=actor, action="trading.deal_propose", entity="trading_deal",
                       entity_id=str(deal_id), now=at,
                       data={"quantity": data.quantity, "price_fen": data.price_fen,
                             "buyer": str(buyer.id), "lock_id": str(lk.id)})
    return DealOut.model_validate(deal)


async def _deal(session: AsyncSession, deal_id: UUID) -> Deal:
    d = (await session.execute(
        select(Deal).where(Deal.id == deal_id).with_for_update()
        .execution_options(populate_existing=True)
    )).scalar_one_or_none()
    if d is None:
        raise not_found("deal")
    return d


async def _party(session: AsyncSession, deal: Deal, org: UUID, side: str) -> TradingAccount:
    acct = await service.account_for_org(session, org)
    expected = deal.buyer_account_id if side == "buyer" else deal.seller_account_id
    if acct.id != expected:
        raise Forbidden("trading.not_party", f"Only the deal's {side} may do this.")
    return acct


async def accept(session: AsyncSession, buyer_org: UUID, deal_id: UUID, *, actor: str,
                 now: datetime | None = None) -> DealOut:
    """The buyer accepts: in this one transaction the buyer pays, the seller receives the
    price less the exchange's fee, and the registry delivers the locked credits (DvP)."""
    at = now or clock.now()
    rules = await service.market_rules(session)
    today = await service.require_session(session, rules, at)
    deal = await _deal(session, deal_id)
    buyer = await _party(session, deal, buyer_org, "buyer")
    if deal.state != "proposed":
        raise wrong_state("deal", deal.state)
    if at >= deal.expires_at:
        raise Conflict("trading.deal_expired", "The proposal has expired.")
    seller = await session.get(TradingAccount, deal.seller_account_id)
    assert seller is not None
    await service.require_not_barred(session, [buyer.organisation_id, seller.organisation_id])
    accts = await service.prelock(session, [buyer.id, seller.id])
    buyer, seller = accts[buyer.id], accts[seller.id]
    amount = deal.quantity * deal.price_fen
    fee = rules.fee(amount)
    if buyer.available_fen < amount:
        raise insufficient_funds(buyer.available_fen, amount)
    await registry.move_locked(session, deal.lock_id, to_account_id=buyer.registry_account_id,
                               now=at)
    trade = Trade(method="agreement", product_key=product_key(deal.category, deal.vintage),
                  category=deal.category, vintage=deal.vintage, price_fen=deal.price_fen,
                  quantity=deal.quantity, amount_fen=amount, fee_fen=fee, deal_id=deal.id,
                  buyer_account_id=buyer.id, seller_account_id=seller.id, business_date=today,
                  executed_at=at)
    session.add(trade)
    await session.flush()
    buyer.available_fen -= amount
    seller.available_fen += amount - fee
    session.add_all([
        FundEntry(account_id=buyer.id, kind="pay", available_delta=-amount, locked_delta=0,
                  trade_id=trade.id, at=at),
        FundEntry(account_id=seller.id, kind="receive", available_delta=amount - fee,
                  locked_delta=0, trade_id=trade.id, at=at),
    ])
    deal.state, deal.decided_at, deal.trade_id = "accepted", at, trade.id
    await session.flush()
    await audit.append(session, actor=actor, action="trading.deal_accept", entity="trading_deal",
                       entity_id=str(deal.id), now=at,
                       data={"trade_id": trade.id, "amount_fen": amount, "fee_fen": fee})
    return DealOut.model_validate(deal)


async def _close(session: AsyncSession, deal: Deal, state: str, actor: str,
                 at: datetime) -> DealOut:
    await registry.unlock(session, deal.lock_id, now=at)
    deal.state, deal.decided_at = state, at
    await session.flush()
    await audit.append(session, actor=actor, action=f"trading.deal_{state}",
                       entity="trading_deal", entity_id=str(deal.id), now=at)
    return DealOut.model_validate(deal)


async def decline(session: AsyncSession, buyer_org: UUID, deal_id: UUID, *, actor: str,
                  now: datetime | None = None) -> DealOut:
    """The buyer declines: the seller's credits are released."""
    deal = await _deal(session, deal_id)
    await _party(session, deal, buyer_org, "buyer")
    if deal.state != "proposed":
        raise wrong_state("deal", deal.state)
    return await _close(session, deal, "declined", actor, now or clock.now())


async def withdraw(session: AsyncSession, seller_org: UUID, deal_id: UUID, *, actor: str,
                   now: datetime | None = None) -> DealOut:
    """The seller withdraws an unanswered proposal: its credits are released."""
    deal = await _deal(session, deal_id)
    await _party(session, deal, seller_org, "seller")
    if deal.state != "proposed":
        raise wrong_state("deal", deal.state)
    return await _close(session, deal, "withdrawn", actor, now or clock.now())


async def expire_due(session: AsyncSession, *, actor: str = "system:trading",
                     now: datetime | None = None, limit: int = 500) -> int:
    """Expire proposals past their expiry (credits released); returns how many."""
    at = now or clock.now()
    due = (await session.execute(
        select(Deal).where(Deal.state == "proposed", Deal.expires_at <= at)
        .order_by(Deal.expires_at).limit(limit).with_for_update(skip_locked=True)
    )).scalars().all()
    if due:
        await service.prelock(session, [d.seller_account_id for d in due])
    for d in due:
        await _close(session, d, "expired", actor, at)
    return len(due)


async def list_deals(session: AsyncSession, org: UUID) -> list[DealOut]:
    acct = await service.account_for_org(session, org)
    rows = (await session.execute(
        select(Deal).where((Deal.seller_account_id == acct.id) | (Deal.buyer_account_id == acct.id))
        .order_by(Deal.created_at.desc()).limit(500)
    )).scalars().all()
    return [DealOut.model_validate(d) for d in rows]
