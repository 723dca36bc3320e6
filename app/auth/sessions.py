"""Citizens' sessions: a short-lived access JWT plus a rotating refresh token.

Every refresh returns a new refresh token and retires the old one; the tokens of one login
form a *family*. Presenting a retired token again means it was copied: the whole family is
revoked (OAuth 2.0 Security BCP, refresh token rotation with reuse detection). Only SHA-256
digests of refresh tokens are stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth.models import Citizen, RefreshToken
from app.auth.tokens import issue_access_token
from app.errors import Unauthorized
from app.settings import get_settings

REFRESH_PREFIX = "thr_"


@dataclass(frozen=True, slots=True)
class TokenPair:
    citizen_id: UUID
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class RefreshReused(Unauthorized):
    """A retired refresh token came back: the caller must revoke ``family_id`` and refuse."""

    def __init__(self, family_id: UUID) -> None:
        super().__init__(
            "auth.refresh_reused",
            "This refresh token was already used; every session of this login is revoked.",
        )
        self.family_id = family_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def issue_tokens(
    session: AsyncSession,
    citizen_id: UUID,
    *,
    family_id: UUID | None = None,
    now: datetime | None = None,
) -> TokenPair:
    """A new access token and a new refresh token (of a new family unless one is given)."""
    settings = get_settings()
    now = now or clock.now()
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            id=uuid.uuid4(),
            family_id=family_id or uuid.uuid4(),
            citizen_id=citizen_id,
            token_hash=_digest(refresh),
            issued_at=now,
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    await session.flush()
    return TokenPair(
        citizen_id=citizen_id,
        access_token=issue_access_token("citizen", citizen_id),
        expires_in=settings.access_token_ttl_s,
        refresh_token=refresh,
        refresh_expires_in=settings.refresh_token_ttl_s,
    )


async def rotate(
    session: AsyncSession, refresh_token: str, *, now: datetime | None = None
) -> TokenPair:
    """Exchange a live refresh token for a new pair of the same family.

    Raises :class:`RefreshReused` (the caller revokes the family in its own transaction,
    since this one rolls back), or ``Unauthorized`` for unknown, expired or revoked tokens.
    """
    now = now or clock.now()
    row = await session.scalar(
        select(RefreshToken)
        .where(RefreshToken.token_hash == _digest(refresh_token))
        .with_for_update()
    )
    if row is None:
        raise Unauthorized("auth.refresh_invalid", "The refresh token is not valid.")
    if row.revoked_at is not None:
        raise Unauthorized("auth.refresh_revoked", "This session has been revoked.")
    if row.used_at is not None:
        raise RefreshReused(row.family_id)
    if row.expires_at <= now:
        raise Unauthorized("auth.refresh_expired", "The refresh token has expired.")
    erased = await session.scalar(select(Citizen.erased_at).where(Citizen.id == row.citizen_id))
    if erased is not None:
        raise Unauthorized("auth.refresh_revoked", "This account has been erased.")
    row.used_at = now
    return await issue_tokens(session, row.citizen_id, family_id=row.family_id, now=now)


async def revoke_family(
    session: AsyncSession, family_id: UUID, *, now: datetime | None = None
) -> int:
    """Revoke every live token of a family; returns how many."""
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now or clock.now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def logout(session: AsyncSession, refresh_token: str, *, now: datetime | None = None) -> None:
    """End the login the token belongs to (its whole family). Unknown tokens are ignored."""
    family = await session.scalar(
        select(RefreshToken.family_id).where(RefreshToken.token_hash == _digest(refresh_token))
    )
    if family is not None:
        await revoke_family(session, family, now=now)
