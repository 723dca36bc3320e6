"""Public bidding (公开竞价): a continuous order book per product, limit orders in whole tonnes,
price-time priority, self-trade prevention, and delivery versus payment at every match.

One transaction handles one or more incoming orders of one product:

1. the product's advisory lock (``pg_advisory_xact_lock``) serialises everything that reads or
   changes its book, so concurrent placements see one consistent book;
2. the crossing part of the book is read (at most as many resting orders as the incoming
   orders could fill), with the day's stale orders that are expired on the way;
3. every account involved is row-locked in the house order (registry accounts, then trading
   accounts) before the first audit record; the day's stale orders are released (one
   ``unlock_many``), then the sellers' held tonnes of the product are read (one statement);
4. the orders are matched in memory; each fill is settled at once in memory: funds move
   between the accounts (the buyer's reservation pays, the seller receives the price less the
   fee), a sell order's credits are counted against its seller's held tonnes, and the
   delivery is noted;
5. the registry then locks every new sell order's tonnes and delivers its fills on entry
   (one ``lock_many``), delivers the fills of resting sell orders out of their locks (one
   ``deliver_many``), and the orders, trades, balances and fund journal are written
   set-based, one statement each. The registry work of a batch is a constant number of
   statements, whatever its size.

A sell order holds its tonnes (those it sells at entry and those it rests with) in one registry
lock; each fill delivers its quantity from that lock, the rest stays locked under it (a partial
fill is one ``deliver``). Delivery and payment are in the same transaction (DvP).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import itemgetter
from typing import Any
from uuid import UUID

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.errors import DomainError
from registry import credits as registry_credits
from registry import service as registry
from registry.schemas import ProductFilter
from registry.service import Delivery, LockRequest
from trading import service
from trading.errors import (
    Conflict,
    account_closed,
    insufficient_funds,
    not_found,
    price_out_of_band,
    staff_barred,
    wrong_state,
)
from trading.models import FundEntry, Order, Product, Trade
from trading.schemas import FillOut, OrderOut

__all__ = ["NewOrder", "Placed", "cancel_all", "cancel_order", "depth", "expire_stale",
           "list_orders", "place", "place_order"]

_ADVISORY_CLASS = 0x74726164  # "trad": one advisory lock per product book
# Core tables: their multi-row inserts are one statement (the ORM would group rows by which
# columns are None).
_ORDERS: Table = Order.__table__  # type: ignore[assignment]
_ENTRIES: Table = FundEntry.__table__  # type: ignore[assignment]
_TRADES: Table = Trade.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class NewOrder:
    """An incoming limit order of one account."""

    account_id: UUID
    side: str
    price_fen: int
    quantity: int


@dataclass(slots=True)
class Placed:
    """The outcome of one incoming order: the stored order, or the refusal."""

    order: OrderOut | None = None
    error: DomainError | None = None


@dataclass(slots=True)
class _Order:
    """An order row in memory. Matching works on plain objects (not the ORM's instrumented
    ones) and writes them back set-based in :func:`_write`."""

    id: int
    product_key: str
    account_id: UUID
    owner_id: UUID
    side: str
    price_fen: int
    quantity: int
    filled: int
    reserved_fen: int
    lock_id: UUID | None
    state: str
    cancel_reason: str | None
    business_date: date
    created_at: datetime
    closed_at: datetime | None


@dataclass(slots=True)
class _Account:
    """A trading account's funds in memory (its row is locked; written back by :func:`_write`)."""

    id: UUID
    organisation_id: UUID
    registry_account_id: UUID
    status: str
    available_fen: int
    locked_fen: int


async def _orders(session: AsyncSession, *cond: Any) -> list[_Order]:
    rows = (await session.execute(select(*_ORDERS.c).where(*cond).order_by(_ORDERS.c.id))).all()
    return [_Order(**r._mapping) for r in rows]


async def _prelock(session: AsyncSession, account_ids: Sequence[UUID]) -> dict[UUID, _Account]:
    """The house lock order (registry accounts, then trading accounts); plain copies."""
    return {a.id: _Account(a.id, a.organisation_id, a.registry_account_id, a.status,
                           a.available_fen, a.locked_fen)
            for a in (await service.prelock(session, account_ids)).values()}


@dataclass(slots=True)
class _Book:
    """Resting orders in priority order: asks (price, id) ascending; bids (-price, id)."""

    asks: list[tuple[tuple[int, int], _Order]] = field(default_factory=list)
    bids: list[tuple[tuple[int, int], _Order]] = field(default_factory=list)

    def side(self, side: str) -> list[tuple[tuple[int, int], _Order]]:
        return self.asks if side == "sell" else self.bids

    @staticmethod
    def key(o: _Order) -> tuple[int, int]:
        return (o.price_fen, o.id) if o.side == "sell" else (-o.price_fen, o.id)

    def add(self, o: _Order) -> None:
        bisect.insort(self.side(o.side), (self.key(o), o), key=lambda e: e[0])


@dataclass(slots=True)
class _Fill:
    resting: _Order
    quantity: int
    price: int


@dataclass(slots=True)
class _Txn:
    """What one matching transaction writes at the end."""

    at: datetime
    today: date
    product: Product
    fee_bps: int
    accounts: dict[UUID, _Account]
    new_orders: list[_Order] = field(default_factory=list)
    new_ids: set[int] = field(default_factory=set)
    touched: dict[int, _Order] = field(default_factory=dict)
    trades: list[dict[str, object]] = field(default_factory=list)
    entries: list[dict[str, object]] = field(default_factory=list)
    fills: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    # registry work, done set-based by _settle_credits: sellers' held tonnes of the product,
    # locks to take (per new sell order), deliveries (sell order, buyer's registry account,
    # tonnes), locks to release
    held: dict[UUID, int] = field(default_factory=dict)
    locks: list[tuple[_Order, LockRequest]] = field(default_factory=list)
    deliveries: list[tuple[_Order, UUID, int]] = field(default_factory=list)
    unlocks: list[UUID] = field(default_factory=list)

    def entry(self, account: UUID, kind: str, available: int, locked: int, *,
              order_id: int | None = None, trade_ix: int | None = None) -> None:
        self.entries.append({"account_id": account, "kind": kind, "available_delta": available,
                             "locked_delta": locked, "order_id": order_id,
                             "trade_id": trade_ix, "at": self.at})


def _remaining(o: _Order) -> int:
    return o.quantity - o.filled


def _product_filter(p: Product) -> ProductFilter:
    return ProductFilter(category=p.category, vintage=p.vintage)  # type: ignore[arg-type]


async def _lock_book(session: AsyncSession, key: str) -> Product:
    await session.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))"),
                          {"c": _ADVISORY_CLASS, "k": key})
    p = await session.get(Product, key, populate_existing=True)
    if p is None:
        raise not_found("product")
    return p


async def _crossing(session: AsyncSession, key: str, today: date, side: str, limit_price: int,
                    quantity: int) -> list[_Order]:
    """Resting orders of ``side`` that cross ``limit_price``, in priority order, no more than
    ``quantity`` tonnes' worth (one statement)."""
    rem = Order.quantity - Order.filled
    if side == "sell":
        cond = Order.price_fen <= limit_price
        running = func.sum(rem).over(order_by=(Order.price_fen, Order.id))
    else:
        cond = Order.price_fen >= limit_price
        running = func.sum(rem).over(order_by=(Order.price_fen.desc(), Order.id))
    inner = select(Order.id, running.label("running"), rem.label("rem")).where(
        Order.product_key == key, Order.side == side, Order.state == "open",
        Order.business_date == today, cond,
    ).subquery()
    ids = select(inner.c.id).where(inner.c.running - inner.c.rem < quantity)
    return await _orders(session, _ORDERS.c.id.in_(ids))


async def _stale(session: AsyncSession, key: str, today: date) -> list[_Order]:
    return await _orders(session, _ORDERS.c.product_key == key, _ORDERS.c.state == "open",
                         _ORDERS.c.business_date < today)


async def _ids(session: AsyncSession, table: str, n: int) -> list[int]:
    """``n`` new ids of ``table`` from its sequence, ascending (one statement)."""
    if n == 0:
        return []
    return list((await session.execute(
        text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
             "FROM generate_series(1, :n)"), {"n": n}
    )).scalars().all())


_SQL_TYPES = {"BigInteger": "int8", "Integer": "int4", "Uuid": "uuid", "Date": "date",
              "DateTime": "timestamptz", "String": "text", "Text": "text"}


async def _insert(session: AsyncSession, table: Table, rows: Sequence[Any],
                  columns: dict[str, Callable[[Any], object]]) -> None:
    """Insert ``rows`` in one ``INSERT ... SELECT FROM unnest(...)``: one array per column,
    so the statement's text (and its prepared plan) is the same whatever the batch size."""
    names = list(columns)
    casts = ", ".join(
        f"CAST(:{n} AS {_SQL_TYPES[type(table.c[n].type).__name__]}[])" for n in names)
    await session.execute(
        text(f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({casts})"),
        {n: [get(r) for r in rows] for n, get in columns.items()})


def _close(txn: _Txn, o: _Order, state: str, reason: str | None = None) -> None:
    o.state, o.cancel_reason, o.closed_at = state, reason, txn.at
    if o.id not in txn.new_ids:
        txn.touched[o.id] = o


def _release(txn: _Txn, o: _Order, reason: str) -> None:
    """Cancel an open order: a buy order's reservation returns to the available funds, a sell
    order's credits are unlocked in the registry (by :func:`_settle_credits`)."""
    if o.side == "buy" and o.reserved_fen:
        acct = txn.accounts[o.account_id]
        acct.locked_fen -= o.reserved_fen
        acct.available_fen += o.reserved_fen
        txn.entry(o.account_id, "release", o.reserved_fen, -o.reserved_fen, order_id=o.id)
        o.reserved_fen = 0
    elif o.side == "sell" and o.lock_id is not None:
        txn.unlocks.append(o.lock_id)
        o.lock_id = None
    _close(txn, o, "cancelled", reason)


def _match(book: _Book, incoming: _Order) -> tuple[list[_Fill], bool]:
    """The fills of ``incoming`` against the book, best price first, then time; and whether
    self-trade prevention stopped it (its owner on the other side: the incoming remainder is
    cancelled, the resting order stays)."""
    other = book.side("buy" if incoming.side == "sell" else "sell")
    fills: list[_Fill] = []
    rem = incoming.quantity
    for _, r in other:
        if rem == 0:
            break
        if (r.price_fen > incoming.price_fen) if incoming.side == "buy" \
                else (r.price_fen < incoming.price_fen):
            break
        if r.owner_id == incoming.owner_id:
            return fills, True
        q = min(rem, _remaining(r))
        fills.append(_Fill(r, q, r.price_fen))
        rem -= q
    return fills, False


def _take_credits(txn: _Txn, o: _Order, tonnes: int, fills: list[_Fill]) -> None:
    """A sell order's tonnes (what it sells now and what it rests with) are counted against
    its seller's held credits of the product and will be locked under one registry lock, out
    of which its fills on entry are delivered at once (each block written once).
    Refuses with ``registry.insufficient_credits`` before anything changes."""
    reg = txn.accounts[o.account_id].registry_account_id
    held = txn.held.get(reg, 0)
    if held < tonnes:
        raise Conflict("registry.insufficient_credits",
                       f"The account holds {held} matching tonnes, fewer than {tonnes}.",
                       available=held, requested=tonnes)
    txn.held[reg] = held - tonnes
    now = tuple((txn.accounts[f.resting.account_id].registry_account_id, f.quantity)
                for f in fills)
    txn.locks.append((o, LockRequest(reg, tonnes, "trade", f"order:{o.id}",
                                     _product_filter(txn.product), deliver=now)))


async def _settle_credits(session: AsyncSession, txn: _Txn) -> None:
    """The registry's part of the batch, set-based: release, lock, deliver (DvP)."""
    if txn.unlocks:
        await registry.unlock_many(session, txn.unlocks, now=txn.at)
        txn.unlocks = []
    if txn.locks:
        views = await registry.lock_many(session, [r for _, r in txn.locks], now=txn.at)
        for (o, _), v in zip(txn.locks, views, strict=True):
            o.lock_id = v.id
        txn.locks = []
    if txn.deliveries:
        out: list[Delivery] = []
        for sell, to, q in txn.deliveries:
            assert sell.lock_id is not None
            out.append(Delivery(sell.lock_id, to, q))
        await registry.deliver_many(session, out, now=txn.at)
        txn.deliveries = []


def _settle_funds(txn: _Txn, buy: _Order, sell: _Order, q: int, p: int) -> None:
    """Pay one fill: the buy order's reservation (at its limit) pays ``q × p`` and returns the
    price improvement; the seller receives the amount less the exchange's fee."""
    amount = q * p
    fee = amount * txn.fee_bps // 10000
    reserved = q * buy.price_fen
    ix = len(txn.trades)
    txn.trades.append({
        "method": "bidding", "product_key": txn.product.key, "category": txn.product.category,
        "vintage": txn.product.vintage, "price_fen": p, "quantity": q, "amount_fen": amount,
        "fee_fen": fee, "buy_order_id": buy.id, "sell_order_id": sell.id,
        "buyer_account_id": buy.account_id, "seller_account_id": sell.account_id,
        "business_date": txn.today, "executed_at": txn.at,
    })
    b, s = txn.accounts[buy.account_id], txn.accounts[sell.account_id]
    b.locked_fen -= reserved
    b.available_fen += reserved - amount
    buy.reserved_fen -= reserved
    s.available_fen += amount - fee
    txn.entry(b.id, "pay", reserved - amount, -reserved, order_id=buy.id, trade_ix=ix)
    txn.entry(s.id, "receive", amount - fee, 0, order_id=sell.id, trade_ix=ix)
    for o in (buy, sell):
        o.filled += q
        txn.fills.setdefault(o.id, []).append((ix, p, q))
    p_ = txn.product
    if p_.last_trade_date != txn.today:
        p_.prev_close_fen = service.reference_price(p_, txn.today)
        p_.last_trade_date = txn.today
    p_.last_price_fen = p


def _one(txn: _Txn, book: _Book, o: _Order) -> None:
    """Match and pay one incoming order (already validated and funded); its deliveries are
    noted for :func:`_settle_credits`."""
    fills, stp = _match(book, o)
    filled = sum(f.quantity for f in fills)
    rest = 0 if stp else o.quantity - filled
    if o.side == "sell":
        if filled + rest:
            _take_credits(txn, o, filled + rest, fills)
    else:
        buyer = txn.accounts[o.account_id]
        need = o.quantity * o.price_fen
        buyer.available_fen -= need
        buyer.locked_fen += need
        o.reserved_fen = need
        txn.entry(buyer.id, "reserve", -need, need, order_id=o.id)
    txn.new_orders.append(o)
    txn.new_ids.add(o.id)
    done = 0
    for f in fills:
        r = f.resting
        buy, sell = (o, r) if o.side == "buy" else (r, o)
        _settle_funds(txn, buy, sell, f.quantity, f.price)
        if sell is r:  # a resting sell delivers out of its lock (an incoming one: at lock)
            txn.deliveries.append((sell, txn.accounts[buy.account_id].registry_account_id,
                                   f.quantity))
        if r.id not in txn.new_ids:
            txn.touched[r.id] = r
        if _remaining(r) == 0:
            _close(txn, r, "filled")
            done += 1
    # Fills take the other side's best orders in priority order: the filled ones are a prefix.
    del book.side("sell" if o.side == "buy" else "buy")[:done]
    if _remaining(o) == 0:
        o.state, o.closed_at = "filled", txn.at
    elif stp:
        _release_new(txn, o)
    else:
        book.add(o)


def _release_new(txn: _Txn, o: _Order) -> None:
    """Self-trade prevention cancels the incoming remainder (its reservation returns)."""
    if o.side == "buy" and o.reserved_fen:
        acct = txn.accounts[o.account_id]
        acct.locked_fen -= o.reserved_fen
        acct.available_fen += o.reserved_fen
        txn.entry(o.account_id, "release", o.reserved_fen, -o.reserved_fen, order_id=o.id)
        o.reserved_fen = 0
    o.state, o.cancel_reason, o.closed_at = "cancelled", "self_trade_prevented", txn.at


def _validate(txn: _Txn, o: NewOrder, band: tuple[int, int], refused: dict[UUID, str]) -> None:
    acct = txn.accounts.get(o.account_id)
    if acct is None:
        raise not_found("account")
    if acct.status != "active":
        raise Conflict("trading.account_inactive", f"The trading account is {acct.status}.")
    why = refused.get(acct.organisation_id)
    if why == "dissolved":
        raise account_closed()
    if why is not None:
        raise staff_barred()
    if o.side not in ("buy", "sell"):
        raise Conflict("trading.side_invalid", "side is buy or sell")
    if not band[0] <= o.price_fen <= band[1]:
        raise price_out_of_band(o.price_fen, *band)
    if o.side == "buy" and acct.available_fen < o.quantity * o.price_fen:
        raise insufficient_funds(acct.available_fen, o.quantity * o.price_fen)


async def place(session: AsyncSession, product_key: str, orders: Sequence[NewOrder], *,
                actor: str, now: datetime | None = None, raise_first: bool = False
                ) -> list[Placed]:
    """Place ``orders`` (in this sequence, which is their time priority) in the book of one
    product, matching and settling each at once; one transaction, set-based writes.

    A refused order (wrong band, staff account, too few funds or credits, ...) changes
    nothing; with ``raise_first`` its error propagates (the caller's transaction rolls back),
    else it is reported in its :class:`Placed` and the others proceed.

    The registry's audit records of the batch are appended at its end, with the book's own,
    so the audit chain's global lock is held only for the tail of the transaction.
    """
    async with registry_credits.deferred_audit(session):
        return await _place(session, product_key, orders, actor=actor, now=now,
                            raise_first=raise_first)


async def _place(session: AsyncSession, product_key: str, orders: Sequence[NewOrder], *,
                 actor: str, now: datetime | None, raise_first: bool) -> list[Placed]:
    at = now or clock.now()
    rules = await service.market_rules(session)
    today = await service.require_session(session, rules, at)
    product = await _lock_book(session, product_key)
    _detach(session, [product])
    if product.status != "listed":
        raise Conflict("trading.product_halted", f"Product {product_key} is {product.status}.")
    band = service.price_band(product, today, rules.band_bps)
    buys = [o for o in orders if o.side == "buy"]
    sells = [o for o in orders if o.side == "sell"]
    resting: list[_Order] = []
    if buys:
        resting += await _crossing(session, product_key, today, "sell",
                                   max(o.price_fen for o in buys), sum(o.quantity for o in buys))
    if sells:
        resting += await _crossing(session, product_key, today, "buy",
                                   min(o.price_fen for o in sells),
                                   sum(o.quantity for o in sells))
    stale = await _stale(session, product_key, today)
    accounts = await _prelock(
        session, [o.account_id for o in orders] + [r.account_id for r in resting + stale])
    txn = _Txn(at=at, today=today, product=product, fee_bps=rules.fee_bps, accounts=accounts)
    # Art. 37: staff of the registry agency, operator and exchange may not trade; Art. 22/30:
    # an organisation the registry dissolved (owner gone) neither trades nor is traded with.
    refused = await registry_credits.trading_refusals(
        session, {a.organisation_id for a in accounts.values()})
    for o in stale:
        _release(txn, o, "expired")
    closed = {oid for oid, why in refused.items() if why == "dissolved"}
    if closed:  # its resting orders leave the book (a buy order's reservation returns)
        for o in resting:
            if o.owner_id in closed:
                _release(txn, o, "account_closed")
        resting = [o for o in resting if o.owner_id not in closed]
    await _settle_credits(session, txn)  # stale sells' credits are held again first
    sellers = {accounts[o.account_id].registry_account_id for o in orders
               if o.side == "sell" and o.account_id in accounts}
    if sellers:
        txn.held = await registry.held_quantities(session, sellers, _product_filter(product))
    book = _Book()
    for r in resting:
        book.add(r)
    ids = iter(await _ids(session, "trading_orders", len(orders)))
    placed: list[Placed] = []
    for new in orders:
        try:
            _validate(txn, new, band, refused)
            acct = txn.accounts[new.account_id]
            o = _Order(id=next(ids), product_key=product_key, account_id=new.account_id,
                       owner_id=acct.organisation_id, side=new.side, price_fen=new.price_fen,
                       quantity=new.quantity, filled=0, reserved_fen=0, lock_id=None,
                       state="open", cancel_reason=None, business_date=today, created_at=at,
                       closed_at=None)
            _one(txn, book, o)
        except DomainError as exc:
            if raise_first:
                raise
            placed.append(Placed(error=exc))
            continue
        placed.append(Placed(order=_out(o, [])))
    await _settle_credits(session, txn)
    trade_ids = await _write(session, txn)
    live_orders = {o.id: o for o in txn.new_orders}
    for p in placed:
        if p.order is not None:
            p.order.fills = [FillOut(trade_id=trade_ids[ix], price_fen=pr, quantity=q)
                             for ix, pr, q in txn.fills.get(p.order.id, [])]
            live = live_orders[p.order.id]
            p.order.filled, p.order.state = live.filled, live.state
            p.order.cancel_reason = live.cancel_reason
    await audit.append(session, actor=actor, action="trading.orders", entity="trading_product",
                       entity_id=product_key, now=at,
                       data={"orders": [p.order.id for p in placed if p.order],
                             "refused": [p.error.code for p in placed if p.error],
                             "trades": [trade_ids[i] for i in range(len(txn.trades))]})
    return placed


def _detach(session: AsyncSession, rows: Sequence[object]) -> None:
    """Rows changed in memory are written set-based by :func:`_write`, never one by one by
    the session's unit of work."""
    for r in rows:
        if r in session:
            session.expunge(r)


def _out(o: _Order | Order, fills: list[FillOut]) -> OrderOut:
    return OrderOut(id=o.id, product=o.product_key, side=o.side, price_fen=o.price_fen,
                    quantity=o.quantity, filled=o.filled, state=o.state,
                    cancel_reason=o.cancel_reason, business_date=o.business_date,
                    created_at=o.created_at, fills=fills)


async def _write(session: AsyncSession, txn: _Txn) -> list[int]:
    """Write the transaction's outcome, one statement per table; returns the trade ids."""
    if txn.new_orders:
        await _insert(session, _ORDERS, txn.new_orders, {
            "id": lambda o: o.id, "product_key": lambda o: o.product_key,
            "account_id": lambda o: o.account_id, "owner_id": lambda o: o.owner_id,
            "side": lambda o: o.side, "price_fen": lambda o: o.price_fen,
            "quantity": lambda o: o.quantity, "filled": lambda o: o.filled,
            "reserved_fen": lambda o: o.reserved_fen,
            "lock_id": lambda o: o.lock_id if o.state == "open" else None,
            "state": lambda o: o.state, "cancel_reason": lambda o: o.cancel_reason,
            "business_date": lambda o: o.business_date, "created_at": lambda o: o.created_at,
            "closed_at": lambda o: o.closed_at})
    new_ids = {o.id for o in txn.new_orders}
    touched = [o for o in txn.touched.values() if o.id not in new_ids]
    if touched:
        await session.execute(text("""
            UPDATE trading_orders o SET filled = u.filled, reserved_fen = u.reserved,
                   lock_id = u.lock_id, state = u.state, cancel_reason = u.reason,
                   closed_at = u.closed_at
            FROM unnest(CAST(:ids AS bigint[]), CAST(:filled AS bigint[]),
                        CAST(:reserved AS bigint[]), CAST(:locks AS uuid[]),
                        CAST(:states AS text[]), CAST(:reasons AS text[]),
                        CAST(:closed AS timestamptz[]))
                 AS u(id, filled, reserved, lock_id, state, reason, closed_at)
            WHERE o.id = ANY(CAST(:ids AS bigint[])) AND o.id = u.id"""), {
            "ids": [o.id for o in touched], "filled": [o.filled for o in touched],
            "reserved": [o.reserved_fen for o in touched],
            "locks": [o.lock_id if o.state == "open" else None for o in touched],
            "states": [o.state for o in touched], "reasons": [o.cancel_reason for o in touched],
            "closed": [o.closed_at for o in touched]})
    trade_ids: list[int] = []
    if txn.trades:
        trade_ids = await _ids(session, "trading_trades", len(txn.trades))
        for t, tid in zip(txn.trades, trade_ids, strict=True):
            t["id"] = tid
        await _insert(session, _TRADES, txn.trades, {
            c: itemgetter(c) for c in txn.trades[0]})
    if txn.entries:
        for e in txn.entries:
            ix = e["trade_id"]
            e["trade_id"] = trade_ids[ix] if isinstance(ix, int) else None
        await _insert(session, _ENTRIES, txn.entries, {
            c: itemgetter(c) for c in txn.entries[0]})
    p = txn.product
    if txn.trades:
        await session.execute(text(
            "UPDATE trading_products SET last_price_fen = :lp, last_trade_date = :ld, "
            "prev_close_fen = :pc WHERE key = :k"),
            {"lp": p.last_price_fen, "ld": p.last_trade_date, "pc": p.prev_close_fen,
             "k": p.key})
    changed = list(txn.accounts.values())
    if changed:
        await session.execute(text("""
            UPDATE trading_accounts a SET available_fen = u.av, locked_fen = u.lk
            FROM unnest(CAST(:ids AS uuid[]), CAST(:av AS bigint[]), CAST(:lk AS bigint[]))
                 AS u(id, av, lk)
            WHERE a.id = ANY(CAST(:ids AS uuid[])) AND a.id = u.id
              AND (a.available_fen, a.locked_fen) IS DISTINCT FROM (u.av, u.lk)
        """), {"ids": [a.id for a in changed], "av": [a.available_fen for a in changed],
               "lk": [a.locked_fen for a in changed]})
    await session.flush()
    return trade_ids


async def place_order(session: AsyncSession, organisation_id: UUID, product_key: str, side: str,
                      price_fen: int, quantity: int, *, actor: str,
                      now: datetime | None = None) -> OrderOut:
    """A trader's limit order (HTTP): refused orders raise and change nothing."""
    acct = await service.account_for_org(session, organisation_id)
    placed = await place(session, product_key,
                         [NewOrder(acct.id, side, price_fen, quantity)], actor=actor, now=now,
                         raise_first=True)
    assert placed[0].order is not None
    return placed[0].order


async def cancel_order(session: AsyncSession, organisation_id: UUID, order_id: int, *,
                       actor: str, now: datetime | None = None) -> OrderOut:
    """The owner cancels an open order (撤单): funds or credits are released."""
    at = now or clock.now()
    found = (await session.execute(
        select(Order.account_id, Order.product_key).where(Order.id == order_id)
    )).one_or_none()
    acct = await service.account_for_org(session, organisation_id)
    if found is None or found.account_id != acct.id:
        raise not_found("order")
    product = await _lock_book(session, found.product_key)
    _detach(session, [product])
    accounts = await _prelock(session, [acct.id])
    (o,) = await _orders(session, _ORDERS.c.id == order_id)
    if o.state != "open":
        raise wrong_state("order", o.state)
    txn = _Txn(at=at, today=clock.business_date(at), product=product, fee_bps=0,
               accounts=accounts)
    _release(txn, o, "cancelled_by_owner")
    await _settle_credits(session, txn)
    await _write(session, txn)
    await audit.append(session, actor=actor, action="trading.order_cancel",
                       entity="trading_order", entity_id=str(order_id), now=at)
    return _out(o, [])


async def cancel_all(session: AsyncSession, *, actor: str, reason: str = "cleared",
                     product_key: str | None = None, before: date | None = None,
                     now: datetime | None = None) -> int:
    """The exchange clears open orders (all, one product's, or those of days before
    ``before``: the end-of-day expiry of day orders); returns how many."""
    at = now or clock.now()
    keys = [product_key] if product_key else list((await session.execute(
        select(Order.product_key).where(Order.state == "open").distinct()
    )).scalars().all())
    # Every book, then every account, before the first audit record (the house lock order).
    books = {key: await _lock_book(session, key) for key in sorted(keys)}
    cond = [_ORDERS.c.product_key.in_(list(books)), _ORDERS.c.state == "open"]
    if before is not None:
        cond.append(_ORDERS.c.business_date < before)
    rows = await _orders(session, *cond)
    accounts = await _prelock(session, [o.account_id for o in rows])
    _detach(session, list(books.values()))
    for key, product in books.items():
        mine = [o for o in rows if o.product_key == key]
        if not mine:
            continue
        txn = _Txn(at=at, today=clock.business_date(at), product=product, fee_bps=0,
                   accounts=accounts)
        for o in mine:
            _release(txn, o, reason)
        await _settle_credits(session, txn)
        await _write(session, txn)
    n = len(rows)
    if n:
        await audit.append(session, actor=actor, action="trading.orders_clear",
                           entity="trading_product", entity_id=product_key or "*", now=at,
                           data={"orders": n, "reason": reason})
    return n


async def expire_stale(session: AsyncSession, *, actor: str = "system:trading",
                       now: datetime | None = None) -> int:
    """End of day: day orders of earlier business dates expire (当日有效)."""
    at = now or clock.now()
    return await cancel_all(session, actor=actor, reason="expired",
                            before=clock.business_date(at), now=at)


async def list_orders(session: AsyncSession, organisation_id: UUID, *, limit: int = 200
                      ) -> list[OrderOut]:
    acct = await service.account_for_org(session, organisation_id)
    rows = (await session.execute(
        select(Order).where(Order.account_id == acct.id).order_by(Order.id.desc()).limit(limit)
    )).scalars().all()
    return [_out(o, []) for o in rows]


async def depth(session: AsyncSession, key: str, *, levels: int = 5,
                now: datetime | None = None) -> dict[str, list[dict[str, int]]]:
    """The book's best price levels (aggregated, no identities)."""
    today = clock.business_date(now or clock.now())
    out: dict[str, list[dict[str, int]]] = {}
    for side, name, desc in (("buy", "bids", True), ("sell", "asks", False)):
        price = Order.price_fen.desc() if desc else Order.price_fen
        rows = (await session.execute(
            select(Order.price_fen, func.sum(Order.quantity - Order.filled), func.count())
            .where(Order.product_key == key, Order.side == side, Order.state == "open",
                   Order.business_date == today)
            .group_by(Order.price_fen).order_by(price).limit(levels)
        )).all()
        out[name] = [{"price_fen": p, "quantity": int(q), "orders": int(c)} for p, q, c in rows]
    return out

