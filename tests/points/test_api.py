"""The citizen's account API: /v1/me, points, lots, statement, holds, export, deletion."""

from __future__ import annotations

import random
from datetime import timedelta
from uuid import UUID, uuid4

import httpx
from fastapi import FastAPI

from app import clock
from app.auth.citizens import get_or_create_citizen
from app.auth.tokens import issue_access_token
from app.db import Database
from points import service
from tests.points.factories import (
    CONVERSION_RULE,
    REDUCTION_RULE,
    SCENE,
    assert_reconciled,
    counts,
    make_credit,
)


async def register(db: Database) -> UUID:
    phone = "139" + "".join(random.choices("0123456789", k=8))
    async with db.transaction() as s:
        return await get_or_create_citizen(s, phone)


def auth(citizen: UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_access_token('citizen', citizen)}"}


async def credit_points(db: Database, citizen: UUID, *points: int) -> None:
    async with db.transaction() as s:
        await service.credit_batch(s, [
            make_credit(citizen, p * 100, gpp=100,
                        occurred_at=clock.now() - timedelta(minutes=len(points) - i))
            for i, p in enumerate(points)
        ])


async def test_me_and_points(client: httpx.AsyncClient, db: Database) -> None:
    citizen = await register(db)
    r = await client.get("/v1/me/points", headers=auth(citizen))
    assert r.status_code == 200 and r.json() == {"available": 0, "held": 0, "expiring_30d": 0}
    await credit_points(db, citizen, 12, 30)
    r = await client.get("/v1/me", headers=auth(citizen))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == str(citizen) and body["phone_masked"].startswith("139")
    assert body["points"] == {"available": 42, "held": 0, "expiring_30d": 0}
    r = await client.get("/v1/me/points/lots", headers=auth(citizen))
    lots = r.json()["items"]
    assert [lot["remaining"] for lot in lots] == [12, 30]
    assert all(lot["expires_at"] > lot["credited_at"] for lot in lots)


async def test_routes_need_a_citizen_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/me/points")
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    admin = issue_access_token("admin", uuid4(), roles={"operator_admin"})
    r = await client.get("/v1/me/points", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 403


async def test_statement_pages_newest_first_and_traces_every_credit(
    client: httpx.AsyncClient, db: Database
) -> None:
    citizen = await register(db)
    await credit_points(db, citizen, *range(1, 8))
    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/me/points/statement", params=params, headers=auth(citizen))
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["points"] for e in seen] == [7, 6, 5, 4, 3, 2, 1]
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids, reverse=True)
    for e in seen:
        src = e["source"]
        assert e["kind"] == "credit" and src["scene_id"] == str(SCENE) and src["event_id"]
        assert src["reduction_rule_version_id"] == str(REDUCTION_RULE)
        assert src["conversion_rule_version_id"] == str(CONVERSION_RULE)
        assert src["grams"] == e["points"] * 100 and src["grams_per_point"] == 100
    r = await client.get("/v1/me/points/statement", params={"cursor": "!!"},
                         headers=auth(citizen))
    assert r.status_code == 422 and r.json()["code"] == "points.cursor_invalid"


async def test_hold_bad_input_is_a_problem_and_changes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    citizen, other = await register(db), await register(db)
    await credit_points(db, citizen, 10)
    never_credited = await register(db)
    r = await client.post("/v1/me/points/holds", json={"points": 4, "reference": "counter"},
                          headers=auth(citizen))
    assert r.status_code == 201, r.text
    hold_id = r.json()["id"]
    before = await counts(db)
    cases = [
        ("post", "/v1/me/points/holds", {"points": 0, "reference": "x"}, citizen, 422,
         "points.amount_invalid"),
        ("post", "/v1/me/points/holds", {"points": -3, "reference": "x"}, citizen, 422,
         "points.amount_invalid"),
        ("post", "/v1/me/points/holds", {"points": 7, "reference": "x"}, citizen, 409,
         "points.insufficient"),
        ("post", "/v1/me/points/holds", {"points": 1, "reference": "x"}, never_credited, 404,
         "points.account_not_found"),
        ("post", f"/v1/me/points/holds/{hold_id}/release", None, other, 404,
         "points.hold_not_found"),
        ("get", f"/v1/me/points/holds/{hold_id}", None, other, 404, "points.hold_not_found"),
    ]
    for method, path, body, who, status, code in cases:
        r = await client.request(method, path, json=body, headers=auth(who))
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == code
    assert await counts(db) == before
    r = await client.post(f"/v1/me/points/holds/{hold_id}/release", headers=auth(citizen))
    assert r.status_code == 200 and r.json()["status"] == "released"
    before = await counts(db)
    r = await client.post(f"/v1/me/points/holds/{hold_id}/release", headers=auth(citizen))
    assert r.status_code == 409 and r.json()["code"] == "points.hold_not_active"
    assert await counts(db) == before
    await assert_reconciled(db, citizen)


async def test_export_holds_everything_about_the_citizen(
    client: httpx.AsyncClient, db: Database
) -> None:
    citizen = await register(db)
    await credit_points(db, citizen, 5, 6)
    r = await client.post("/v1/me/points/holds", json={"points": 2, "reference": "gift shop"},
                          headers=auth(citizen))
    assert r.status_code == 201
    r = await client.get("/v1/me/export", headers=auth(citizen))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["profile"]["id"] == str(citizen) and data["profile"]["phone"].startswith("139")
    assert isinstance(data["consents"], list)
    ledger = data["points"]
    assert ledger["account"]["available"] == 9 and ledger["account"]["held"] == 2
    assert [e["kind"] for e in ledger["entries"]] == ["credit", "credit", "hold"]
    assert len(ledger["lots"]) == 2 and len(ledger["holds"]) == 1
    assert ledger["hold_allocations"][0]["points"] == 2


async def test_delete_me_erases_pii_keeps_the_ledger_after_holds_are_settled(
    client: httpx.AsyncClient, db: Database
) -> None:
    citizen = await register(db)
    await credit_points(db, citizen, 8)
    r = await client.post("/v1/me/points/holds", json={"points": 3, "reference": "order"},
                          headers=auth(citizen))
    assert r.status_code == 201
    hold_id = r.json()["id"]
    # An open hold backs a redemption in progress: deletion waits until it is settled.
    r = await client.delete("/v1/me", headers=auth(citizen))
    assert r.status_code == 409 and r.json()["code"] == "account.open_redemptions"
    assert (await client.get("/v1/me", headers=auth(citizen))).json()["phone_masked"]
    r = await client.post(f"/v1/me/points/holds/{hold_id}/release", headers=auth(citizen))
    assert r.status_code == 200
    r = await client.delete("/v1/me", headers=auth(citizen))
    assert r.status_code == 200, r.text
    assert r.json() == {"erased": True, "consents_revoked": 0}
    r = await client.get("/v1/me", headers=auth(citizen))
    body = r.json()
    assert body["phone_masked"] is None and body["pseudonym"]
    assert body["points"] == {"available": 8, "held": 0, "expiring_30d": 0}
    async with db.transaction() as s:
        page = await service.statement(s, citizen)
    assert [e.kind for e in page.items] == ["release", "hold", "credit"]
    await assert_reconciled(db, citizen)


FORBIDDEN = ("transfer", "adjust", "debit", "deduct", "gift", "give", "send", "move",
             "grant", "withdraw", "sell", "trade", "price", "cash", "topup", "top-up",
             "set-balance", "correct")


def test_art34_api_has_no_route_that_moves_or_removes_points(app: FastAPI) -> None:
    """Art. 34: no endpoint transfers, adjusts or debits points; no admin or console route
    writes to points at all. The only way out is the citizen's own hold (then redemption)."""
    spec = app.openapi()
    offending = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            name = f"{path} {op.get('operationId', '')}".lower()
            words = f"{name} {op.get('summary', '')}".lower()
            about_points = "points" in name or "积分" in words
            if about_points and any(w in words for w in FORBIDDEN):
                offending.append((method, path))
            admin = path.startswith(("/v1/admin", "/console"))
            if about_points and admin and method in ("post", "put", "patch", "delete"):
                offending.append((method, path))
    assert offending == []
    mine = {(m, p) for p, ops in spec["paths"].items() for m in ops
            if p.startswith("/v1/me/points")}
    writes = {(m, p) for m, p in mine if m != "get"}
    assert writes == {("post", "/v1/me/points/holds"),
                      ("post", "/v1/me/points/holds/{hold_id}/release")}
