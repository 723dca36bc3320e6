"""The calendar over HTTP: the operator publishes a year; anyone may read it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.audit import actor_of
from app.calendar import service
from app.calendar.schemas import ScheduleIn, YearOut
from app.deps import Db, require

router = APIRouter(tags=["calendar"])

Year = Annotated[int, Path(ge=service.MIN_YEAR, le=service.MAX_YEAR)]


@router.put("/v1/admin/calendar/{year}", response_model=YearOut,
            summary="Publish or replace a year's working-day calendar")
async def put_year(
    year: Year,
    body: ScheduleIn,
    admin: require("calendar.manage"),  # type: ignore[valid-type]
    db: Db,
) -> YearOut:
    async with db.transaction() as session:
        await service.import_year(session, year, body.to_schedule(), actor=actor_of(admin))
        return YearOut.of(await service.get_year(session, year))


@router.get("/v1/admin/calendar/{year}", response_model=YearOut,
            summary="A year's working-day calendar")
async def get_year_admin(
    year: Year,
    admin: require("calendar.read"),  # type: ignore[valid-type]
    db: Db,
) -> YearOut:
    async with db.transaction() as session:
        return YearOut.of(await service.get_year(session, year))


@router.get("/public/calendar/{year}", response_model=YearOut,
            summary="A year's working-day calendar (public)")
async def get_year_public(year: Year, db: Db) -> YearOut:
    async with db.transaction() as session:
        return YearOut.of(await service.get_year(session, year))
