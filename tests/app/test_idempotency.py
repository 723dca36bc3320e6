"""``Idempotency-Key``: a state-changing request runs at most once per caller and key.

Exercised over HTTP against a tiny app carrying the middleware and a real counter table, and
against the product app for the wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text

from app import clock, errors
from app.db import Database
from app.errors import Invalid
from app.idempotency import IdempotencyMiddleware, caller_scope, fingerprint, purge_expired
from app.runtime import Runtime

TOKEN_A = {"Authorization": "Bearer caller-a"}
TOKEN_B = {"Authorization": "Bearer caller-b"}


class CountIn(BaseModel):
    by: int = 1
    delay: float = 0.0


async def bump(db: Database, name: str, by: int) -> int:
    async with db.transaction() as session:
        return int((await session.execute(text(
            "INSERT INTO test_idem_counter (name, n) VALUES (:name, :by) "
            "ON CONFLICT (name) DO UPDATE SET n = test_idem_counter.n + :by RETURNING n"),
            {"name": name, "by": by})).scalar_one())


async def count(db: Database, name: str) -> int:
    async with db.transaction() as session:
        n = (await session.execute(text("SELECT n FROM test_idem_counter WHERE name = :name"),
                                   {"name": name})).scalar()
        return int(n or 0)


async def keys_of(db: Database, key: str) -> int:
    async with db.transaction() as session:
        return int((await session.execute(
            text("SELECT count(*) FROM idempotency_keys WHERE key = :k"), {"k": key})
        ).scalar_one())


@pytest.fixture(scope="module")
async def tiny(runtime: Runtime) -> FastAPI:
    async with runtime.db.transaction() as session:
        await session.execute(text(
            "CREATE TABLE IF NOT EXISTS test_idem_counter (name text PRIMARY KEY, n int NOT NULL)"
        ))
    app = FastAPI()
    errors.install(app)
    app.add_middleware(IdempotencyMiddleware)
    app.state.runtime = runtime

    @app.post("/count/{name}", status_code=201)
    async def count_route(name: str, body: CountIn) -> dict[str, object]:
        await asyncio.sleep(body.delay)
        return {"name": name, "n": await bump(runtime.db, name, body.by), "nonce": uuid4().hex}

    @app.post("/refuse/{name}")
    async def refuse(name: str) -> None:
        await bump(runtime.db, name, 1)
        raise Invalid("test.refused", f"refused {uuid4().hex}")

    @app.post("/crash/{name}")
    async def crash(name: str) -> None:
        await bump(runtime.db, name, 1)
        raise RuntimeError("boom")

    return app


@pytest.fixture
async def api(tiny: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tiny, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def key() -> str:
    return f"k-{uuid4()}"


async def test_repeat_replays_the_first_answer_byte_for_byte(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    name, k = uuid4().hex, key()
    first = await api.post(f"/count/{name}", json={"by": 5},
                           headers={**TOKEN_A, "Idempotency-Key": k})
    assert first.status_code == 201 and first.json()["n"] == 5
    assert "idempotent-replayed" not in first.headers
    again = await api.post(f"/count/{name}", json={"by": 5},
                           headers={**TOKEN_A, "Idempotency-Key": k})
    assert again.status_code == 201
    assert again.content == first.content  # the nonce proves it was not run again
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert await count(runtime.db, name) == 5


async def test_same_key_different_body_is_409_and_changes_nothing(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    name, k = uuid4().hex, key()
    await api.post(f"/count/{name}", json={"by": 1}, headers={**TOKEN_A, "Idempotency-Key": k})
    r = await api.post(f"/count/{name}", json={"by": 2},
                       headers={**TOKEN_A, "Idempotency-Key": k})
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "idempotency.key_reused"
    assert await count(runtime.db, name) == 1


async def test_two_callers_never_share_a_key(api: httpx.AsyncClient, runtime: Runtime) -> None:
    name, k = uuid4().hex, key()
    a = await api.post(f"/count/{name}", json={}, headers={**TOKEN_A, "Idempotency-Key": k})
    b = await api.post(f"/count/{name}", json={}, headers={**TOKEN_B, "Idempotency-Key": k})
    c = await api.post(f"/count/{name}", json={},
                       headers={"X-Api-Key": "merchant-key", "Idempotency-Key": k})
    assert [a.json()["n"], b.json()["n"], c.json()["n"]] == [1, 2, 3]
    assert "idempotent-replayed" not in b.headers
    assert await count(runtime.db, name) == 3


async def test_without_a_key_every_request_runs(api: httpx.AsyncClient, runtime: Runtime) -> None:
    name = uuid4().hex
    for _ in range(2):
        assert (await api.post(f"/count/{name}", json={}, headers=TOKEN_A)).status_code == 201
    assert await count(runtime.db, name) == 2


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "键", "tab\there"])
async def test_invalid_key_is_400_and_runs_nothing(
    api: httpx.AsyncClient, runtime: Runtime, bad: str
) -> None:
    name = uuid4().hex
    r = await api.post(f"/count/{name}", json={},
                       headers=[(b"Authorization", b"Bearer a"),
                                (b"Idempotency-Key", bad.encode())])
    assert r.status_code == 400
    assert r.json()["code"] == "idempotency.key_invalid"
    assert await count(runtime.db, name) == 0


async def test_longest_valid_key_is_accepted(api: httpx.AsyncClient) -> None:
    r = await api.post(f"/count/{uuid4().hex}", json={},
                       headers={**TOKEN_A, "Idempotency-Key": "~" * 255})
    assert r.status_code == 201


async def test_concurrent_duplicates_run_once(api: httpx.AsyncClient, runtime: Runtime) -> None:
    name, k = uuid4().hex, key()
    headers = {**TOKEN_A, "Idempotency-Key": k}
    body = {"by": 1, "delay": 0.3}
    results = await asyncio.gather(*(api.post(f"/count/{name}", json=body, headers=headers)
                                     for _ in range(4)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201, 409, 409, 409]
    assert {r.json()["code"] for r in results if r.status_code == 409} == {
        "idempotency.in_progress"}
    assert await count(runtime.db, name) == 1
    winner = next(r for r in results if r.status_code == 201)
    replay = await api.post(f"/count/{name}", json=body, headers=headers)
    assert replay.content == winner.content and replay.headers["idempotent-replayed"] == "true"


async def test_client_errors_are_kept_and_replayed(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    name, k = uuid4().hex, key()
    headers = {**TOKEN_A, "Idempotency-Key": k}
    first = await api.post(f"/refuse/{name}", headers=headers)
    assert first.status_code == 422 and first.json()["code"] == "test.refused"
    again = await api.post(f"/refuse/{name}", headers=headers)
    assert again.status_code == 422 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(runtime.db, name) == 1


async def test_server_errors_free_the_key_for_a_retry(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    name, k = uuid4().hex, key()
    headers = {**TOKEN_A, "Idempotency-Key": k}
    for attempt in (1, 2):
        r = await api.post(f"/crash/{name}", headers=headers)
        assert r.status_code == 500
        assert await count(runtime.db, name) == attempt  # ran again: nothing was stored
        assert await keys_of(runtime.db, k) == 0


async def test_expired_keys_are_ignored_and_purged(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    name, k = uuid4().hex, key()
    headers = {**TOKEN_A, "Idempotency-Key": k}
    await api.post(f"/count/{name}", json={"by": 1}, headers=headers)
    later = clock.now() + timedelta(hours=24, minutes=1)
    clock.set_clock(lambda: later)
    try:
        r = await api.post(f"/count/{name}", json={"by": 2}, headers=headers)
        assert r.status_code == 201 and "idempotent-replayed" not in r.headers
        assert await count(runtime.db, name) == 3
        stale = key()
        await api.post(f"/count/{name}", json={}, headers={**TOKEN_A, "Idempotency-Key": stale})
    finally:
        clock.set_clock(None)
    assert await keys_of(runtime.db, stale) == 1
    async with runtime.db.transaction() as session:
        purged = await purge_expired(session, now=later + timedelta(hours=25))
    assert purged >= 2 and await keys_of(runtime.db, stale) == 0 and await keys_of(
        runtime.db, k) == 0


async def test_abandoned_in_progress_key_is_taken_over(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A claim left "in progress" by a process that died is taken over after its lease."""
    name, k = uuid4().hex, key()
    path, body = f"/count/{name}", b'{"by":1}'
    async with runtime.db.transaction() as session:
        await session.execute(text(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, created_at) "
            "VALUES (:s, :k, :f, 'in_progress', :at)"),
            {"s": caller_scope({b"authorization": b"Bearer caller-a"}, "POST", path), "k": k,
             "f": fingerprint(b"", body), "at": datetime.now(UTC) - timedelta(minutes=10)})
    r = await api.post(path, content=body, headers={**TOKEN_A, "Idempotency-Key": k,
                                                   "Content-Type": "application/json"})
    assert r.status_code == 201 and await count(runtime.db, name) == 1


async def test_product_app_checks_keys_and_leaves_reads_alone(client: httpx.AsyncClient) -> None:
    r = await client.post("/healthz", headers={"Idempotency-Key": "has space"})
    assert r.status_code == 400 and r.json()["code"] == "idempotency.key_invalid"
    assert "x-request-id" in r.headers  # inside the request-context middleware
    r = await client.get("/healthz", headers={"Idempotency-Key": "has space"})
    assert r.status_code == 200
