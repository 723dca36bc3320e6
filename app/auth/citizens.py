"""Citizens (公众) and their personal information: register, look up, export, erase (PIPL).

The phone number is stored only encrypted, with a blind index for lookup. Other domains keep
the citizen's UUID; the pseudonym survives erasure so pseudonymous ledger entries stay whole.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.auth.models import Citizen, RefreshToken
from app.crypto import blind_index, decrypt, encrypt, mask_phone, normalize_phone
from app.errors import NotFound

PHONE_CONTEXT = "citizen.phone"


@dataclass(frozen=True, slots=True)
class CitizenView:
    id: UUID
    phone_masked: str | None
    pseudonym: str
    created_at: datetime
    erased_at: datetime | None


def phone_index(phone: str) -> bytes:
    """The blind index of a (normalised) phone number."""
    return blind_index(normalize_phone(phone), context=PHONE_CONTEXT)


def _pseudonym() -> str:
    return "碳友" + secrets.token_hex(5)


async def get_or_create_citizen(
    session: AsyncSession, phone: str, *, now: datetime | None = None, demo: bool = False
) -> UUID:
    """The citizen holding ``phone``, registered on first sight (safe under concurrency)."""
    phone = normalize_phone(phone)
    bidx = blind_index(phone, context=PHONE_CONTEXT)
    found = await session.scalar(select(Citizen.id).where(Citizen.phone_bidx == bidx))
    if found is not None:
        return found
    stmt = (
        insert(Citizen)
        .values(
            id=uuid.uuid4(),
            phone_enc=encrypt(phone, context=PHONE_CONTEXT),
            phone_bidx=bidx,
            pseudonym=_pseudonym(),
            is_demo=demo,
            created_at=now or clock.now(),
        )
        .on_conflict_do_nothing(index_elements=[Citizen.phone_bidx])
        .returning(Citizen.id)
    )
    created = await session.scalar(stmt)
    if created is not None:
        return created
    # A concurrent transaction registered the same phone first.
    existing = await session.scalar(select(Citizen.id).where(Citizen.phone_bidx == bidx))
    assert existing is not None
    return existing


async def find_citizen_by_phone(session: AsyncSession, phone: str) -> UUID | None:
    """The citizen holding ``phone``, or ``None`` (erased citizens hold no phone)."""
    return await session.scalar(select(Citizen.id).where(Citizen.phone_bidx == phone_index(phone)))


async def _load(session: AsyncSession, citizen_id: UUID) -> Citizen:
    row = await session.get(Citizen, citizen_id)
    if row is None:
        raise NotFound("citizen.not_found", "No such citizen.")
    return row


async def get_citizen(session: AsyncSession, citizen_id: UUID) -> CitizenView:
    row = await _load(session, citizen_id)
    masked = (
        mask_phone(decrypt(row.phone_enc, context=PHONE_CONTEXT)) if row.phone_enc else None
    )
    return CitizenView(row.id, masked, row.pseudonym, row.created_at, row.erased_at)


async def export_citizen(session: AsyncSession, citizen_id: UUID) -> dict[str, Any]:
    """What the platform's auth records hold about a citizen (PIPL 查阅复制权)."""
    row = await _load(session, citizen_id)
    sessions = (
        await session.execute(
            select(RefreshToken.issued_at, RefreshToken.expires_at, RefreshToken.revoked_at)
            .where(RefreshToken.citizen_id == citizen_id)
            .order_by(RefreshToken.issued_at)
        )
    ).all()
    return {
        "id": str(row.id),
        "phone": decrypt(row.phone_enc, context=PHONE_CONTEXT) if row.phone_enc else None,
        "pseudonym": row.pseudonym,
        "created_at": row.created_at.isoformat(),
        "erased_at": row.erased_at.isoformat() if row.erased_at else None,
        "logins": [
            {
                "issued_at": s.issued_at.isoformat(),
                "expires_at": s.expires_at.isoformat(),
                "revoked_at": s.revoked_at.isoformat() if s.revoked_at else None,
            }
            for s in sessions
        ],
    }


async def erase_citizen(
    session: AsyncSession, citizen_id: UUID, *, now: datetime | None = None
) -> None:
    """Erase the citizen's personal information (PIPL 删除权); the pseudonym stays.

    The phone ciphertext and blind index are removed, every refresh token is revoked.
    Erasing twice is a no-op.
    """
    now = now or clock.now()
    row = await session.scalar(
        select(Citizen).where(Citizen.id == citizen_id).with_for_update()
    )
    if row is None:
        raise NotFound("citizen.not_found", "No such citizen.")
    if row.erased_at is None:
        row.phone_enc = None
        row.phone_bidx = None
        row.erased_at = now
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.citizen_id == citizen_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.flush()


async def count_citizens(session: AsyncSession) -> int:
    """Registered citizens not erased: the 注册用户数量 disclosed under Art. 36."""
    n = await session.scalar(
        select(func.count()).select_from(Citizen).where(Citizen.erased_at.is_(None))
    )
    return int(n or 0)
