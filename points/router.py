"""HTTP routes of the citizen's points (``/v1/me``): profile, points, lots, statement, holds
(export and deletion span domains and live in ``accounts/``). Art. 34: there is no route that
moves points between accounts or lets anyone but the citizen (through a hold) take points out."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from app.deps import CurrentCitizen, Db
from points import service
from points.errors import HoldNotFound
from points.schemas import (
    BalanceOut,
    EntryOut,
    HoldIn,
    HoldList,
    HoldOut,
    LotList,
    LotOut,
    MeOut,
    SourceOut,
    StatementOut,
)

router = APIRouter(prefix="/v1/me", tags=["account (citizen)"])


def _balance(b: service.BalanceView) -> BalanceOut:
    return BalanceOut(available=b.available, held=b.held, expiring_30d=b.expiring_30d)


def _hold(h: service.HoldView) -> HoldOut:
    return HoldOut(id=h.id, points=h.points, status=h.status, expires_at=h.expires_at,
                   reference=h.reference)


def _entry(e: service.EntryView) -> EntryOut:
    source = None
    if e.kind == "credit":
        source = SourceOut.model_validate({
            "scene_id": e.scene_id, "event_id": e.event_id, "behaviour": e.behaviour,
            "occurred_at": e.occurred_at, "grams": e.grams, "grams_per_point": e.grams_per_point,
            "reduction_rule_version_id": e.reduction_rule_version_id,
            "conversion_rule_version_id": e.conversion_rule_version_id,
        })
    return EntryOut(id=e.id, kind=e.kind, points=e.points, created_at=e.created_at,
                    hold_id=e.hold_id, reference=e.reference, source=source)


@router.get("", response_model=MeOut, summary="My profile and points")
async def me(who: CurrentCitizen, db: Db) -> MeOut:
    from app.auth.citizens import get_citizen

    async with db.transaction() as session:
        citizen = await get_citizen(session, who.id)
        bal = await service.balance(session, who.id)
    return MeOut(id=citizen.id, pseudonym=citizen.pseudonym, phone_masked=citizen.phone_masked,
                 created_at=citizen.created_at, points=_balance(bal))


@router.get("/points", response_model=BalanceOut, summary="My points balance")
async def my_points(who: CurrentCitizen, db: Db) -> BalanceOut:
    async with db.transaction() as session:
        return _balance(await service.balance(session, who.id))


@router.get("/points/lots", response_model=LotList,
            summary="My lots, first-expiring-first (each valid at most 5 years)")
async def my_lots(
    who: CurrentCitizen, db: Db,
    include_spent: Annotated[bool, Query(description="also spent and expired lots")] = False,
) -> LotList:
    async with db.transaction() as session:
        lots = await service.list_lots(session, who.id, include_spent=include_spent)
    return LotList(items=[
        LotOut(id=lot.id, points=lot.points, remaining=lot.remaining, expired=lot.expired,
               credited_at=lot.credited_at, expires_at=lot.expires_at, entry_id=lot.entry_id)
        for lot in lots
    ])


@router.get("/points/statement", response_model=StatementOut,
            summary="My statement, newest first; every credit names its source")
async def my_statement(
    who: CurrentCitizen, db: Db,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StatementOut:
    async with db.transaction() as session:
        page = await service.statement(session, who.id, cursor=cursor, limit=limit)
    return StatementOut(items=[_entry(e) for e in page.items], next_cursor=page.next_cursor)


@router.get("/points/holds", response_model=HoldList, summary="My active holds")
async def my_holds(who: CurrentCitizen, db: Db) -> HoldList:
    async with db.transaction() as session:
        return HoldList(items=[_hold(h) for h in await service.open_holds(session, who.id)])


@router.post("/points/holds", response_model=HoldOut, status_code=201,
             summary="Set points aside for a redemption (冻结)")
async def place_hold(body: HoldIn, who: CurrentCitizen, db: Db) -> HoldOut:
    async with db.transaction() as session:
        return _hold(await service.hold(session, who.id, body.points, reference=body.reference))


@router.get("/points/holds/{hold_id}", response_model=HoldOut, summary="One of my holds")
async def my_hold(hold_id: UUID, who: CurrentCitizen, db: Db) -> HoldOut:
    async with db.transaction() as session:
        h = await service.get_hold(session, hold_id)
    if h.citizen_id != who.id:
        raise HoldNotFound()
    return _hold(h)


@router.post("/points/holds/{hold_id}/release", response_model=HoldOut,
             summary="Release my hold: its points return to their lots")
async def release_hold(hold_id: UUID, who: CurrentCitizen, db: Db) -> HoldOut:
    async with db.transaction() as session:
        return _hold(await service.release(session, hold_id, citizen_id=who.id))
