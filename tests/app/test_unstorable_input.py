"""Values PostgreSQL cannot store are the request's fault: a 422 problem with a stable code,
never a 500, and the transaction leaves nothing behind. Other database faults keep their
answers (500 for a bug, 503 for a backend that is down)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text

from app import errors
from app.runtime import Runtime

PROBLEM = "application/problem+json"


class RowIn(BaseModel):
    name: str = ""
    n: int = 0
    tag: str = ""
    doc: str | None = None


@pytest.fixture(scope="module")
async def tiny(runtime: Runtime) -> FastAPI:
    async with runtime.db.transaction() as session:
        await session.execute(text(
            "CREATE TABLE IF NOT EXISTS test_unstorable "
            "(id text PRIMARY KEY, name text NOT NULL, n int NOT NULL, tag varchar(8) NOT NULL,"
            " doc jsonb)"
        ))
    app = FastAPI()
    errors.install(app)

    @app.post("/rows/{row_id}")
    async def insert(row_id: str, body: RowIn) -> dict[str, str]:
        async with runtime.db.transaction() as session:
            await session.execute(text(
                "INSERT INTO test_unstorable (id, name, n, tag, doc) "
                "VALUES (:id, 'first', 0, '', NULL)"), {"id": row_id})
            await session.execute(text(
                "UPDATE test_unstorable SET name = :name, n = :n, tag = :tag, "
                "doc = CAST(:doc AS jsonb) WHERE id = :id"),
                {"id": row_id, "name": body.name, "n": body.n, "tag": body.tag, "doc": body.doc})
        return {"id": row_id}

    @app.post("/raw")
    async def raw(body: RowIn) -> dict[str, str]:
        """The ledger's way: the asyncpg connection under the session, no SQLAlchemy."""
        async with runtime.db.transaction() as session:
            conn = await (await session.connection()).get_raw_connection()
            await conn.driver_connection.execute(  # type: ignore[union-attr]
                "SELECT $1::int, $2::text", body.n, body.name)
        return {"ok": "yes"}

    @app.post("/bug")
    async def bug() -> None:
        async with runtime.db.transaction() as session:
            await session.execute(text("SELECT 1 / 0"))

    return app


@pytest.fixture
async def api(tiny: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tiny, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _rows(runtime: Runtime, row_id: str) -> int:
    async with runtime.db.transaction() as session:
        return int((await session.execute(
            text("SELECT count(*) FROM test_unstorable WHERE id = :id"), {"id": row_id}
        )).scalar_one())


@pytest.mark.parametrize(("body", "code"), [
    ({"name": "碳\x00惠"}, "request.invalid_character"),
    ({"doc": '{"name": "碳\\u0000惠"}'}, "request.invalid_character"),
    ({"n": 2**31}, "request.out_of_range"),
    ({"n": -(2**63) - 1}, "request.out_of_range"),
    ({"tag": "x" * 9}, "request.too_long"),
])
async def test_unstorable_value_is_a_422_problem_and_leaves_no_row(
    api: httpx.AsyncClient, runtime: Runtime, body: dict[str, object], code: str
) -> None:
    row_id = uuid4().hex
    r = await api.post(f"/rows/{row_id}", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == code and r.json()["status"] == 422
    assert await _rows(runtime, row_id) == 0


@pytest.mark.parametrize(("body", "code"), [
    ({"name": "碳\x00惠"}, "request.invalid_character"),
    ({"n": 2**40}, "request.out_of_range"),
])
async def test_raw_driver_errors_are_mapped_too(
    api: httpx.AsyncClient, body: dict[str, object], code: str
) -> None:
    r = await api.post("/raw", json=body)
    assert (r.status_code, r.json()["code"]) == (422, code), r.text
    assert (await api.post("/raw", json={"name": "ok", "n": 1})).status_code == 200


async def test_storable_value_is_stored(api: httpx.AsyncClient, runtime: Runtime) -> None:
    row_id = uuid4().hex
    r = await api.post(f"/rows/{row_id}", json={"name": "碳惠通", "n": 2**31 - 1, "tag": "x" * 8})
    assert r.status_code == 200, r.text
    assert await _rows(runtime, row_id) == 1


async def test_other_database_errors_stay_500(api: httpx.AsyncClient) -> None:
    """A fault of the server's own SQL (division by zero) is not blamed on the request."""
    r = await api.post("/bug")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "internal"
