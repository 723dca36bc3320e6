"""Fixtures of the auth tests: a readable SMS outbox, unique phones and client addresses,
admin users, and a small separate app for the machine-caller dependencies."""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime

import httpx
import pyotp
import pytest
from fastapi import FastAPI, Request

from app import clock, errors
from app.auth import admins
from app.auth.otp import DevSmsSender
from app.deps import CurrentMerchant, CurrentPartner
from app.runtime import Runtime

_counter = itertools.count(1)


def new_phone() -> str:
    """A mainland mobile number no other test of this run uses."""
    return f"139{secrets.randbelow(10**8):08d}"


def new_ip() -> str:
    n = next(_counter)
    return f"10.{secrets.randbelow(250)}.{n // 250 % 250}.{n % 250 + 1}"


@pytest.fixture
def sms(app: FastAPI) -> DevSmsSender:
    """The development sender the app uses, whose outbox the tests read."""
    sender = getattr(app.state, "sms_sender", None)
    if not isinstance(sender, DevSmsSender):
        sender = DevSmsSender()
        app.state.sms_sender = sender
    return sender


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def client_from(app: FastAPI) -> AsyncIterator[ClientFactory]:
    """``client_from(ip)``: an HTTP client whose requests come from that address."""
    opened: list[httpx.AsyncClient] = []

    def make(ip: str | None = None, target: FastAPI | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=target or app, raise_app_exceptions=False, client=(ip or new_ip(), 40000)
        )
        c = httpx.AsyncClient(transport=transport, base_url="http://test")
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
def frozen_clock() -> Iterator[Callable[[datetime], None]]:
    """``frozen_clock(t)`` fixes ``app.clock`` at ``t``; the real clock comes back after."""

    def set_to(at: datetime) -> None:
        clock.set_clock(lambda: at)

    yield set_to
    clock.set_clock(None)


async def login_citizen(c: httpx.AsyncClient, sms: DevSmsSender, phone: str) -> dict:
    r = await c.post("/v1/auth/otp", json={"phone": phone})
    assert r.status_code == 202, r.text
    code = sms.last_code(phone)
    assert code is not None
    r = await c.post("/v1/auth/login", json={"phone": phone, "code": code})
    assert r.status_code == 200, r.text
    return r.json()


async def make_admin(
    runtime: Runtime, roles: list[str], *, enrolled: bool = True, district: str | None = None,
    password: str = "correct horse battery", acts_for: uuid.UUID | None = None,
) -> tuple[admins.AdminUserView, pyotp.TOTP | None]:
    async with runtime.db.transaction() as s:
        view, enrolment = await admins.create_admin_user(
            s, username=f"u{secrets.token_hex(5)}", password=password, roles=roles,
            district_code=district, actor="test", enrol_totp=enrolled, acts_for=acts_for,
        )
    return view, pyotp.TOTP(enrolment.secret) if enrolment else None


@pytest.fixture(scope="session")
def machine_app(runtime: Runtime) -> FastAPI:
    """A test-only app with one partner route and one merchant route (not the product's)."""
    test_app = FastAPI()
    errors.install(test_app)
    test_app.state.runtime = runtime

    @test_app.post("/partner/echo")
    async def partner_echo(partner: CurrentPartner, request: Request) -> dict:
        body = await request.body()
        return {"client": str(partner.id), "scene": str(partner.scope_id), "bytes": len(body)}

    @test_app.get("/partner/echo")
    async def partner_get(partner: CurrentPartner) -> dict:
        return {"client": str(partner.id)}

    @test_app.get("/merchant/me")
    async def merchant_me(merchant: CurrentMerchant) -> dict:
        return {"key": str(merchant.id), "merchant": str(merchant.scope_id),
                "kind": merchant.kind}

    return test_app
