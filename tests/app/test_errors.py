"""Every error is RFC 9457 problem+json with a stable code; faults reveal no internals."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from pydantic import BaseModel, Field

from app import errors
from app.errors import Conflict
from app.observability import RequestContextMiddleware


class Payload(BaseModel):
    name: str = Field(min_length=1)
    points: int = Field(gt=0)


def make_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/secret.py line 42")

    @app.post("/things")
    async def things(body: Payload) -> dict[str, str]:
        raise Conflict("things.taken", "That thing is taken.", thing=body.name)

    return app


async def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_unexpected_error_is_500_problem_without_internals_and_with_request_id() -> None:
    async with await _client() as c:
        r = await c.get("/boom", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "internal" and body["request_id"] == "req-123"
    assert "hunter2" not in r.text and "secret.py" not in r.text


async def test_validation_error_lists_each_field() -> None:
    async with await _client() as c:
        r = await c.post("/things", json={"name": "", "points": -1})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "request.invalid"
    assert {e["field"] for e in body["errors"]} == {"name", "points"}


async def test_domain_error_carries_its_code_and_extra_members() -> None:
    async with await _client() as c:
        r = await c.post("/things", json={"name": "x", "points": 1})
    assert r.status_code == 409
    assert r.json()["code"] == "things.taken" and r.json()["thing"] == "x"
    assert r.json()["type"].endswith("/things.taken")


async def test_wrong_method_and_oversized_body_are_problems() -> None:
    async with await _client() as c:
        r = await c.delete("/things")
        assert r.status_code == 405 and r.json()["code"] == "route.method_not_allowed"
        r = await c.post("/things", content=b"{" + b" " * 2048 + b"}",
                         headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "request.too_large"
