"""Composition root: ``create_app`` wires the kernel and every domain's routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI

from app import errors, health
from app.idempotency import IdempotencyMiddleware
from app.observability import RequestContextMiddleware, configure_logging
from app.runtime import Runtime, open_runtime, tune_gc
from app.settings import Settings, get_settings

log = structlog.get_logger()

BackgroundTask = Callable[[Runtime, asyncio.Event], Coroutine[Any, Any, None]]


def background_tasks(settings: Settings) -> list[BackgroundTask]:
    """Work that ``tanhui serve`` runs beside the API when ``TANHUI_RUN_WORKER`` is on."""
    if not settings.run_worker:
        return []
    from ingestion.worker import run_forever as run_points_worker
    from mall.jobs import run_voucher_expiry
    from points.jobs import run_scheduler as run_points_scheduler
    from scenes.service import run_link_change_trim

    return [run_points_worker, run_points_scheduler, run_voucher_expiry, run_link_change_trim]


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the ASGI app. Pass ``runtime`` to reuse services (tests); else it opens its own."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.migrations import check_current
        from scenes.lookup import link_cache

        own = runtime is None
        rt = runtime or await open_runtime(settings)
        link_cache.max_refs = settings.ingest_link_cache_refs
        if own:
            tune_gc()
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        watcher: asyncio.Task[None] | None = None
        try:
            # A database that is behind refuses the start; one that is down does not: the
            # process serves not-ready (503) until it is back and verified at head.
            app.state.schema = await health.verify_schema(rt.db, check_current)
            app.state.runtime = rt
            log.info("serving", **rt.describe())
            if app.state.schema != "ok":
                watcher = asyncio.create_task(
                    health.watch_schema(app, rt.db, check_current, stop), name="schema-watch")
            if own:
                tasks = [
                    asyncio.create_task(t(rt, stop), name=getattr(t, "__module__", "task"))
                    for t in background_tasks(settings)
                ]
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for t in tasks:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(t, timeout=10)
            if own:
                await rt.close()

    app = FastAPI(
        title="碳惠通 Tanhuitong API",
        version="0.1.0",
        summary="Chongqing carbon-inclusion platform, CQCER registry and trading",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(health.SchemaGate)
    app.add_middleware(IdempotencyMiddleware)  # inside the request context and body limit
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    _include_routers(app)
    return app


def _include_routers(application: FastAPI) -> None:
    import accounts.router
    import app.auth.router
    import app.calendar.router
    import app.console
    import ingestion.router
    import mall.router
    import offsets.router
    import points.router
    import registry.router
    import scenes.router
    import trading.router
    from app import audit, health

    # The ingestion routes first: a request is matched against the routes in this order, and
    # partner batches are most of the traffic (their paths overlap no other router's).
    for module in (ingestion.router, health, audit, app.auth.router, app.calendar.router,
                   app.console, scenes.router, points.router, mall.router,
                   registry.router, offsets.router, trading.router, accounts.router):
        application.include_router(module.router)
