"""Merchants (Art. 33) call with API keys, stored hashed and scoped to one merchant."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.auth import apikeys
from app.auth.models import ApiKey
from app.auth.tokens import issue_access_token
from app.runtime import Runtime

from .conftest import ClientFactory


@pytest.fixture
def machine(client_from: ClientFactory, machine_app: FastAPI) -> httpx.AsyncClient:
    return client_from(target=machine_app)


async def test_api_key_identifies_its_merchant_only(
    runtime: Runtime, machine: httpx.AsyncClient
) -> None:
    shop_a, shop_b = uuid.uuid4(), uuid.uuid4()
    async with runtime.db.transaction() as s:
        key_a_id, key_a = await apikeys.create_api_key(s, merchant_id=shop_a, label="收银台 1")
        _, key_b = await apikeys.create_api_key(s, merchant_id=shop_b, label="收银台 1")
    r = await machine.get("/merchant/me", headers={"X-Api-Key": key_a})
    assert r.status_code == 200
    assert r.json() == {"key": str(key_a_id), "merchant": str(shop_a), "kind": "merchant"}
    r = await machine.get("/merchant/me", headers={"X-Api-Key": key_b})
    assert r.json()["merchant"] == str(shop_b)


async def test_api_key_is_stored_hashed(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        key_id, key = await apikeys.create_api_key(s, merchant_id=uuid.uuid4(), label="pos")
    async with runtime.db.session() as s:
        row = (await s.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar_one()
    assert key.encode() not in bytes(row.key_hash) and key.split("_")[1] == row.prefix


async def test_missing_unknown_and_revoked_keys_are_401(
    runtime: Runtime, machine: httpx.AsyncClient
) -> None:
    r = await machine.get("/merchant/me")
    assert r.status_code == 401 and r.json()["code"] == "auth.api_key_invalid"
    r = await machine.get("/merchant/me", headers={"X-Api-Key": "thk_00000000_nope"})
    assert r.status_code == 401 and r.json()["code"] == "auth.api_key_invalid"
    async with runtime.db.transaction() as s:
        key_id, key = await apikeys.create_api_key(s, merchant_id=uuid.uuid4(), label="pos")
    assert (await machine.get("/merchant/me", headers={"X-Api-Key": key})).status_code == 200
    async with runtime.db.transaction() as s:
        await apikeys.revoke_api_key(s, key_id)
        await apikeys.revoke_api_key(s, key_id)  # twice is harmless
    r = await machine.get("/merchant/me", headers={"X-Api-Key": key})
    assert r.status_code == 401 and r.json()["code"] == "auth.api_key_invalid"


async def test_merchant_bearer_tokens_and_wrong_kinds(machine: httpx.AsyncClient) -> None:
    shop = uuid.uuid4()
    token = issue_access_token("merchant", uuid.uuid4(), scope_id=shop)
    r = await machine.get("/merchant/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["merchant"] == str(shop)
    citizen = issue_access_token("citizen", uuid.uuid4())
    r = await machine.get("/merchant/me", headers={"Authorization": f"Bearer {citizen}"})
    assert r.status_code == 403 and r.json()["code"] == "auth.wrong_kind"


async def test_revoking_an_unknown_key_is_not_found(runtime: Runtime) -> None:
    from app.errors import NotFound

    with pytest.raises(NotFound):
        async with runtime.db.transaction() as s:
            await apikeys.revoke_api_key(s, uuid.uuid4())
