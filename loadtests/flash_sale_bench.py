"""``tanhui bench flash-sale``: N distinct citizens redeem one offer with a small stock at
once, over HTTP against a real server (uvicorn in a subprocess) on the configured database
and Redis.

It prepares an offer (labelled bench) and N citizens with enough points, starts the API,
fires the N redemption attempts from several client processes (raw HTTP/1.1 keep-alive
connections, bounded concurrency), then checks the outcome in the database: exactly
``stock`` vouchers, stock 0, no negative balance. The last line printed is one JSON object:
``{"attempts", "stock", "won", "sold_out", "errors", "attempts_per_s", "p50_ms", "p99_ms",
"negative_balances"}`` (plus a few detail fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Annotated, Any

import typer

from loadtests.server import free_port, wait_ready

BENCH_ACTOR = "system:bench"


# --- the client side (runs in spawned processes: keep its imports light) -----------------


async def _connection(host: str, port: int, path: str, tokens: list[str],
                      latencies: list[float], outcomes: Counter[str]) -> None:
    import orjson

    reader, writer = await asyncio.open_connection(host, port)
    try:
        while tokens:
            token = tokens.pop()
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            try:
                writer.write(request)
                status_line = await reader.readline()
                length, close = 0, False
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    lname = name.strip().lower()
                    if lname == b"content-length":
                        length = int(value)
                    elif lname == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
            except (OSError, asyncio.IncompleteReadError):
                outcomes["error:connection"] += 1
                latencies.append(time.perf_counter() - started)
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            if status == 201:
                outcomes["won"] += 1
            else:
                try:
                    code = orjson.loads(body).get("code", str(status))
                except orjson.JSONDecodeError:
                    code = str(status)
                outcomes[code if status == 409 else f"error:{status}:{code}"] += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def _client_process(host: str, port: int, path: str, tokens: list[str], connections: int,
                    start_at: float) -> tuple[list[float], dict[str, int], float, float]:
    """One load-generating process: ``connections`` keep-alive connections share ``tokens``."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> tuple[list[float], dict[str, int], float, float]:
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        await asyncio.gather(*[
            _connection(host, port, path, tokens, latencies, outcomes)
            for _ in range(connections)
        ])
        return latencies, dict(outcomes), began, time.time()

    return asyncio.run(main())


# --- preparation and checks (the parent process) -----------------------------------------


WARM_CITIZENS = 400
WARM_STOCK = 60


async def _prepare(runtime: Any, attempts: int, stock: int, price: int) -> tuple[Any, Any, list]:
    """The offer, a warm-up offer (its own citizens: warming up must not spend the points of
    the citizens measured), and ``attempts + WARM_CITIZENS`` citizens with enough points."""
    from datetime import date

    from app import clock
    from mall import service
    from mall.schemas import MerchantIn, OfferIn, StoreIn
    from points.service import CreditIn, credit_batch

    now = clock.now()
    async with runtime.db.transaction() as s:
        m = await service.create_merchant(
            s,
            MerchantIn(name="【压测】秒杀商户", name_en="[Bench] flash-sale merchant",
                       contact_name="bench", agreement_no=f"BENCH-{uuid.uuid4().hex[:12]}",
                       agreement_signed_on=date(2024, 9, 1)),
            actor=BENCH_ACTOR,
        )
        await service.add_store(s, m.id, StoreIn(name="压测门店", address="bench"),
                                actor=BENCH_ACTOR)
        offers = []
        for title, units in (("【压测】秒杀券", stock), ("【压测】预热券", WARM_STOCK)):
            o = await service.create_offer(
                s,
                OfferIn(merchant_id=m.id, title_zh=title, title_en="[Bench] coupon",
                        category="other", price_points=price, stock_total=units,
                        limit_per_citizen=1, sale_starts_at=now - timedelta(minutes=1),
                        voucher_validity_s=3600),
                actor=BENCH_ACTOR,
            )
            await service.set_offer_status(s, o.id, "on_sale", actor=BENCH_ACTOR)
            offers.append(o.id)
    citizens = [uuid.uuid4() for _ in range(attempts + WARM_CITIZENS)]
    scene, rule_r, rule_c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for i in range(0, len(citizens), 5000):
        async with runtime.db.transaction() as s:
            await credit_batch(s, [
                CreditIn(citizen_id=c, scene_id=scene, event_id=f"bench-{c.hex}",
                         behaviour="bench", occurred_at=now - timedelta(hours=1),
                         grams=(price + 10) * 10, grams_per_point=10,
                         reduction_rule_version_id=rule_r, conversion_rule_version_id=rule_c)
                for c in citizens[i : i + 5000]
            ])
    return offers[0], offers[1], citizens


async def _check(runtime: Any, offer_id: Any, citizens: list) -> dict[str, int]:
    from sqlalchemy import text

    from mall import flows, service

    async with runtime.db.session() as s:
        o = await service.get_offer(s, offer_id)
        counts = await service.count_live(s, offer_id)
        # Read-only look at the ledger's balance rows: any negative balance at all?
        negative = await s.scalar(
            text("SELECT count(*) FROM points_accounts WHERE citizen_id = ANY(:c) "
                 "AND (available < 0 OR held < 0)"),
            {"c": citizens},
        )
        holding = await s.scalar(
            text("SELECT count(*) FROM points_accounts WHERE citizen_id = ANY(:c) AND held > 0"),
            {"c": citizens},
        )
    gate = await runtime.redis.get(flows.gate_key(runtime, offer_id))
    return {"stock_left": o.stock_left, "vouchers": sum(counts.values()),
            "negative_balances": int(negative or 0), "citizens_holding": int(holding or 0),
            "gate": int(gate) if gate is not None else -1}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def command(
    attempts: Annotated[int, typer.Option(help="redemption attempts, one citizen each")] = 10_000,
    stock: Annotated[int, typer.Option(help="units of the offer")] = 100,
    price: Annotated[int, typer.Option(help="points per unit")] = 20,
    concurrency: Annotated[int, typer.Option(help="connections in flight, in total")] = 16,
    clients: Annotated[int, typer.Option(help="load-generating processes")] = 2,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
) -> None:
    """Flash sale: N citizens at once for a small stock; exact counts, redemptions/s, p50/p99."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from app.cli import run_with_runtime
    from app.settings import get_settings

    console = Console(stderr=True)
    settings = get_settings()
    if settings.embedded:
        console.print("[yellow]embedded mode: set TANHUI_DATABASE_URL and TANHUI_REDIS_URL "
                      "for figures that mean something[/yellow]")

    async def prepare(rt: Any) -> tuple[Any, Any, list, list[str]]:
        from app.auth.tokens import issue_access_token
        from app.migrations import check_current

        await check_current(rt.db)
        offer, warm, citizens = await _prepare(rt, attempts, stock, price)
        tokens = [issue_access_token("citizen", c, ttl_s=3600) for c in citizens]
        return offer, warm, citizens, tokens

    t0 = time.perf_counter()
    offer_id, warm_id, citizens, tokens = run_with_runtime(prepare)
    console.print(f"prepared {attempts} citizens and an offer of {stock} in "
                  f"{time.perf_counter() - t0:.1f} s")

    port = free_port()
    env = {**os.environ, "TANHUI_RUN_WORKER": "0", "TANHUI_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning", "--backlog", "4096"],
        env=env,
    )
    try:
        wait_ready(port, server)
        per_client = max(1, concurrency // clients)
        with ProcessPoolExecutor(max_workers=clients) as pool:
            # Warm-up on a separate offer with separate citizens: every worker loads its code
            # paths and opens its database and Redis connections, winners and losers alike.
            warm_path = f"/v1/me/mall/offers/{warm_id}/redeem"
            warm_tokens = tokens[attempts:]
            tokens = tokens[:attempts]
            warm = [pool.submit(_client_process, "127.0.0.1", port, warm_path,
                                warm_tokens[i::clients], per_client, time.time() + 0.5)
                    for i in range(clients)]
            for f in warm:
                f.result()
            path = f"/v1/me/mall/offers/{offer_id}/redeem"
            start_at = time.time() + 1.0
            futures = [pool.submit(_client_process, "127.0.0.1", port, path, tokens[i::clients],
                                   per_client, start_at) for i in range(clients)]
            results = [f.result() for f in futures]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    latencies = sorted(x for r in results for x in r[0])
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r[1])
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    checked = run_with_runtime(lambda rt: _check(rt, offer_id, citizens[:attempts]))

    won, sold_out = outcomes.get("won", 0), outcomes.get("mall.sold_out", 0)
    errors = sum(n for k, n in outcomes.items() if k not in ("won", "mall.sold_out"))
    exact = (won == stock == checked["vouchers"] == checked["citizens_holding"]
             and checked["stock_left"] == 0 and sold_out == attempts - stock
             and checked["negative_balances"] == 0)
    figures = {
        "attempts": attempts, "stock": stock, "won": won, "sold_out": sold_out,
        "errors": errors, "attempts_per_s": round(attempts / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "negative_balances": checked["negative_balances"],
        "vouchers_in_db": checked["vouchers"], "stock_left": checked["stock_left"],
        "exact": exact, "elapsed_s": round(elapsed, 3), "concurrency": per_client * clients,
        "clients": clients, "workers": workers,
    }
    table = Table(title="flash sale")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, str(v))
    if errors:
        table.add_row("error kinds", ", ".join(f"{k}×{n}" for k, n in outcomes.items()
                                               if k not in ("won", "mall.sold_out")))
    Console().print(table)
    print(orjson.dumps(figures).decode(), flush=True)
    if not exact:
        raise typer.Exit(1)
