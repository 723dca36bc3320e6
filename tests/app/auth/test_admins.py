"""Admin users: argon2id passwords, mandatory TOTP, roles checked by one dependency, and
every write audited."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from app import clock, errors
from app.auth import admins
from app.auth.models import AdminUser
from app.auth.principal import Principal
from app.auth.tokens import decode_access_token, issue_access_token
from app.crypto import decrypt
from app.deps import require
from app.errors import Invalid
from app.runtime import Runtime

from .conftest import ClientFactory, make_admin

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_password_is_an_argon2id_hash_and_totp_secret_is_encrypted(
    runtime: Runtime,
) -> None:
    view, totp = await make_admin(runtime, ["operator_staff"])
    assert totp is not None
    async with runtime.db.session() as s:
        row = (await s.execute(text(
            "SELECT password_hash, totp_secret_enc FROM admin_users WHERE id = :id"),
            {"id": view.id})).one()
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert totp.secret.encode() not in bytes(row.totp_secret_enc)
    assert decrypt(bytes(row.totp_secret_enc), context=admins.TOTP_CONTEXT) == totp.secret


async def test_login_needs_password_and_totp(runtime: Runtime, client_from: ClientFactory) -> None:
    view, totp = await make_admin(runtime, ["bureau"])
    assert totp is not None
    c = client_from()
    r = await c.post("/v1/admin/login", json={"username": view.username, "password": PASSWORD})
    assert r.status_code == 401 and r.json()["code"] == "auth.totp_required"
    r = await c.post("/v1/admin/login", json={
        "username": view.username, "password": "wrong password!!", "totp_code": totp.now()})
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid_credentials"
    r = await c.post("/v1/admin/login", json={
        "username": "nobody-here", "password": PASSWORD, "totp_code": totp.now()})
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid_credentials"
    wrong = f"{(int(totp.now()) + 1) % 10**6:06d}"
    r = await c.post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": wrong})
    assert r.status_code == 401 and r.json()["code"] == "auth.totp_invalid"
    r = await c.post("/v1/admin/login", json={
        "username": view.username.upper(), "password": PASSWORD, "totp_code": totp.now()})
    assert r.status_code == 200, r.text
    principal = decode_access_token(r.json()["access_token"])
    assert principal.kind == "admin" and principal.roles == {"bureau"}
    # The same code cannot be replayed.
    r = await c.post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": totp.now()})
    assert r.status_code == 401 and r.json()["code"] == "auth.totp_replayed"


async def test_totp_accepts_one_step_of_drift(
    runtime: Runtime, client_from: ClientFactory, frozen_clock
) -> None:
    view, totp = await make_admin(runtime, ["auditor"])
    assert totp is not None
    now = clock.now()
    frozen_clock(now)
    previous = totp.at(now - timedelta(seconds=30))
    r = await client_from().post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": previous})
    assert r.status_code == 200
    view, totp = await make_admin(runtime, ["auditor"])
    assert totp is not None
    stale = totp.at(now - timedelta(seconds=90))
    r = await client_from().post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": stale})
    assert r.status_code == 401


async def test_unenrolled_user_must_enrol_totp_first(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    view, _ = await make_admin(runtime, ["registry_agency"], enrolled=False)
    c = client_from()
    r = await c.post("/v1/admin/login", json={"username": view.username, "password": PASSWORD})
    assert r.status_code == 403 and r.json()["code"] == "auth.totp_enrolment_required"
    enrol = r.json()["enrolment_token"]
    # The enrolment token is no access token.
    r = await c.get("/v1/admin/users", headers=bearer(enrol))
    assert r.status_code == 401
    r = await c.post("/v1/admin/totp/enrol", headers=bearer(enrol))
    assert r.status_code == 200, r.text
    uri = r.json()["otpauth_uri"]
    assert uri.startswith("otpauth://totp/") and view.username in uri
    totp = pyotp.TOTP(pyotp.parse_uri(uri).secret)
    r = await c.post("/v1/admin/totp/confirm", headers=bearer(enrol), json={"code": "000000"
                     if totp.now() != "000000" else "111111"})
    assert r.status_code == 401 and r.json()["code"] == "auth.totp_invalid"
    r = await c.post("/v1/admin/totp/confirm", headers=bearer(enrol), json={"code": totp.now()})
    assert r.status_code == 200, r.text
    assert decode_access_token(r.json()["access_token"]).roles == {"registry_agency"}
    r = await c.post("/v1/admin/totp/enrol", headers=bearer(enrol))
    assert r.status_code == 409 and r.json()["code"] == "auth.totp_already_enrolled"
    # An access token is not an enrolment token either.
    r = await c.post("/v1/admin/totp/enrol",
                     headers=bearer(issue_access_token("admin", view.id, roles={"bureau"})))
    assert r.status_code == 401


async def test_suspended_admin_cannot_log_in(runtime: Runtime, client_from: ClientFactory) -> None:
    view, totp = await make_admin(runtime, ["expert"])
    assert totp is not None
    async with runtime.db.transaction() as s:
        await admins.update_admin_user(s, view.id, actor="test", is_active=False)
    r = await client_from().post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": totp.now()})
    assert r.status_code == 403 and r.json()["code"] == "auth.account_disabled"


async def test_admin_login_is_rate_limited_per_username(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    view, _ = await make_admin(runtime, ["vvb"])
    codes = []
    for _ in range(11):
        r = await client_from().post("/v1/admin/login", json={
            "username": view.username, "password": "wrong password!!", "totp_code": "123456"})
        codes.append(r.json()["code"])
    assert codes[:10] == ["auth.invalid_credentials"] * 10
    assert codes[10] == "auth.rate_limited"


async def test_require_refuses_a_wrong_role_with_403(runtime: Runtime, client_from) -> None:
    test_app = FastAPI()
    errors.install(test_app)
    test_app.state.runtime = runtime

    @test_app.post("/publish")
    async def publish(admin: require("rules.publish")) -> dict:  # type: ignore[valid-type]
        return {"ok": True}

    c = client_from(target=test_app)
    staff = issue_access_token("admin", uuid.uuid4(), roles={"operator_staff"})
    r = await c.post("/publish", headers=bearer(staff))
    assert r.status_code == 403 and r.json()["code"] == "auth.permission_denied"
    boss = issue_access_token("admin", uuid.uuid4(), roles={"operator_admin"})
    assert (await c.post("/publish", headers=bearer(boss))).status_code == 200
    citizen = issue_access_token("citizen", uuid.uuid4())
    r = await c.post("/publish", headers=bearer(citizen))
    assert r.status_code == 403 and r.json()["code"] == "auth.wrong_kind"
    assert (await c.post("/publish")).status_code == 401


async def test_user_management_needs_admin_users_manage(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    c = client_from()
    boss = issue_access_token("admin", uuid.uuid4(), roles={"operator_admin"})
    bureau = issue_access_token("admin", uuid.uuid4(), roles={"bureau"})
    name = f"staff{uuid.uuid4().hex[:6]}"
    body = {"username": name, "password": "a long enough pw", "roles": ["operator_staff"]}
    r = await c.post("/v1/admin/users", json=body, headers=bearer(bureau))
    assert r.status_code == 403
    r = await c.post("/v1/admin/users", json=body, headers=bearer(boss))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["username"] == name and created["totp_enrolled"] is False
    assert "password" not in r.text
    r = await c.post("/v1/admin/users", json=body, headers=bearer(boss))
    assert r.status_code == 409 and r.json()["code"] == "auth.username_taken"
    r = await c.get("/v1/admin/users", headers=bearer(boss))
    assert r.status_code == 200 and name in [u["username"] for u in r.json()]
    r = await c.patch(f"/v1/admin/users/{created['id']}", headers=bearer(boss),
                      json={"roles": ["district_bureau"], "district_code": "500103"})
    assert r.status_code == 200
    assert r.json()["roles"] == ["district_bureau"] and r.json()["district_code"] == "500103"
    r = await c.get(f"/v1/admin/users/{uuid.uuid4()}", headers=bearer(boss))
    assert r.status_code == 404


async def test_admin_user_writes_are_audited(runtime: Runtime) -> None:
    """Every admin write appends to the audit log (when the kernel's audit log is present)."""
    view, _ = await make_admin(runtime, ["auditor"])
    async with runtime.db.session() as s:
        n = await s.scalar(text(
            "SELECT count(*) FROM audit_log WHERE entity = 'admin_user' AND entity_id = :id"),
            {"id": str(view.id)})
    assert n and n >= 1


async def test_district_bureau_needs_a_district_and_bad_input_writes_nothing(
    runtime: Runtime,
) -> None:
    async with runtime.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(AdminUser))
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(roles=["district_bureau"]), "auth.district_required"),
        (dict(roles=["district_bureau"], district_code="yuzhong"), "auth.district_invalid"),
        (dict(roles=["king"]), "auth.roles_invalid"),
        (dict(roles=[]), "auth.roles_invalid"),
        (dict(roles=["bureau"], password="short"), "auth.password_too_short"),
        (dict(roles=["bureau"], username="X"), "auth.username_invalid"),
    ]
    for kwargs, code in cases:
        args = {"username": f"u{uuid.uuid4().hex[:8]}", "password": PASSWORD, **kwargs}
        with pytest.raises(Invalid) as info:
            async with runtime.db.transaction() as s:
                await admins.create_admin_user(s, actor="test", **args)  # type: ignore[arg-type]
        assert info.value.code == code
    async with runtime.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(AdminUser)) == before
    view, _ = await make_admin(runtime, ["district_bureau"], district="500103")
    assert view.district_code == "500103"


async def test_district_bureau_token_carries_its_district(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    view, totp = await make_admin(runtime, ["district_bureau"], district="500106")
    assert totp is not None
    r = await client_from().post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": totp.now()})
    principal: Principal = decode_access_token(r.json()["access_token"])
    assert principal.district == "500106" and principal.roles == {"district_bureau"}


async def test_vvb_token_names_the_vvb_it_acts_for(
    runtime: Runtime, client_from: ClientFactory
) -> None:
    """A VVB user's access token carries its VVB as scope (Art. 17/21 checks need it)."""
    vvb_id = uuid.uuid4()
    view, totp = await make_admin(runtime, ["vvb"], acts_for=vvb_id)
    assert totp is not None
    r = await client_from().post("/v1/admin/login", json={
        "username": view.username, "password": PASSWORD, "totp_code": totp.now()})
    principal: Principal = decode_access_token(r.json()["access_token"])
    assert principal.scope_id == vvb_id and principal.roles == {"vvb"}


async def test_admin_cannot_lock_themselves_out(runtime: Runtime) -> None:
    view, _ = await make_admin(runtime, ["operator_admin"])
    from app.errors import Conflict

    for change in ({"is_active": False}, {"roles": ["auditor"]}):
        with pytest.raises(Conflict):
            async with runtime.db.transaction() as s:
                await admins.update_admin_user(s, view.id, actor="t", actor_id=view.id, **change)


async def test_seed_is_idempotent(runtime: Runtime, client_from: ClientFactory) -> None:
    from app.auth.seed import DEMO_ADMIN, DEMO_PASSWORD, seed_demo

    async with runtime.db.transaction() as s:
        first = await seed_demo(s)
    async with runtime.db.transaction() as s:
        second = await seed_demo(s)
    assert first == second
    assert first["demo_citizen_phone"] == "13800000000"
    assert first["admin_otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(first["admin_totp_secret"])
    r = await client_from().post("/v1/admin/login", json={
        "username": DEMO_ADMIN, "password": DEMO_PASSWORD, "totp_code": totp.now()})
    assert r.status_code == 200


async def test_cli_admin_create_prints_the_otpauth_uri(runtime: Runtime) -> None:
    """``tanhui admin create`` as an operator runs it: a separate process on the same database."""
    name = f"cli{uuid.uuid4().hex[:8]}"
    args = [str(Path(sys.executable).with_name("tanhui")), "admin", "create", "--username", name,
            "--password", "cli password 123", "--role", "operator_admin"]

    async def run() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, output = await run()
    assert code == 0, output
    assert "otpauth://totp/" in output and name in output
    uri = next(line for line in output.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.TOTP(pyotp.parse_uri(uri).secret)
    async with runtime.db.transaction() as s:
        token = await admins.login_admin(s, name, "cli password 123", totp.now())
    assert token.user.roles == ["operator_admin"] and token.user.totp_enrolled
