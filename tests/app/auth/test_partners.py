"""Scene partners: OAuth2 client credentials plus an Ed25519 signature on every request,
with a ±300 s timestamp window and single-use nonces (Art. 35: data exchanged securely)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import func, select

from app import clock
from app.auth import clients
from app.auth.models import ApiClient, ApiClientKey
from app.auth.signing import sign_headers
from app.auth.tokens import decode_access_token, issue_access_token
from app.errors import Invalid
from app.runtime import Runtime

from .conftest import ClientFactory


class Partner:
    def __init__(self, client_id: str, secret: str, scene: uuid.UUID,
                 key: Ed25519PrivateKey, key_id: uuid.UUID) -> None:
        self.client_id, self.secret, self.scene, self.key, self.key_id = (
            client_id, secret, scene, key, key_id)
        self.token = ""


def raw_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def new_partner(runtime: Runtime, c: httpx.AsyncClient | None = None) -> Partner:
    scene = uuid.uuid4()
    key = Ed25519PrivateKey.generate()
    async with runtime.db.transaction() as s:
        client_id, secret = await clients.create_client(s, scope_id=scene, name="共享单车")
        key_id = await clients.add_client_key(s, client_id, raw_b64(key))
    p = Partner(client_id, secret, scene, key, key_id)
    if c is not None:
        r = await c.post("/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        assert r.status_code == 200, r.text
        p.token = r.json()["access_token"]
    return p


def signed(p: Partner, method: str, path: str, body: bytes = b"", **kw) -> dict[str, str]:
    headers = sign_headers(p.key, method, path, body, **kw)
    headers["Authorization"] = f"Bearer {p.token}"
    return headers


@pytest.fixture
def machine(client_from: ClientFactory, machine_app: FastAPI) -> httpx.AsyncClient:
    return client_from(target=machine_app)


async def test_token_endpoint_issues_a_partner_jwt_scoped_to_the_scene(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    c = client_from()
    p = await new_partner(runtime)
    r = await c.post("/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": p.client_id, "client_secret": p.secret})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert r.headers["cache-control"] == "no-store"
    principal = decode_access_token(body["access_token"])
    assert principal.kind == "partner" and principal.scope_id == p.scene
    # HTTP Basic works too (RFC 6749 §2.3.1).
    r = await c.post("/v1/oauth/token", data={"grant_type": "client_credentials"},
                     auth=(p.client_id, p.secret))
    assert r.status_code == 200


async def test_token_endpoint_refuses_bad_clients_and_grants(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    c = client_from()
    p = await new_partner(runtime)
    r = await c.post("/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": p.client_id, "client_secret": "nope"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "auth.invalid_client" and r.json()["error"] == "invalid_client"
    r = await c.post("/v1/oauth/token", data={"grant_type": "client_credentials"},
                     auth=(p.client_id, "nope"))
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    r = await c.post("/v1/oauth/token", data={
        "grant_type": "password", "client_id": p.client_id, "client_secret": p.secret})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = await c.post("/v1/oauth/token", data={"client_id": p.client_id})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    async with runtime.db.transaction() as s:
        await clients.set_client_active(s, p.client_id, False)
    r = await c.post("/v1/oauth/token", data={
        "grant_type": "client_credentials", "client_id": p.client_id, "client_secret": p.secret})
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid_client"


async def test_client_secret_is_stored_hashed(runtime: Runtime) -> None:
    p = await new_partner(runtime)
    async with runtime.db.session() as s:
        stored = await s.scalar(select(ApiClient.secret_hash).where(
            ApiClient.client_id == p.client_id))
    assert stored is not None and p.secret.encode() not in bytes(stored)


async def test_valid_signature_is_accepted_and_the_route_reads_the_body(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    body = b'{"events": [' + b'{"id": 1},' * 500 + b'{"id": 2}]}'
    r = await machine.post("/partner/echo", content=body,
                           headers=signed(p, "POST", "/partner/echo", body))
    assert r.status_code == 200, r.text
    assert r.json()["scene"] == str(p.scene) and r.json()["bytes"] == len(body)
    # With the key id named, and with a query string in the signed path.
    r = await machine.get("/partner/echo?page=2",
                          headers=signed(p, "GET", "/partner/echo?page=2", key_id=p.key_id))
    assert r.status_code == 200, r.text


async def test_forged_signature_is_refused(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    body = b'{"events": []}'
    headers = signed(p, "POST", "/partner/echo", body)
    # Body changed after signing.
    r = await machine.post("/partner/echo", content=b'{"events": [1]}', headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"
    # Signed by a key the partner never registered.
    stranger = Ed25519PrivateKey.generate()
    h = sign_headers(stranger, "POST", "/partner/echo", body)
    h["Authorization"] = f"Bearer {p.token}"
    r = await machine.post("/partner/echo", content=body, headers=h)
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"
    # Signed for another path.
    r = await machine.post("/partner/echo", content=body,
                           headers=signed(p, "POST", "/partner/other", body))
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"
    h = signed(p, "POST", "/partner/echo", body)
    h["X-Tanhui-Signature"] = "***"
    r = await machine.post("/partner/echo", content=body, headers=h)
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"


async def test_stale_or_future_timestamps_are_refused(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    now = int(clock.now().timestamp())
    for ts in (now - 301, now + 301):
        r = await machine.post("/partner/echo", content=b"{}",
                               headers=signed(p, "POST", "/partner/echo", b"{}", timestamp=ts))
        assert r.status_code == 401 and r.json()["code"] == "auth.timestamp_out_of_window"
    r = await machine.post("/partner/echo", content=b"{}",
                           headers=signed(p, "POST", "/partner/echo", b"{}", timestamp=now - 290))
    assert r.status_code == 200


async def test_reused_nonce_is_refused_even_concurrently(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    headers = signed(p, "POST", "/partner/echo", b"{}")
    answers = await asyncio.gather(*(
        machine.post("/partner/echo", content=b"{}", headers=headers) for _ in range(5)
    ))
    assert sorted(a.status_code for a in answers) == [200, 401, 401, 401, 401]
    assert {a.json()["code"] for a in answers if a.status_code == 401} == {"auth.nonce_reused"}


async def test_forged_requests_do_not_burn_nonces(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    nonce = "n" * 24
    bad = signed(p, "POST", "/partner/echo", b"forged", nonce=nonce)
    r = await machine.post("/partner/echo", content=b"{}", headers=bad)
    assert r.json()["code"] == "auth.signature_invalid"
    good = signed(p, "POST", "/partner/echo", b"{}", nonce=nonce)
    assert (await machine.post("/partner/echo", content=b"{}", headers=good)).status_code == 200


async def test_another_partners_token_is_refused(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    c = client_from()
    a, b = await new_partner(runtime, c), await new_partner(runtime, c)
    # B signs with its own key but presents A's token.
    headers = sign_headers(b.key, "POST", "/partner/echo", b"{}")
    headers["Authorization"] = f"Bearer {a.token}"
    r = await machine.post("/partner/echo", content=b"{}", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"


async def test_missing_token_headers_and_wrong_kind(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    h = sign_headers(p.key, "POST", "/partner/echo", b"{}")
    r = await machine.post("/partner/echo", content=b"{}", headers=h)
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    r = await machine.post("/partner/echo", content=b"{}",
                           headers={"Authorization": f"Bearer {p.token}"})
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_missing"
    h = signed(p, "POST", "/partner/echo", b"{}", nonce="short")
    r = await machine.post("/partner/echo", content=b"{}", headers=h)
    assert r.status_code == 401 and r.json()["code"] == "auth.nonce_invalid"
    citizen = issue_access_token("citizen", uuid.uuid4())
    h = sign_headers(p.key, "POST", "/partner/echo", b"{}")
    h["Authorization"] = f"Bearer {citizen}"
    r = await machine.post("/partner/echo", content=b"{}", headers=h)
    assert r.status_code == 403 and r.json()["code"] == "auth.wrong_kind"


async def test_suspended_client_is_refused_even_with_a_live_token(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient
) -> None:
    p = await new_partner(runtime, client_from())
    async with runtime.db.transaction() as s:
        await clients.set_client_active(s, p.client_id, False)
    r = await machine.post("/partner/echo", content=b"{}",
                           headers=signed(p, "POST", "/partner/echo", b"{}"))
    assert r.status_code == 401 and r.json()["code"] == "auth.client_inactive"
    async with runtime.db.transaction() as s:
        await clients.set_client_active(s, p.client_id, True)
    r = await machine.post("/partner/echo", content=b"{}",
                           headers=signed(p, "POST", "/partner/echo", b"{}"))
    assert r.status_code == 200


async def test_key_rotation_keeps_the_old_key_until_its_retirement(
    runtime: Runtime, client_from: ClientFactory, machine: httpx.AsyncClient, frozen_clock
) -> None:
    p = await new_partner(runtime, client_from())
    new_key = Ed25519PrivateKey.generate()
    pem = new_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    now = clock.now()
    async with runtime.db.transaction() as s:
        await clients.add_client_key(s, p.client_id, pem)  # PEM is accepted too
        await clients.retire_client_key(s, p.client_id, p.key_id, at=now + timedelta(hours=1))
    old = p.key
    # During the overlap both keys verify.
    for k in (old, new_key):
        h = sign_headers(k, "POST", "/partner/echo", b"{}")
        h["Authorization"] = f"Bearer {p.token}"
        assert (await machine.post("/partner/echo", content=b"{}", headers=h)).status_code == 200
    # After the retirement only the new one does (the token is re-issued for the new time).
    later = now + timedelta(hours=1, seconds=1)
    frozen_clock(later)
    p.token = issue_access_token("partner", (await _client_pk(runtime, p)), scope_id=p.scene)
    h = sign_headers(old, "POST", "/partner/echo", b"{}")
    h["Authorization"] = f"Bearer {p.token}"
    r = await machine.post("/partner/echo", content=b"{}", headers=h)
    assert r.status_code == 401 and r.json()["code"] == "auth.signature_invalid"
    h = sign_headers(new_key, "POST", "/partner/echo", b"{}")
    h["Authorization"] = f"Bearer {p.token}"
    assert (await machine.post("/partner/echo", content=b"{}", headers=h)).status_code == 200


async def _client_pk(runtime: Runtime, p: Partner) -> uuid.UUID:
    async with runtime.db.session() as s:
        return (await clients.get_client(s, p.client_id)).id


async def test_invalid_public_keys_are_refused_and_store_nothing(runtime: Runtime) -> None:
    p = await new_partner(runtime)
    async with runtime.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(ApiClientKey))
    for bad in ("not base64!", base64.b64encode(b"x" * 31).decode(),
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        with pytest.raises(Invalid) as info:
            async with runtime.db.transaction() as s:
                await clients.add_client_key(s, p.client_id, bad)
        assert info.value.code == "auth.key_invalid"
    async with runtime.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(ApiClientKey)) == before
