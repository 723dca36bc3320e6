"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.deps import RuntimeDep
from app.errors import problem

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database, Redis and the bus are reachable")
async def readyz(runtime: RuntimeDep) -> Response:
    async def database() -> None:
        async with runtime.db.session() as s:
            await s.execute(text("SELECT 1"))

    checks = {"database": database(), "redis": runtime.redis.ping(), "bus": runtime.bus.ping()}
    results: dict[str, str] = {}
    for name, coro in checks.items():
        try:
            await asyncio.wait_for(coro, timeout=2)
            results[name] = "ok"
        except Exception as exc:  # any failure means not ready
            results[name] = f"down: {type(exc).__name__}"
    if all(v == "ok" for v in results.values()):
        return Response(
            content=orjson.dumps({"status": "ready", "checks": results}),
            media_type="application/json",
        )
    return problem(503, "service.not_ready", "Not ready", "A backing service is down.",
                   checks=results)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
