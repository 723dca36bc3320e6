"""Small factories for trading tests: traders with credits and funds, HTTP headers, checks."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth.tokens import issue_access_token
from app.errors import Conflict
from registry import service as registry
from registry.reconcile import reconcile
from tests.registry.factories import holder_with, org
from trading import service
from trading.schemas import AccountIn, Identity, ProductIn

# PyJWT also checks ``exp`` against the wall clock: tokens minted under a pinned clock live long.
TTL = 4 * 365 * 86400
PRODUCT = "engineering"
REF_PRICE = 5000  # 50.00 yuan per tonne


def shanghai(day: str, hhmm: str = "10:00") -> datetime:
    """The UTC instant of a Chongqing wall-clock time."""
    h, m = (int(x) for x in hhmm.split(":"))
    local = datetime.fromisoformat(day).replace(hour=h, minute=m, tzinfo=clock.SHANGHAI)
    return local.astimezone(UTC)


def exchange() -> dict[str, str]:
    return admin("exchange")


def admin(role: str) -> dict[str, str]:
    token = issue_access_token("admin", uuid.uuid4(), roles={role}, ttl_s=TTL)
    return {"Authorization": f"Bearer {token}"}


def as_org(org_id: uuid.UUID) -> dict[str, str]:
    token = issue_access_token("org", uuid.uuid4(), scope_id=org_id, ttl_s=TTL)
    return {"Authorization": f"Bearer {token}"}


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def refused(r: httpx.Response, code: str, status: int | None = None) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, r.text
    if status is not None:
        assert r.status_code == status, r.text
    return body


@dataclass
class Trader:
    """A registry holder with a trading account."""

    org_id: uuid.UUID
    account_id: uuid.UUID
    registry_account_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return as_org(self.org_id)


async def trader(s: AsyncSession, *, credits: int = 0, funds: int = 0,
                 category: str = "engineering", staff_of: str | None = None,
                 kind: str = "trader") -> Trader:
    """A holder (with ``credits`` issued tonnes of ``category`` if > 0), its trading account and
    ``funds`` fen deposited."""
    if credits:
        w, reg_account, _ = await holder_with(s, credits, category)
        o = w.owner
        if staff_of:
            raise ValueError("staff holders are built without credits")
    else:
        o = await org(s, kind=kind, staff_of=staff_of)
        assert o.account_id is not None
        reg_account = o.account_id
    identity = None
    if kind == "individual":
        idn = f"5001031990{secrets.randbelow(10**8):08d}"
        identity = Identity(legal_name="张三丰", id_number=idn)
    acct = await service.open_account(s, AccountIn(organisation_id=o.id, identity=identity),
                                      actor="test")
    if funds:
        await service.deposit(s, acct.id, funds, f"BANK-{uuid.uuid4().hex[:12]}", actor="test")
    return Trader(org_id=o.id, account_id=acct.id, registry_account_id=reg_account)


async def ensure_product(s: AsyncSession, category: str = "engineering",
                         vintage: int | None = None, ref: int = REF_PRICE) -> str:
    try:
        async with s.begin_nested():
            return (await service.add_product(
                s, ProductIn(category=category, vintage=vintage, ref_price_fen=ref),  # type: ignore[arg-type]
                actor="test")).key
    except Conflict:
        return category if vintage is None else f"{category}-{vintage}"


async def held(s: AsyncSession, registry_account_id: uuid.UUID) -> dict[str, int]:
    """Tonnes by state in a registry account."""
    out: dict[str, int] = {"held": 0, "locked": 0, "cancelled": 0}
    for b in await registry.holdings(s, registry_account_id):
        out[b.state] += b.quantity
    return out


async def consistent(s: AsyncSession) -> None:
    """The registry reconciles and the funds are conserved."""
    assert await reconcile(s) == []
    check = await service.check_funds(s)
    assert check.ok, check.problems
