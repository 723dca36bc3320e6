"""Citizens' personal information: encrypted at rest, found by blind index, exported and
erased on request (PIPL; Art. 35 of the measures applies the data-protection laws)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select, text

from app.auth import citizens, sessions
from app.auth.models import Citizen, RefreshToken
from app.crypto import blind_index
from app.errors import Invalid, NotFound
from app.runtime import Runtime

from .conftest import new_phone


async def test_art35_phone_is_stored_encrypted_with_a_blind_index(runtime: Runtime) -> None:
    phone = new_phone()
    async with runtime.db.transaction() as s:
        cid = await citizens.get_or_create_citizen(s, phone)
    async with runtime.db.session() as s:
        raw = (await s.execute(
            text("SELECT phone_enc, phone_bidx FROM citizens WHERE id = :id"), {"id": cid}
        )).one()
    assert phone.encode() not in bytes(raw.phone_enc)
    assert bytes(raw.phone_bidx) == blind_index(phone, context=citizens.PHONE_CONTEXT)
    async with runtime.db.session() as s:
        assert await citizens.find_citizen_by_phone(s, "+86 " + phone) == cid
        view = await citizens.get_citizen(s, cid)
    assert view.phone_masked == phone[:3] + "****" + phone[-4:]
    assert view.pseudonym.startswith("碳友")


async def test_same_phone_is_one_citizen_even_when_registered_concurrently(
    runtime: Runtime,
) -> None:
    phone = new_phone()

    async def register() -> uuid.UUID:
        async with runtime.db.transaction() as s:
            return await citizens.get_or_create_citizen(s, phone)

    ids = await asyncio.gather(*(register() for _ in range(6)))
    assert len(set(ids)) == 1
    async with runtime.db.session() as s:
        n = await s.scalar(select(func.count()).select_from(Citizen).where(
            Citizen.phone_bidx == blind_index(phone, context=citizens.PHONE_CONTEXT)))
    assert n == 1


async def test_invalid_phone_creates_nothing(runtime: Runtime) -> None:
    async with runtime.db.session() as s:
        before = await s.scalar(select(func.count()).select_from(Citizen))
    with pytest.raises(Invalid):
        async with runtime.db.transaction() as s:
            await citizens.get_or_create_citizen(s, "12345")
    async with runtime.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Citizen)) == before


async def test_export_contains_the_decrypted_phone(runtime: Runtime) -> None:
    phone = new_phone()
    async with runtime.db.transaction() as s:
        cid = await citizens.get_or_create_citizen(s, phone)
        await sessions.issue_tokens(s, cid)
    async with runtime.db.session() as s:
        data = await citizens.export_citizen(s, cid)
    assert data["phone"] == phone and data["id"] == str(cid)
    assert len(data["logins"]) == 1


async def test_erasure_removes_pii_keeps_pseudonym_and_revokes_sessions(runtime: Runtime) -> None:
    phone = new_phone()
    async with runtime.db.transaction() as s:
        cid = await citizens.get_or_create_citizen(s, phone)
        await sessions.issue_tokens(s, cid)
        before = await citizens.count_citizens(s)
        pseudonym = (await citizens.get_citizen(s, cid)).pseudonym
    async with runtime.db.transaction() as s:
        await citizens.erase_citizen(s, cid)
        await citizens.erase_citizen(s, cid)  # twice is harmless
    async with runtime.db.session() as s:
        row = await s.get(Citizen, cid)
        assert row is not None
        assert row.phone_enc is None and row.phone_bidx is None and row.erased_at is not None
        assert row.pseudonym == pseudonym
        live = await s.scalar(select(func.count()).select_from(RefreshToken).where(
            RefreshToken.citizen_id == cid, RefreshToken.revoked_at.is_(None)))
        assert live == 0
        assert await citizens.find_citizen_by_phone(s, phone) is None
        assert await citizens.count_citizens(s) == before - 1
        view = await citizens.get_citizen(s, cid)
        assert view.phone_masked is None and view.erased_at is not None
        assert (await citizens.export_citizen(s, cid))["phone"] is None
    # The number may register again: as a new citizen, with no link to the erased one.
    async with runtime.db.transaction() as s:
        assert await citizens.get_or_create_citizen(s, phone) != cid


async def test_art36_count_of_registered_citizens_grows_with_registrations(
    runtime: Runtime,
) -> None:
    async with runtime.db.session() as s:
        before = await citizens.count_citizens(s)
    async with runtime.db.transaction() as s:
        await citizens.get_or_create_citizen(s, new_phone())
        await citizens.get_or_create_citizen(s, new_phone())
    async with runtime.db.session() as s:
        assert await citizens.count_citizens(s) == before + 2


async def test_unknown_citizen_is_not_found(runtime: Runtime) -> None:
    async with runtime.db.session() as s:
        with pytest.raises(NotFound) as info:
            await citizens.get_citizen(s, uuid.uuid4())
    assert info.value.code == "citizen.not_found"
