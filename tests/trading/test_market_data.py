"""Market data and disclosure (Art. 36): public trades without identities, daily bars, the
monthly report as JSON and CSV; and ``tanhui trading check``."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from app.runtime import Runtime
from tests.trading.factories import ensure_product, ok, trader

TANHUI = Path(sys.executable).parent / "tanhui"


async def test_art36_trades_bars_and_monthly_report(
        client: httpx.AsyncClient, runtime: Runtime, market: str,
        pin: Callable[..., datetime]) -> None:
    """Art. 36: the exchange discloses trades (no identities) and periodic market reports."""
    async with runtime.db.transaction() as s:
        key = await ensure_product(s, "ecological_sink", 2024, ref=3000)
        seller = await trader(s, credits=20, category="ecological_sink")
        buyer = await trader(s, funds=1_000_000)

    async def trade(price: int, qty: int) -> None:
        ok(await client.post("/v1/trading/orders", headers=seller.headers,
                             json={"product": key, "side": "sell", "price_fen": price,
                                   "quantity": qty}), 201)
        ok(await client.post("/v1/trading/orders", headers=buyer.headers,
                             json={"product": key, "side": "buy", "price_fen": price,
                                   "quantity": qty}), 201)

    pin("2025-08-05", "10:00")
    await trade(3000, 2)
    pin("2025-08-05", "13:30")
    await trade(3200, 1)
    await trade(2900, 3)
    pin("2025-08-06", "10:00")
    await trade(3100, 4)
    bars = ok(await client.get(f"/public/trading/products/{key}/bars",
                               params={"start": "2025-08-01", "end": "2025-08-31"}))
    assert [(b["date"], b["open_fen"], b["high_fen"], b["low_fen"], b["close_fen"], b["volume"],
             b["trades"]) for b in bars] == [
        ("2025-08-05", 3000, 3200, 2900, 2900, 6, 3), ("2025-08-06", 3100, 3100, 3100, 3100, 4,
                                                       1)]
    assert bars[0]["turnover_fen"] == 2 * 3000 + 3200 + 3 * 2900
    trades = ok(await client.get("/public/trading/trades",
                                 params={"product": key, "day": "2025-08-05"}))
    assert [t["price_fen"] for t in trades] == [2900, 3200, 3000]
    for t in trades:
        assert not {"buyer_account_id", "seller_account_id", "buy_order_id"} & set(t)
    report = ok(await client.get("/public/trading/reports/2025-08"))
    row = next(r for r in report["rows"] if r["product"] == key)
    assert (row["trades"], row["volume"], row["open_fen"], row["close_fen"],
            row["trading_days"]) == (4, 10, 3000, 3100, 2)
    assert row["vwap_fen"] == (6000 + 3200 + 8700 + 12400) // 10
    r = await client.get("/public/trading/reports/2025-08", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert any(x["product"] == key and x["volume"] == "10" for x in rows)
    r = await client.get("/public/trading/reports/2025-13")
    assert r.json()["code"] == "trading.month_invalid"


async def test_trading_check_command_reports_conservation(runtime: Runtime, market: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(TANHUI), "trading", "check", env={**os.environ},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (out + err).decode()
    assert "funds conserved" in out.decode()
