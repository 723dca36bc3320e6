"""API keys of merchants (碳普惠权益提供单位), each scoped to one merchant, stored hashed."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth.models import ApiKey
from app.errors import Invalid, NotFound

KEY_PREFIX = "thk_"


def hash_key(key: str) -> bytes:
    # Keys carry 256 bits of entropy: SHA-256 suffices and keeps the check cheap.
    return hashlib.sha256(key.encode()).digest()


async def create_api_key(
    session: AsyncSession, *, merchant_id: UUID, label: str
) -> tuple[UUID, str]:
    """A new key for ``merchant_id``; returns ``(key_id, key)``. The key is shown only once."""
    if not label.strip():
        raise Invalid("auth.api_key_label_invalid", "An API key needs a label.")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key_id = uuid.uuid4()
    session.add(
        ApiKey(
            id=key_id, merchant_id=merchant_id, label=label.strip(), prefix=prefix,
            key_hash=hash_key(key), created_at=clock.now(), revoked_at=None,
        )
    )
    await session.flush()
    return key_id, key


async def revoke_api_key(
    session: AsyncSession, key_id: UUID, *, now: datetime | None = None
) -> None:
    """Revoke a key for good; revoking twice keeps the first revocation time."""
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now or clock.now())
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        exists = await session.scalar(select(ApiKey.id).where(ApiKey.id == key_id))
        if exists is None:
            raise NotFound("auth.api_key_not_found", "No such API key.")


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: UUID
    merchant_id: UUID
    label: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def list_api_keys(session: AsyncSession, merchant_id: UUID) -> list[ApiKeyView]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.merchant_id == merchant_id).order_by(ApiKey.created_at)
    )
    return [
        ApiKeyView(r.id, r.merchant_id, r.label, r.prefix, r.created_at, r.revoked_at)
        for r in rows
    ]


async def resolve_api_key(session: AsyncSession, key: str) -> tuple[UUID, UUID] | None:
    """``(key_id, merchant_id)`` of a live key, else ``None``."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.merchant_id).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    return (row.id, row.merchant_id) if row else None
