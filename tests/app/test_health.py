"""The kernel answers health, readiness, and problems for unknown routes."""

from __future__ import annotations

import httpx


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "redis": "ok", "bus": "ok"}


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/no/such/route")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "route.not_found" and body["status"] == 404


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/healthz", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413
    assert r.json()["code"] == "request.too_large"


async def test_metrics_are_exposed(client: httpx.AsyncClient) -> None:

    r = await client.get("/metrics")
    assert r.status_code == 200 and b"tanhui_http_requests_total" in r.content
