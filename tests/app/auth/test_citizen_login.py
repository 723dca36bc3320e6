"""Citizens log in with phone + one-time code; sessions rotate their refresh tokens."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from app import clock
from app.auth.models import Citizen, RefreshToken
from app.auth.otp import DevSmsSender
from app.auth.tokens import issue_access_token
from app.runtime import Runtime

from .conftest import ClientFactory, login_citizen, new_phone


async def test_otp_login_issues_access_and_refresh_tokens(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    c = client_from()
    phone = new_phone()
    r = await c.post("/v1/auth/otp", json={"phone": "+86 " + phone})
    assert r.status_code == 202
    assert r.json() == {"sent_to": phone[:3] + "****" + phone[-4:], "expires_in": 300}
    code = sms.last_code(phone)
    assert code is not None and len(code) == 6 and code.isdigit()
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": code})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 15 * 60
    assert r.headers["cache-control"] == "no-store"
    me = await c.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == body["citizen_id"]
    assert me.json()["phone_masked"] == phone[:3] + "****" + phone[-4:]
    # The code is single-use.
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": code})
    assert r.status_code == 401 and r.json()["code"] == "auth.otp_invalid"


async def test_code_is_stored_only_as_a_keyed_hash(
    client_from: ClientFactory, sms: DevSmsSender, runtime: Runtime
) -> None:
    c = client_from()
    phone = new_phone()
    await c.post("/v1/auth/otp", json={"phone": phone})
    code = sms.last_code(phone)
    assert code is not None
    keys = [k async for k in runtime.redis.scan_iter(match=runtime.key("auth", "otp", "*"))]
    assert keys and all(phone.encode() not in k for k in keys)
    for k in keys:
        stored = await runtime.redis.hgetall(k)
        assert code.encode() not in stored[b"h"] and stored[b"h"] != code.encode()


async def test_wrong_code_is_refused_and_logs_nobody_in(
    client_from: ClientFactory, sms: DevSmsSender, runtime: Runtime
) -> None:
    c = client_from()
    phone = new_phone()
    await c.post("/v1/auth/otp", json={"phone": phone})
    code = sms.last_code(phone)
    wrong = f"{(int(code or '0') + 1) % 10**6:06d}"
    async with runtime.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(Citizen))
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": wrong})
    assert r.status_code == 401 and r.json()["code"] == "auth.otp_invalid"
    assert r.headers["content-type"].startswith("application/problem+json")
    async with runtime.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Citizen)) == before


async def test_code_expires_after_five_minutes(
    client_from: ClientFactory, sms: DevSmsSender, frozen_clock
) -> None:
    c = client_from()
    phone = new_phone()
    start = clock.now()
    frozen_clock(start)
    await c.post("/v1/auth/otp", json={"phone": phone})
    code = sms.last_code(phone)
    frozen_clock(start + timedelta(minutes=5, seconds=1))
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": code})
    assert r.status_code == 401 and r.json()["code"] == "auth.otp_expired"


async def test_sixth_try_is_refused_even_with_the_right_code(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    c = client_from()
    phone = new_phone()
    await c.post("/v1/auth/otp", json={"phone": phone})
    code = sms.last_code(phone) or ""
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    # Five wrong guesses, sent concurrently: the counter is atomic.
    answers = await asyncio.gather(*(
        c.post("/v1/auth/login", json={"phone": phone, "code": wrong}) for _ in range(5)
    ))
    assert [a.json()["code"] for a in answers] == ["auth.otp_invalid"] * 5
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": code})
    assert r.status_code == 401 and r.json()["code"] == "auth.otp_attempts_exceeded"


async def test_malformed_code_and_phone_are_422(client_from: ClientFactory) -> None:
    c = client_from()
    r = await c.post("/v1/auth/login", json={"phone": new_phone(), "code": "12ab56"})
    assert r.status_code == 422 and r.json()["code"] == "request.invalid"
    r = await c.post("/v1/auth/otp", json={"phone": "12345"})
    assert r.status_code == 422 and r.json()["code"] == "auth.phone_invalid"
    assert "12345" not in r.text


async def test_sending_is_rate_limited_per_phone(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    phone = new_phone()
    r = await client_from().post("/v1/auth/otp", json={"phone": phone})
    assert r.status_code == 202
    r = await client_from().post("/v1/auth/otp", json={"phone": phone})  # another address
    assert r.status_code == 429
    assert r.json()["code"] == "auth.rate_limited"
    assert int(r.headers["retry-after"]) >= 1


async def test_sending_is_rate_limited_per_client_address(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    c = client_from()
    codes = []
    for _ in range(31):
        r = await c.post("/v1/auth/otp", json={"phone": new_phone()})
        codes.append(r.status_code)
    assert codes[:30] == [202] * 30
    assert codes[30] == 429
    # Another address is not affected.
    r = await client_from().post("/v1/auth/otp", json={"phone": new_phone()})
    assert r.status_code == 202


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client_from: ClientFactory, sms: DevSmsSender, runtime: Runtime
) -> None:
    c = client_from()
    first = await login_citizen(c, sms, new_phone())
    r = await c.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["citizen_id"] == first["citizen_id"]
    # The first token again: someone copied it. The family dies, the thief gets nothing ...
    r = await c.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_reused"
    # ... and so does the legitimate holder of the newest token.
    r = await c.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_revoked"
    async with runtime.db.session() as s:
        live = await s.scalar(select(func.count()).select_from(RefreshToken).where(
            RefreshToken.citizen_id == uuid.UUID(first["citizen_id"]),
            RefreshToken.revoked_at.is_(None)))
    assert live == 0


async def test_concurrent_refreshes_with_one_token_yield_at_most_one_pair(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    c = client_from()
    tokens = await login_citizen(c, sms, new_phone())
    answers = await asyncio.gather(*(
        c.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        for _ in range(4)
    ))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) <= 1 and statuses.count(401) >= 3


async def test_refresh_token_expires(
    client_from: ClientFactory, sms: DevSmsSender, runtime: Runtime, frozen_clock
) -> None:
    c = client_from()
    tokens = await login_citizen(c, sms, new_phone())
    frozen_clock(clock.now() + timedelta(seconds=runtime.settings.refresh_token_ttl_s + 1))
    r = await c.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_expired"


async def test_unknown_refresh_token_is_401(client_from: ClientFactory) -> None:
    r = await client_from().post("/v1/auth/refresh", json={"refresh_token": "thr_nope"})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_invalid"


async def test_logout_ends_the_session(client_from: ClientFactory, sms: DevSmsSender) -> None:
    c = client_from()
    tokens = await login_citizen(c, sms, new_phone())
    r = await c.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    r = await c.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_revoked"


async def test_missing_expired_and_wrong_kind_tokens(client_from: ClientFactory,
                                                     frozen_clock) -> None:
    c = client_from()
    r = await c.get("/v1/me")
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await c.get("/v1/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401 and r.json()["code"] == "auth.token_invalid"
    admin = issue_access_token("admin", uuid.uuid4(), roles={"operator_admin"})
    r = await c.get("/v1/me", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 403 and r.json()["code"] == "auth.wrong_kind"
    token = issue_access_token("citizen", uuid.uuid4())
    frozen_clock(clock.now() + timedelta(minutes=16))
    r = await c.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["code"] == "auth.token_expired"


async def test_citizen_exports_and_erases_own_data(
    client_from: ClientFactory, sms: DevSmsSender
) -> None:
    c = client_from()
    phone = new_phone()
    tokens = await login_citizen(c, sms, phone)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = await c.get("/v1/me/export", headers=auth)
    assert r.status_code == 200 and r.json()["profile"]["phone"] == phone
    r = await c.delete("/v1/me", headers=auth)
    assert r.status_code == 200
    r = await c.get("/v1/me", headers=auth)
    assert r.json()["phone_masked"] is None and r.json()["pseudonym"]
    r = await c.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
