"""Faults of the backing services: a Redis or a database that is down (nothing listening) or
silent (accepting connections, never answering) makes ``/readyz`` fail and requests answer 503
problems quickly, never hang. A database that is down at start does not stop the process from
serving not-ready; one that is reachable but behind on migrations stops the start."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text

from app.bus.pgqueue import PgQueueBus
from app.db import Database
from app.deps import Db, RedisDep
from app.main import create_app
from app.migrations import DatabaseBehind, head_revision
from app.runtime import Runtime
from app.settings import get_settings
from tests.conftest import TEST_DB

PROBLEM = "application/problem+json"


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    port: int = 0,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read, never answer (a hung server or a black-holed network)."""
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass
    writer.close()


class PostgresProxy:
    """A TCP proxy to the shared PostgreSQL on ``port``: a database that can go away (with
    every open connection) and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        self._writers.discard(dst)


def db_url(port: int, name: str = TEST_DB) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


def broken(runtime: Runtime, *, db: Database | None = None,
           redis: Redis | None = None) -> Runtime:
    """The run's runtime with some of its parts replaced by broken ones."""
    return Runtime(settings=runtime.settings, db=db or runtime.db, redis=redis or runtime.redis,
                   bus=PgQueueBus(db, timeout_s=3) if db is not None else runtime.bus,
                   embedded=None)


def add_probes(app: FastAPI) -> None:
    """Two routes of this test only: one that needs Redis, one that needs the database."""

    async def needs_redis(redis: RedisDep) -> dict[str, str]:
        await redis.get("tanhui-fault-probe")
        return {"status": "ok"}

    async def needs_database(db: Db) -> dict[str, int]:
        async with db.transaction() as session:
            return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    app.add_api_route("/probe/redis", needs_redis, methods=["GET"])
    app.add_api_route("/probe/database", needs_database, methods=["GET"])


@asynccontextmanager
async def serving(rt: Runtime) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(get_settings(), runtime=rt)
    add_probes(app)
    async with LifespanManager(app, startup_timeout=20, shutdown_timeout=20):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = r.json()
    assert body["code"] == code and body["status"] == status
    return body


@pytest.mark.parametrize("how", ["down", "silent"])
async def test_redis_unreachable_makes_readyz_fail_and_requests_503(
    runtime: Runtime, how: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        port = closed_port() if how == "down" else await stack.enter_async_context(
            tcp_server(_silent))
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=2,
                               socket_connect_timeout=2)
        stack.push_async_callback(redis.aclose)
        _, client = await stack.enter_async_context(serving(broken(runtime, redis=redis)))

        r, took = await timed(client.get("/readyz"))
        body = assert_problem(r, 503, "service.not_ready")
        assert body["checks"] == {"database": "ok", "redis": body["checks"]["redis"],  # type: ignore[index]
                                  "bus": "ok"}
        assert str(body["checks"]["redis"]).startswith("down")  # type: ignore[index]
        assert took < 3

        r, took = await timed(client.get("/probe/redis"))
        assert_problem(r, 503, "service.unavailable")
        assert r.headers["retry-after"]
        assert took < 5

        # A real route that needs Redis (one-time codes live there) answers the same way.
        phone = "139" + str(secrets.randbelow(10**8)).zfill(8)
        r, took = await timed(client.post("/v1/auth/otp", json={"phone": phone}))
        assert_problem(r, 503, "service.unavailable")
        assert took < 8


@pytest.mark.parametrize("how", ["down", "silent"])
async def test_database_unreachable_at_start_serves_not_ready(
    runtime: Runtime, how: str
) -> None:
    """The process comes up (no crash loop), reports not ready, and refuses work with 503."""
    async with contextlib.AsyncExitStack() as stack:
        port = closed_port() if how == "down" else await stack.enter_async_context(
            tcp_server(_silent))
        dead = Database(db_url(port))
        stack.push_async_callback(dead.dispose)
        rt = broken(runtime, db=dead)
        stack.push_async_callback(rt.bus.stop)
        _, client = await stack.enter_async_context(serving(rt))

        r, took = await timed(client.get("/readyz"))
        body = assert_problem(r, 503, "service.not_ready")
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["redis"] == "ok" and checks["schema"] == "unverified"
        assert checks["database"].startswith("down") and checks["bus"].startswith("down")
        assert took < 3

        r = await client.get("/healthz")
        assert r.status_code == 200  # alive, only not ready

        for path in ("/probe/database", "/v1/auth/me"):
            r, took = await timed(client.get(path))
            assert_problem(r, 503, "service.unavailable")
            assert took < 1


async def test_database_down_after_start_gives_503_not_a_hang(runtime: Runtime) -> None:
    """Verified at start, then gone with its open connections: requests fail fast with a
    503 problem and ``/readyz`` says the database is down."""
    proxy = PostgresProxy(closed_port())
    await proxy.up()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(proxy.down)
        db = Database(db_url(proxy.port))
        stack.push_async_callback(db.dispose)
        rt = broken(runtime, db=db)
        stack.push_async_callback(rt.bus.stop)
        app, client = await stack.enter_async_context(serving(rt))
        assert app.state.schema == "ok"
        r = await client.get("/probe/database")
        assert r.status_code == 200 and r.json() == {"one": 1}
        assert (await client.get("/readyz")).status_code == 200

        await proxy.down()
        for _ in range(2):  # a pooled connection that broke, then a new one refused
            r, took = await timed(client.get("/probe/database"))
            assert_problem(r, 503, "service.unavailable")
            assert took < 3
        r, took = await timed(client.get("/readyz"))
        body = assert_problem(r, 503, "service.not_ready")
        assert str(body["checks"]["database"]).startswith("down")  # type: ignore[index]
        assert took < 3


async def test_database_back_after_start_turns_ready(runtime: Runtime) -> None:
    """Down at start, back later: the process verifies the schema and starts serving."""
    proxy = PostgresProxy(closed_port())
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(proxy.down)
        db = Database(db_url(proxy.port))
        stack.push_async_callback(db.dispose)
        rt = broken(runtime, db=db)
        stack.push_async_callback(rt.bus.stop)
        app, client = await stack.enter_async_context(serving(rt))
        assert app.state.schema == "unverified"
        assert (await client.get("/readyz")).status_code == 503

        await proxy.up()  # the database comes back
        for _ in range(100):  # the watcher retries every 2 s
            if app.state.schema == "ok":
                break
            await asyncio.sleep(0.1)
        assert app.state.schema == "ok"
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        r = await client.get("/probe/database")
        assert r.status_code == 200 and r.json() == {"one": 1}


async def test_database_behind_on_migrations_refuses_to_start(runtime: Runtime) -> None:
    """Reachable but behind: the start fails and says to run ``tanhui migrate``. (This run's
    own database is set back one revision for the duration of the test, then restored.)"""
    head = head_revision()
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    try:
        app = create_app(get_settings(), runtime=runtime)
        with pytest.raises(DatabaseBehind, match=r"revision 0003 .*`tanhui migrate`"):
            async with LifespanManager(app):
                pass
    finally:
        async with runtime.db.transaction() as session:
            await session.execute(text("UPDATE alembic_version SET version_num = :head"),
                                  {"head": head})
