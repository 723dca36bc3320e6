"""Market data and disclosure (Art. 36: the exchange publishes trades and periodic market
reports): public trades without identities, daily bars, the monthly report in JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from trading.errors import Invalid
from trading.schemas import Bar, PublicTrade

__all__ = ["bars", "monthly_report", "public_trades", "report_csv"]


async def public_trades(session: AsyncSession, *, product: str | None = None,
                        day: date | None = None, before_id: int | None = None,
                        limit: int = 100) -> list[PublicTrade]:
    """Trades, newest first: product, method, price, quantity, time; never who traded."""
    rows = (await session.execute(text("""
        SELECT id, product_key AS product, method, price_fen, quantity, executed_at
        FROM trading_trades
        WHERE (CAST(:product AS text) IS NULL OR product_key = :product)
          AND (CAST(:day AS date) IS NULL OR business_date = :day)
          AND (CAST(:before AS bigint) IS NULL OR id < :before)
        ORDER BY id DESC LIMIT :limit"""),
        {"product": product, "day": day, "before": before_id, "limit": limit})).mappings().all()
    return [PublicTrade.model_validate(dict(r)) for r in rows]


async def bars(session: AsyncSession, product: str, start: date, end: date) -> list[Bar]:
    """Daily open, high, low, close, volume and turnover of the public bidding of a product."""
    if end < start or (end - start).days > 366:
        raise Invalid("trading.range_invalid", "Ask for at most one year, start before end.")
    rows = (await session.execute(text("""
        SELECT product_key AS product, business_date AS date,
               (array_agg(price_fen ORDER BY id))[1] AS open_fen,
               max(price_fen) AS high_fen, min(price_fen) AS low_fen,
               (array_agg(price_fen ORDER BY id DESC))[1] AS close_fen,
               sum(quantity) AS volume, sum(amount_fen) AS turnover_fen, count(*) AS trades
        FROM trading_trades
        WHERE method = 'bidding' AND product_key = :p AND business_date BETWEEN :a AND :b
        GROUP BY product_key, business_date ORDER BY business_date"""),
        {"p": product, "a": start, "b": end})).mappings().all()
    return [Bar.model_validate(dict(r)) for r in rows]


def _month_bounds(month: str) -> tuple[date, date]:
    try:
        y, m = (int(x) for x in month.split("-"))
        first = date(y, m, 1)
    except ValueError as exc:
        raise Invalid("trading.month_invalid", "A month reads YYYY-MM.") from exc
    nxt = date(y + (m == 12), m % 12 + 1, 1)
    return first, nxt


async def monthly_report(session: AsyncSession, month: str) -> dict[str, Any]:
    """The monthly market report (市场交易报告) per product and trading method: trades, volume,
    turnover, volume-weighted average price, open, high, low, close, trading days."""
    first, nxt = _month_bounds(month)
    rows = (await session.execute(text("""
        SELECT product_key AS product, method, count(*) AS trades,
               sum(quantity) AS volume, sum(amount_fen) AS turnover_fen,
               sum(amount_fen) / sum(quantity) AS vwap_fen,
               (array_agg(price_fen ORDER BY id))[1] AS open_fen,
               max(price_fen) AS high_fen, min(price_fen) AS low_fen,
               (array_agg(price_fen ORDER BY id DESC))[1] AS close_fen,
               count(DISTINCT business_date) AS trading_days, sum(fee_fen) AS fees_fen
        FROM trading_trades WHERE business_date >= :a AND business_date < :b
        GROUP BY product_key, method ORDER BY product_key, method"""),
        {"a": first, "b": nxt})).mappings().all()
    lines = [{k: int(v) if k not in ("product", "method") else v for k, v in r.items()}
             for r in rows]
    return {
        "month": f"{first:%Y-%m}",
        "generated_at": clock.now().isoformat(),
        "rows": lines,
        "totals": {
            "trades": sum(r["trades"] for r in lines),
            "volume": sum(r["volume"] for r in lines),
            "turnover_fen": sum(r["turnover_fen"] for r in lines),
        },
    }


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    cols = ["month", "product", "method", "trades", "volume", "turnover_fen", "vwap_fen",
            "open_fen", "high_fen", "low_fen", "close_fen", "trading_days", "fees_fen"]
    w = csv.DictWriter(out, fieldnames=cols)
    w.writeheader()
    for r in report["rows"]:
        w.writerow({"month": report["month"], **r})
    return out.getvalue()
