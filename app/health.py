"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from app.db import Database
from app.deps import RuntimeDep
from app.errors import problem

log = structlog.get_logger()

#: Each readiness check gets this long; they run concurrently, so /readyz answers within it.
CHECK_TIMEOUT_S = 2.0

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database, Redis and the bus are reachable")
async def readyz(request: Request, runtime: RuntimeDep) -> Response:
    async def database() -> None:
        async with runtime.db.session() as s:
            await s.execute(text("SELECT 1"))

    async def check(coro: Awaitable[object]) -> str:
        try:
            await asyncio.wait_for(coro, timeout=CHECK_TIMEOUT_S)
            return "ok"
        except Exception as exc:  # any failure means not ready
            return f"down: {type(exc).__name__}"

    names = ("database", "redis", "bus")
    outcomes = await asyncio.gather(
        check(database()), check(runtime.redis.ping()), check(runtime.bus.ping())
    )
    results = dict(zip(names, outcomes, strict=True))
    schema = getattr(request.app.state, "schema", "ok")
    if schema != "ok":
        results["schema"] = schema
    if all(v == "ok" for v in results.values()):
        return Response(
            content=orjson.dumps({"status": "ready", "checks": results}),
            media_type="application/json",
        )
    return problem(503, "service.not_ready", "Not ready", "A backing service is down.",
                   checks=results)


SchemaCheck = Callable[[Database], Awaitable[None]]


async def verify_schema(db: Database, check_current: SchemaCheck) -> str:
    """``ok`` at head; ``unverified`` if the database is unreachable; raises if it is behind."""
    from app.errors import _is_backend_down

    try:
        await asyncio.wait_for(check_current(db), timeout=CHECK_TIMEOUT_S * 1.5)
    except Exception as exc:
        if not _is_backend_down(exc):
            raise
        log.warning("database_unreachable_at_start", error=type(exc).__name__,
                    detail="serving not-ready until the database is back at the head revision")
        return "unverified"
    return "ok"


async def watch_schema(app: FastAPI, db: Database, check_current: SchemaCheck,
                       stop: asyncio.Event) -> None:
    """Retry the schema check until the database answers; then open (or keep closed) the gate."""
    from app.migrations import DatabaseBehind

    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        if stop.is_set():
            return
        try:
            app.state.schema = await verify_schema(db, check_current)
        except DatabaseBehind as exc:
            app.state.schema = "behind: run `tanhui migrate`"
            log.error("database_behind", detail=str(exc))
            return
        if app.state.schema == "ok":
            log.info("database_verified", detail="serving")
            return


class SchemaGate:
    """Until the database schema is verified at head, answer 503 to all but health checks."""

    OPEN = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            owner = scope.get("app")
            state = getattr(getattr(owner, "state", None), "schema", "ok")
            if state != "ok":
                response = problem(
                    503, "service.unavailable", "Service unavailable",
                    "The database is unreachable or not yet verified; retry later.",
                    headers={"Retry-After": "2"}, schema=state,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
