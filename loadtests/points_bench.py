"""``tanhui bench points``: the ledger's throughput against raw PostgreSQL, in one run.

On the configured database, in a scratch schema holding clones of the ledger's tables (same
columns, constraints, indexes, foreign keys and the immutability trigger; dropped at the end):

1. ``credit_batch`` rows/s into a ledger already holding ``--prefill`` entries (batches of
   ``--batch`` over ``--rows`` events spread over
   ``--citizens`` citizens, one transaction per batch, as the points worker does) against a
   raw ``COPY`` of the same rows, in batches of the same size, into an unindexed table;
2. ``expire_due`` over ``--lots`` due lots (set up with ``INSERT ... SELECT generate_series``)
   against a raw set-based ``UPDATE`` of the same rows in an identical table;
3. statement page latency (p50/p99) for one account with ``--entries`` entries, random
   cursors across its whole history.

Prints a table, then as its last line one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import random
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

TABLES = ("points_accounts", "points_entries", "points_lots", "points_holds",
          "points_hold_allocations")
NOW = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)


async def _clone_schema(conn: Any, dst: str) -> str:
    """Create schema ``dst`` with clones of the ledger's tables; returns the source schema."""
    src = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = 'points_entries' AND pg_table_is_visible(c.oid)"
    )
    if src is None:
        raise typer.BadParameter("the points tables are missing: run `tanhui migrate` first")
    await conn.execute(f'CREATE SCHEMA "{dst}"')
    # Definitions printed with only the source schema visible come out unqualified ...
    await conn.execute(f'SET search_path TO "{src}"')
    extras: list[str] = []
    for table in TABLES:
        extras += [
            f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
            for name, definition in await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = $1::regclass AND contype = 'f'", table)
        ]
        # (a trigger's definition always names its table's schema)
        extras += [r[0].replace(f" ON {src}.", " ON ").replace(f' ON "{src}".', " ON ")
                   for r in await conn.fetch(
                       "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                       " WHERE tgrelid = $1::regclass AND NOT tgisinternal", table)]
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table)
        if options:
            extras.append(f"ALTER TABLE {table} SET ({', '.join(options)})")
    # ... and run with the scratch schema first, so they name the clones.
    await conn.execute(f'SET search_path TO "{dst}", "{src}"')
    for table in TABLES:
        await conn.execute(f'CREATE TABLE {table} (LIKE "{src}".{table} INCLUDING ALL)')
    for statement in extras:
        await conn.execute(statement)
    return src


def _credits(n: int, citizens: list[uuid.UUID], scene: uuid.UUID) -> list[Any]:
    from points.service import CreditIn

    rule_r, rule_c = uuid.uuid4(), uuid.uuid4()
    at = NOW - timedelta(days=1)
    rnd = random.Random(7)
    return [
        CreditIn(citizen_id=rnd.choice(citizens), scene_id=scene, event_id=f"bench-{i}",
                 behaviour="metro_ride", occurred_at=at + timedelta(milliseconds=i),
                 grams=rnd.randint(0, 3000), grams_per_point=1000,
                 reduction_rule_version_id=rule_r, conversion_rule_version_id=rule_c)
        for i in range(n)
    ]


async def _prefill(conn: Any, entries: int) -> None:
    """Fill the ledger with ``entries`` credit entries (and their lots) over the accounts
    there are, set-based, so the timed credits land in a ledger of realistic size."""
    at = NOW - timedelta(days=2)
    rule = uuid.uuid4()
    await conn.execute(
        "INSERT INTO points_entries (account_id, kind, points, created_at, scene_id,"
        " event_id, behaviour, occurred_at, grams, grams_per_point,"
        " reduction_rule_version_id, conversion_rule_version_id)"
        " SELECT a.ids[1 + g % array_length(a.ids, 1)], 'credit', 1, $2, $3,"
        " md5(g::text), 'metro_ride', $2, 1000, 1000, $4, $4"
        " FROM generate_series(1, $1) AS g,"
        " (SELECT array_agg(id) AS ids FROM points_accounts) AS a",
        entries, at, uuid.uuid4(), rule)
    await conn.execute(
        "INSERT INTO points_lots (account_id, id, points, remaining, credited_at,"
        " expires_at) SELECT account_id, id, 1, 1, $1, $2 FROM points_entries"
        " WHERE created_at = $1", at, at + timedelta(days=5 * 365))
    await conn.execute(
        "UPDATE points_accounts a SET available = a.available + l.s FROM"
        " (SELECT account_id, sum(remaining) AS s FROM points_lots WHERE credited_at = $1"
        "  GROUP BY account_id) l WHERE a.id = l.account_id", at)
    for table in ("points_entries", "points_lots", "points_accounts"):
        await conn.execute(f"VACUUM ANALYZE {table}")


async def _bench_credit(conn: Any, sessions: Any, rows: int, batch: int, citizens: int,
                        prefill: int) -> dict[str, float]:
    from points import service

    people = [uuid.uuid4() for _ in range(citizens)]
    scene = uuid.uuid4()
    warm = _credits(batch, people, uuid.uuid4())  # creates most accounts, warms caches
    async with sessions() as s, s.begin():
        await service.credit_batch(s, warm, now=NOW)
    if prefill:
        await _prefill(conn, prefill)
    credits = _credits(rows, people, scene)
    started = time.perf_counter()
    times = []
    for i in range(0, rows, batch):
        t0 = time.perf_counter()
        async with sessions() as s, s.begin():
            await service.credit_batch(s, credits[i:i + batch], now=NOW)
        times.append(time.perf_counter() - t0)
    credit_s = time.perf_counter() - started
    tenth = max(1, len(times) // 10)

    records = [(c.citizen_id, c.scene_id, c.event_id, c.behaviour, c.occurred_at, c.grams,
                c.grams_per_point, c.reduction_rule_version_id, c.conversion_rule_version_id)
               for c in credits]
    columns = ["citizen_id", "scene_id", "event_id", "behaviour", "occurred_at", "grams",
               "grams_per_point", "reduction_rule_version_id", "conversion_rule_version_id"]
    async with sessions() as s, s.begin():
        raw = await (await s.connection()).get_raw_connection()
        await raw.driver_connection.execute(
            "CREATE TABLE raw_credits (citizen_id uuid, scene_id uuid, event_id text,"
            " behaviour text, occurred_at timestamptz, grams int8, grams_per_point int4,"
            " reduction_rule_version_id uuid, conversion_rule_version_id uuid)")
    started = time.perf_counter()
    for i in range(0, rows, batch):
        async with sessions() as s, s.begin():
            raw = await (await s.connection()).get_raw_connection()
            await raw.driver_connection.copy_records_to_table(
                "raw_credits", records=records[i:i + batch], columns=columns)
    copy_s = time.perf_counter() - started
    return {"credit_rows_per_s": rows / credit_s, "copy_rows_per_s": rows / copy_s,
            # the first and the last tenth of the batches: a ledger-size dependence shows
            "credit_first_ms": 1000 * statistics.mean(times[:tenth]),
            "credit_last_ms": 1000 * statistics.mean(times[-tenth:])}


async def _bench_expiry(conn: Any, sessions: Any, lots: int, accounts: int) -> dict[str, float]:
    from points import service

    credited = NOW - timedelta(days=5 * 365)
    expires = NOW - timedelta(hours=1)
    await conn.execute(
        "INSERT INTO points_accounts (id, citizen_id, available)"
        " SELECT gen_random_uuid(), gen_random_uuid(), 0 FROM generate_series(1, $1)", accounts)
    await conn.execute(
        "INSERT INTO points_lots (account_id, id, points, remaining, credited_at,"
        " expires_at)"
        " SELECT a.ids[1 + g % array_length(a.ids, 1)], g, 1 + g % 7, 1 + g % 7, $2, $3"
        " FROM generate_series(1, $1) AS g,"
        " (SELECT array_agg(id) AS ids FROM points_accounts) AS a", lots, credited, expires)
    await conn.execute(
        "UPDATE points_accounts a SET available = l.s FROM"
        " (SELECT account_id, sum(remaining) AS s FROM points_lots GROUP BY account_id) l"
        " WHERE a.id = l.account_id")
    await conn.execute("CREATE TABLE raw_lots (LIKE points_lots INCLUDING ALL)")
    await conn.execute("INSERT INTO raw_lots SELECT * FROM points_lots")
    for table in ("points_lots", "points_accounts", "raw_lots"):
        await conn.execute(f"VACUUM ANALYZE {table}")

    started = time.perf_counter()
    async with conn.transaction():
        updated = await conn.execute(
            "UPDATE raw_lots SET expired = expired + remaining, remaining = 0, expired_at = $1"
            " WHERE remaining > 0 AND expires_at <= $1", NOW)
    raw_s = time.perf_counter() - started
    started = time.perf_counter()
    async with sessions() as s, s.begin():
        done = await service.expire_due(s, now=NOW)
    expire_s = time.perf_counter() - started
    assert done == lots and updated == f"UPDATE {lots}", (done, updated)
    return {"expiry_s": expire_s, "raw_update_s": raw_s}


async def _bench_statement(sessions: Any, entries: int, samples: int,
                           page: int) -> dict[str, float]:
    from points import service
    from points.service import _encode_cursor

    citizen = uuid.uuid4()
    credits = _credits(entries, [citizen], uuid.uuid4())
    for i in range(0, entries, 5000):
        async with sessions() as s, s.begin():
            await service.credit_batch(s, credits[i:i + 5000], now=NOW)
    async with sessions() as s, s.begin():
        first = await service.statement(s, citizen, limit=1)
    top = first.items[0].id
    rnd = random.Random(11)
    cursors: list[str | None] = [None] + [
        _encode_cursor(top - rnd.randrange(max(1, entries - page))) for _ in range(samples - 1)]
    latencies = []
    for cursor in cursors:
        started = time.perf_counter()
        async with sessions() as s, s.begin():
            result = await service.statement(s, citizen, cursor=cursor, limit=page)
        latencies.append((time.perf_counter() - started) * 1000)
        assert result.items
    latencies.sort()
    return {
        "statement_p50_ms": statistics.median(latencies),
        "statement_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def command(
    rows: Annotated[int, typer.Option(help="events credited through credit_batch")] = 200_000,
    batch: Annotated[int, typer.Option(help="events per credit_batch call")] = 5_000,
    citizens: Annotated[int, typer.Option(help="distinct citizens of those events")] = 50_000,
    prefill: Annotated[int, typer.Option(
        help="credit entries already in the ledger before the timed credits")] = 1_000_000,
    lots: Annotated[int, typer.Option(help="due lots expired in one run")] = 1_000_000,
    lot_accounts: Annotated[int, typer.Option(help="accounts those lots belong to")] = 20_000,
    entries: Annotated[int, typer.Option(help="entries of the statement's account")] = 10_000,
    samples: Annotated[int, typer.Option(help="statement pages timed")] = 500,
    page: Annotated[int, typer.Option(help="entries per statement page")] = 50,
) -> None:
    """Points ledger: credit_batch vs COPY, expiry vs raw UPDATE, statement p50/p99."""
    import orjson
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from app.cli import run_with_runtime
    from app.db import asyncpg_url

    console = Console()
    schema = f"bench_points_{secrets.token_hex(4)}"

    async def go(runtime: Any) -> dict[str, Any]:
        from app.migrations import check_current

        await check_current(runtime.db)
        engine = runtime.db.engine
        async with engine.connect() as admin:
            conn = (await admin.get_raw_connection()).driver_connection
            bench_engine = None
            try:
                src = await _clone_schema(conn, schema)
                bench_engine = create_async_engine(
                    asyncpg_url(runtime.db.url), pool_size=2,
                    connect_args={"server_settings": {
                        "search_path": f'"{schema}", "{src}"', "timezone": "UTC"}},
                )
                sessions = async_sessionmaker(bench_engine, expire_on_commit=False)
                console.print(f"credit_batch: {rows:,} events in batches of {batch:,}"
                              f" into a ledger of {prefill:,} entries ...")
                figures = await _bench_credit(conn, sessions, rows, batch, citizens, prefill)
                console.print(f"expiry: {lots:,} due lots over {lot_accounts:,} accounts ...")
                figures |= await _bench_expiry(conn, sessions, lots, lot_accounts)
                console.print(f"statement: {samples} pages of {page} over {entries:,} ...")
                figures |= await _bench_statement(sessions, entries, samples, page)
            finally:
                if bench_engine is not None:
                    await bench_engine.dispose()
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.execute("RESET search_path")
        return figures

    f = run_with_runtime(go)
    result = {
        "credit_rows": rows,
        "batch": batch,
        "credit_rows_per_s": round(f["credit_rows_per_s"]),
        "copy_rows_per_s": round(f["copy_rows_per_s"]),
        "credit_vs_copy": round(f["copy_rows_per_s"] / f["credit_rows_per_s"], 2),
        "prefill": prefill,
        "credit_first_batches_ms": round(f["credit_first_ms"], 1),
        "credit_last_batches_ms": round(f["credit_last_ms"], 1),
        "expiry_lots": lots,
        "expiry_s": round(f["expiry_s"], 3),
        "raw_update_s": round(f["raw_update_s"], 3),
        "expiry_vs_update": round(f["expiry_s"] / f["raw_update_s"], 2),
        "statement_entries": entries,
        "statement_p50_ms": round(f["statement_p50_ms"], 2),
        "statement_p99_ms": round(f["statement_p99_ms"], 2),
    }
    table = Table("measure", "ledger", "raw baseline", "ratio", title="tanhui bench points")
    table.add_row("credit rows/s", f"{result['credit_rows_per_s']:,}",
                  f"{result['copy_rows_per_s']:,} (COPY)", f"{result['credit_vs_copy']}×")
    table.add_row(f"expire {lots:,} lots", f"{result['expiry_s']} s",
                  f"{result['raw_update_s']} s (UPDATE)", f"{result['expiry_vs_update']}×")
    table.add_row(f"statement p50 / p99 ({entries:,} entries)",
                  f"{result['statement_p50_ms']} / {result['statement_p99_ms']} ms", "", "")
    console.print(table)
    print(orjson.dumps(result).decode())
