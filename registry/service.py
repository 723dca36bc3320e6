"""The registry's public service: organisations and their holding accounts, logins, and the
credit service (re-exported from :mod:`registry.credits`) that trading and offsets call.

Other packages call only what ``__all__`` lists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.auth.tokens import issue_access_token
from app.errors import Unauthorized
from registry.credits import (
    Delivery,
    LockRequest,
    cancel_locked,
    deliver,
    deliver_many,
    find_serial,
    held_quantities,
    holdings,
    lock,
    lock_many,
    move_locked,
    parse_serial,
    transfer,
    unlock,
    unlock_many,
)
from registry.errors import Conflict, not_found
from registry.models import Account, Organisation, OrgUser
from registry.schemas import (
    BlockView,
    LockView,
    OrganisationIn,
    OrganisationOut,
    ProductFilter,
    TokenOut,
)

__all__ = [
    "BlockView", "Delivery", "LockRequest", "LockView", "ProductFilter", "account_of",
    "cancel_locked", "create_organisation", "deliver", "deliver_many", "find_serial",
    "get_organisation", "held_quantities", "holdings", "is_trading_barred", "lock",
    "lock_many", "login", "move_locked", "parse_serial", "trading_barred", "transfer", "unlock",
    "unlock_many",
]

_hasher = PasswordHasher()


async def create_organisation(
    session: AsyncSession, data: OrganisationIn, *, actor: str, is_demo: bool = False,
    now: datetime | None = None,
) -> OrganisationOut:
    """Open a registry account holder with its holding account (and a login if given)."""
    at = now or clock.now()
    org = Organisation(
        id=uuid.uuid4(), name=data.name, uscc=data.uscc, kind=data.kind, staff_of=data.staff_of,
        district_code=data.district_code, status="active", is_demo=is_demo, created_at=at,
    )
    account = Account(id=uuid.uuid4(), organisation_id=org.id, opened_at=at)
    try:
        async with session.begin_nested():
            session.add(org)
            await session.flush()
            session.add(account)
            if data.username and data.password:
                session.add(OrgUser(
                    id=uuid.uuid4(), organisation_id=org.id, username=data.username,
                    password_hash=_hasher.hash(data.password), created_at=at,
                ))
            await session.flush()
    except IntegrityError as exc:
        raise Conflict("registry.organisation_exists",
                       "An organisation with this credit code or username exists.") from exc
    await audit.append(session, actor=actor, action="organisation.create",
                       entity="organisation", entity_id=str(org.id), now=at,
                       data={"name": org.name, "kind": org.kind, "staff_of": org.staff_of})
    return _org_out(org, account.id)


def _org_out(org: Organisation, account_id: UUID | None) -> OrganisationOut:
    out = OrganisationOut.model_validate(org)
    out.account_id = account_id
    return out


async def get_organisation(session: AsyncSession, organisation_id: UUID) -> OrganisationOut:
    org = await session.get(Organisation, organisation_id)
    if org is None:
        raise not_found("organisation")
    return _org_out(org, await account_of(session, organisation_id))


async def account_of(session: AsyncSession, organisation_id: UUID) -> UUID:
    """The holding account of an organisation."""
    found = (await session.execute(
        select(Account.id).where(Account.organisation_id == organisation_id)
    )).scalar_one_or_none()
    if found is None:
        raise not_found("account")
    return found


async def is_trading_barred(session: AsyncSession, organisation_id: UUID) -> bool:
    """Art. 37: staff of the registry agency, operator and exchange may not trade CQCER."""
    org = await session.get(Organisation, organisation_id)
    if org is None:
        raise not_found("organisation")
    return org.staff_of is not None


async def trading_barred(session: AsyncSession, organisation_ids: Iterable[UUID]) -> set[UUID]:
    """Art. 37: which of these organisations are staff of the registry agency, the operator or
    the exchange, and so may not trade CQCER (one statement)."""
    ids = sorted(set(organisation_ids))
    if not ids:
        return set()
    return set((await session.execute(
        select(Organisation.id).where(Organisation.id.in_(ids),
                                      Organisation.staff_of.is_not(None))
    )).scalars().all())


async def login(session: AsyncSession, username: str, password: str) -> TokenOut:
    """An organisation user's username and password → an ``org`` access token."""
    user = (await session.execute(
        select(OrgUser).where(OrgUser.username == username)
    )).scalar_one_or_none()
    try:
        if user is None or user.disabled:
            raise VerificationError
        _hasher.verify(user.password_hash, password)
    except VerificationError as exc:
        raise Unauthorized("registry.login_failed", "Wrong username or password.") from exc
    org = await session.get(Organisation, user.organisation_id)
    if org is None or org.status != "active":
        raise Unauthorized("registry.login_failed", "The organisation is not active.")
    token = issue_access_token("org", user.id, scope_id=org.id)
    return TokenOut(access_token=token, organisation_id=org.id)
