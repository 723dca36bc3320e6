"""Trading accounts and funds: opened and funded by the exchange, identities encrypted,
every bad input refused with a stable code and nothing changed."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select, text

from app.runtime import Runtime
from tests.registry.factories import org
from tests.trading.factories import admin, exchange, ok, refused
from trading.models import FundEntry, TradingAccount


async def _counts(runtime: Runtime) -> tuple[int, int, int]:
    async with runtime.db.transaction() as s:
        accounts = (await s.execute(select(func.count()).select_from(TradingAccount))).scalar_one()
        entries = (await s.execute(select(func.count()).select_from(FundEntry))).scalar_one()
        audit = (await s.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    return accounts, entries, audit


async def test_exchange_opens_funds_and_pays_out_an_account(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        holder = await org(s, kind="trader")
    acct = ok(await client.post("/v1/admin/trading/accounts",
                                json={"organisation_id": str(holder.id)}, headers=exchange()), 201)
    assert acct["registry_account_id"] == str(holder.account_id)
    assert (acct["available_fen"], acct["locked_fen"]) == (0, 0)
    base = f"/v1/admin/trading/accounts/{acct['id']}"
    after = ok(await client.post(f"{base}/deposits", json={"amount_fen": 1_000_000,
                                                           "bank_reference": "ICBC-20250910-1"},
                                 headers=exchange()), 201)
    assert after["available_fen"] == 1_000_000
    after = ok(await client.post(f"{base}/withdrawals", json={"amount_fen": 250_000,
                                                              "bank_reference": "ICBC-OUT-1"},
                                 headers=exchange()), 201)
    assert after["available_fen"] == 750_000
    statement = ok(await client.get(f"{base}/statement", headers=exchange()))
    assert [(e["kind"], e["available_delta"], e["bank_reference"]) for e in statement] == [
        ("withdrawal", -250_000, "ICBC-OUT-1"), ("deposit", 1_000_000, "ICBC-20250910-1")]
    mine = ok(await client.get("/v1/trading/account",
                               headers=_org_headers(holder.id)))
    assert mine["available_fen"] == 750_000
    async with runtime.db.transaction() as s:
        logged = (await s.execute(text(
            "SELECT action FROM audit_log WHERE entity_id = :a ORDER BY id"),
            {"a": acct["id"]})).scalars().all()
    assert logged == ["trading.account_open", "trading.deposit", "trading.withdrawal"]
    check = ok(await client.get("/v1/admin/trading/check", headers=exchange()))
    assert check["ok"] is True


def _org_headers(org_id: Any) -> dict[str, str]:
    from tests.trading.factories import as_org

    return as_org(org_id)


async def test_bad_funds_requests_change_nothing(client: httpx.AsyncClient, runtime: Runtime,
                                                 market: str) -> None:
    async with runtime.db.transaction() as s:
        holder = await org(s, kind="trader")
    acct = ok(await client.post("/v1/admin/trading/accounts",
                                json={"organisation_id": str(holder.id)}, headers=exchange()), 201)
    base = f"/v1/admin/trading/accounts/{acct['id']}"
    ok(await client.post(f"{base}/deposits", json={"amount_fen": 5000, "bank_reference": "REF-A1"},
                         headers=exchange()), 201)
    before = await _counts(runtime)
    # wrong role: the bureau cannot enter funds; a trader's token cannot either
    refused(await client.post(f"{base}/deposits", json={"amount_fen": 1, "bank_reference": "R-B1"},
                              headers=admin("bureau")), "auth.permission_denied", 403)
    refused(await client.post(f"{base}/deposits", json={"amount_fen": 1, "bank_reference": "R-B2"},
                              headers=_org_headers(holder.id)), "auth.wrong_kind", 403)
    # more than available, a reused bank reference, a non-positive amount, an unknown account
    body = refused(await client.post(f"{base}/withdrawals",
                                     json={"amount_fen": 5001, "bank_reference": "OUT-X1"},
                                     headers=exchange()), "trading.insufficient_funds", 409)
    assert body["available"] == 5000
    reused = {"amount_fen": 7, "bank_reference": "REF-A1"}
    refused(await client.post(f"{base}/deposits", json=reused, headers=exchange()),
            "trading.bank_reference_used", 409)
    refused(await client.post(f"{base}/deposits", json={"amount_fen": 0, "bank_reference": "R-C1"},
                              headers=exchange()), "request.invalid", 422)
    refused(await client.post("/v1/admin/trading/accounts/00000000-0000-0000-0000-000000000000"
                              "/deposits", json={"amount_fen": 1, "bank_reference": "R-D1"},
                              headers=exchange()), "trading.account_not_found", 404)
    refused(await client.post("/v1/admin/trading/accounts",
                              json={"organisation_id": str(holder.id)}, headers=exchange()),
            "trading.account_exists", 409)
    assert await _counts(runtime) == before
    assert ok(await client.get(base, headers=exchange()))["available_fen"] == 5000


async def test_a_persons_identity_is_encrypted_and_unique(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        person = await org(s, kind="individual")
        twin = await org(s, kind="individual")
    refused(await client.post("/v1/admin/trading/accounts",
                              json={"organisation_id": str(person.id)}, headers=exchange()),
            "trading.identity_required", 422)
    identity = {"legal_name": "李小龙", "id_number": "50010319900307123X",
                "phone": "13800138000"}
    acct = ok(await client.post("/v1/admin/trading/accounts",
                                json={"organisation_id": str(person.id), "identity": identity},
                                headers=exchange()), 201)
    assert acct["kind"] == "individual" and acct["display_name"] == "李**"
    async with runtime.db.transaction() as s:
        row = (await s.execute(text(
            "SELECT legal_name_enc, id_number_enc, phone_enc FROM trading_accounts WHERE id = :i"),
            {"i": acct["id"]})).one()
    for blob, plain in zip(row, ("李小龙", "50010319900307123X", "13800138000"), strict=True):
        assert plain.encode() not in bytes(blob)
    # one person, one trading account (blind index; the check digit's case does not matter)
    identity["id_number"] = "50010319900307123x"
    refused(await client.post("/v1/admin/trading/accounts",
                              json={"organisation_id": str(twin.id), "identity": identity},
                              headers=exchange()), "trading.identity_exists", 409)


async def test_art28_market_rules_are_configurable_by_the_exchange_only(
        client: httpx.AsyncClient, market: str) -> None:
    cfg = ok(await client.get("/v1/admin/trading/config", headers=exchange()))
    assert cfg["sessions"] == [["09:30", "11:30"], ["13:00", "15:00"]]
    new = {**cfg, "fee_bps": 30}
    refused(await client.put("/v1/admin/trading/config", json=new, headers=admin("bureau")),
            "auth.permission_denied", 403)
    refused(await client.put("/v1/admin/trading/config",
                             json={**cfg, "sessions": [["13:00", "11:30"]]}, headers=exchange()),
            "request.invalid", 422)
    assert ok(await client.put("/v1/admin/trading/config", json=new,
                               headers=exchange()))["fee_bps"] == 30
    ok(await client.put("/v1/admin/trading/config", json=cfg, headers=exchange()))
