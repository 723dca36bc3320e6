"""The hash-chained, append-only audit log (Art. 17: records kept, tamper-evident)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from app import audit
from app.auth.principal import Principal
from app.auth.tokens import issue_access_token
from app.cli import cli
from app.runtime import Runtime


def admin_headers(*roles: str) -> dict[str, str]:
    token = issue_access_token("admin", uuid4(), roles=set(roles or {"operator_admin"}))
    return {"Authorization": f"Bearer {token}"}


async def _append(runtime: Runtime, entity_id: str, **data: object) -> int:
    async with runtime.db.transaction() as session:
        return await audit.append(session, actor="admin:test", action="test.write",
                                  entity="test_thing", entity_id=entity_id, data=data)


async def _row(runtime: Runtime, id_: int) -> dict[str, object]:
    async with runtime.db.transaction() as session:
        row = (await session.execute(text("SELECT * FROM audit_log WHERE id = :i"),
                                     {"i": id_})).mappings().one()
        return dict(row)


async def test_art17_appends_form_a_chain(runtime: Runtime) -> None:
    ref = uuid4().hex
    ids = [await _append(runtime, ref, n=i, amount_fen=100 * i, note="备注") for i in range(3)]
    assert ids == sorted(ids)
    rows = [await _row(runtime, i) for i in ids]
    assert rows[1]["prev_hash"] == rows[0]["hash"] and rows[2]["prev_hash"] == rows[1]["hash"]
    assert rows[2]["data"] == {"n": 2, "amount_fen": 200, "note": "备注"}
    assert len(rows[0]["hash"]) == 32  # type: ignore[arg-type]
    async with runtime.db.transaction() as session:
        assert await audit.verify_chain(session) == []


async def test_art17_rich_data_is_stored_as_json_and_still_verifies(runtime: Runtime) -> None:
    ref, subject = uuid4().hex, uuid4()
    data = {"subject": subject, "price": Decimal("12.50"), "day": date(2024, 10, 1),
            "at": datetime(2024, 10, 1, 8, 0, tzinfo=UTC), 7: "seven",
            "nested": {"b": 1, "a": [1.5]}}
    async with runtime.db.transaction() as session:
        id_ = await audit.append(session, actor="admin:test", action="test.rich",
                                 entity="test_thing", entity_id=ref, data=data)
    row = await _row(runtime, id_)
    assert row["data"] == {"subject": str(subject), "price": "12.50", "day": "2024-10-01",
                           "at": "2024-10-01T08:00:00+00:00", "7": "seven",
                           "nested": {"a": [1.5], "b": 1}}
    async with runtime.db.transaction() as session:
        assert await audit.verify_chain(session) == []


def test_actor_of_names_kind_and_id() -> None:
    pid = uuid4()
    assert audit.actor_of(Principal(kind="admin", id=pid)) == f"admin:{pid}"
    assert audit.actor_of(None) == "system"


@pytest.mark.parametrize("sql", [
    "UPDATE audit_log SET actor = 'mallory' WHERE id = :i",
    "DELETE FROM audit_log WHERE id = :i",
    "TRUNCATE audit_log",
])
async def test_art17_database_refuses_update_delete_truncate(runtime: Runtime, sql: str) -> None:
    id_ = await _append(runtime, uuid4().hex)
    before = await _row(runtime, id_)
    with pytest.raises(DBAPIError, match="append-only"):
        async with runtime.db.transaction() as session:
            await session.execute(text(sql), {"i": id_} if ":i" in sql else {})
    assert await _row(runtime, id_) == before


async def test_art17_concurrent_appends_keep_one_linear_chain(runtime: Runtime) -> None:
    """Appends in separate, overlapping transactions never fork the chain."""
    ref = uuid4().hex

    async def writer(i: int) -> int:
        async with runtime.db.transaction() as session:
            await session.execute(text("SELECT pg_sleep(0.01)"))
            return await audit.append(session, actor="admin:test", action="test.race",
                                      entity="test_thing", entity_id=ref, data={"i": i})

    ids = await asyncio.gather(*(writer(i) for i in range(12)))
    assert len(set(ids)) == 12
    async with runtime.db.transaction() as session:
        rows = (await session.execute(text(
            "SELECT id, prev_hash, hash, lag(hash) OVER (ORDER BY id) AS before "
            "FROM audit_log ORDER BY id"))).all()
        assert await audit.verify_chain(session) == []
    links = [bytes(r.prev_hash) for r in rows]
    assert len(links) == len(set(links)), "two rows extend the same head"
    assert all(r.before is None or bytes(r.before) == bytes(r.prev_hash) for r in rows)


async def test_art17_tampering_is_detected(runtime: Runtime) -> None:
    """Altering a row, re-hashing it, or removing it is found by verify_chain."""
    ref = uuid4().hex
    first, second, third = [await _append(runtime, ref, n=i) for i in range(3)]
    async with runtime.db.session() as session:
        # As superuser, bypass the append-only trigger inside transactions we roll back.
        tx = await session.begin()
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(
            text("UPDATE audit_log SET data = '{\"n\": 99}' WHERE id = :i"), {"i": second})
        assert await audit.verify_chain(session) == [second]
        await tx.rollback()

        tx = await session.begin()
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        row = (await session.execute(text("SELECT * FROM audit_log WHERE id = :i"),
                                     {"i": second})).one()
        forged = audit.compute_hash(
            bytes(row.prev_hash), id=row.id, at=row.at, actor=row.actor, action=row.action,
            entity=row.entity, entity_id=row.entity_id, data={"n": 99})
        await session.execute(
            text("UPDATE audit_log SET data = '{\"n\": 99}', hash = :h WHERE id = :i"),
            {"h": forged, "i": second})
        assert await audit.verify_chain(session) == [third]
        await tx.rollback()

        tx = await session.begin()
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": second})
        assert await audit.verify_chain(session) == [third]
        await tx.rollback()
    async with runtime.db.transaction() as session:
        assert await audit.verify_chain(session) == []
    assert first < second < third


async def test_art17_cli_verify_exits_nonzero_listing_tampered_rows(runtime: Runtime) -> None:
    id_ = await _append(runtime, uuid4().hex, n=1)
    runner = CliRunner()
    ok = await asyncio.to_thread(runner.invoke, cli, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    async with runtime.db.transaction() as session:
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = :i"),
                              {"i": id_})
    try:
        broken = await asyncio.to_thread(runner.invoke, cli, ["audit", "verify"])
        assert broken.exit_code == 1
        assert str(id_) in broken.stdout.split()
    finally:
        async with runtime.db.transaction() as session:
            await session.execute(text("SET LOCAL session_replication_role = replica"))
            await session.execute(text("UPDATE audit_log SET actor = 'admin:test' WHERE id = :i"),
                                  {"i": id_})
    async with runtime.db.transaction() as session:
        assert await audit.verify_chain(session) == []


async def test_admin_audit_api_is_cursor_paginated(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    ref = uuid4().hex
    ids = [await _append(runtime, ref, n=i) for i in range(5)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"entity": "test_thing", "entity_id": ref, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/admin/audit", params=params,
                             headers=admin_headers("auditor"))
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3
    item = body["items"][0]
    assert item["actor"] == "admin:test" and item["data"] == {"n": 0}
    assert len(item["hash"]) == 64


async def test_admin_audit_api_needs_audit_read(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/admin/audit")
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    r = await client.get("/v1/admin/audit", headers=admin_headers("vvb"))
    assert r.status_code == 403 and r.json()["code"] == "auth.permission_denied"
    r = await client.get("/v1/admin/audit", params={"cursor": "!!"},
                         headers=admin_headers())
    assert r.status_code == 422 and r.json()["code"] == "audit.cursor_invalid"
