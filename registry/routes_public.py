"""Public disclosure routes (Art. 36), no login: ``/public/registry/...``."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from app.deps import Db, RuntimeDep
from app.ratelimit import Limit, limiter_for
from registry import catalog, credits, disclosure, flows, reports
from registry.errors import not_found
from registry.models import Comment, Notice
from registry.schemas import (
    BlockView,
    CommentIn,
    CommentOut,
    FraudReceiptOut,
    FraudReportIn,
    MethodologyOut,
    NoticeOut,
)

PUBLIC_LIMIT = Limit("public.registry", "120/minute")
REPORT_LIMIT = Limit("public.registry.report", "5/minute;50/day")


async def _public_limit(request: Request, runtime: RuntimeDep) -> None:
    host = request.client.host if request.client else "unknown"
    await limiter_for(runtime).hit(PUBLIC_LIMIT, host, code="public.rate_limited")


router = APIRouter(prefix="/public/registry", tags=["registry: disclosure (Art. 36)"],
                   dependencies=[Depends(_public_limit)])

Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]


def _answer(name: str, rows: list[dict[str, Any]], fmt: str) -> Any:
    if fmt == "csv":
        return Response(
            "\ufeff" + disclosure.to_csv(rows), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="cqcer-{name}.csv"'},
        )
    return rows


@router.get("/datasets/{name}", summary="A public dataset as JSON or CSV")
async def get_dataset(name: Literal["projects", "registrations", "issuances", "cancellations",
                                    "project_cancellations", "notices", "methodologies"],
                      db: Db, format: Format = "json") -> Any:
    async with db.transaction() as session:
        rows = await disclosure.dataset(session, name)
    return _answer(name, rows, format)


@router.get("/methodologies", response_model=list[MethodologyOut])
async def methodologies(db: Db) -> list[MethodologyOut]:
    async with db.transaction() as session:
        return await catalog.list_methodologies(session, published_only=True)


@router.get("/notices/{notice_id}", summary="A notice with its comments and replies")
async def notice(notice_id: UUID, db: Db) -> dict[str, Any]:
    async with db.transaction() as session:
        n = await session.get(Notice, notice_id)
        if n is None:
            raise not_found("notice")
        comments = (await session.execute(
            select(Comment).where(Comment.notice_id == notice_id).order_by(Comment.created_at)
        )).scalars().all()
        return {"notice": NoticeOut.model_validate(n).model_dump(mode="json"),
                "comments": [CommentOut.model_validate(c).model_dump(mode="json")
                             for c in comments]}


@router.post("/notices/{notice_id}/comments", status_code=201, response_model=CommentOut)
async def comment(notice_id: UUID, body: CommentIn, db: Db) -> CommentOut:
    """The public comments on a notice during its 20 working days (Art. 17)."""
    async with db.transaction() as session:
        c = await flows.add_comment(session, notice_id, author_name=body.author_name,
                                    body=body.body, objection=body.objection)
        return CommentOut.model_validate(c)


@router.get("/serials/{serial}", response_model=BlockView,
            summary="Which block holds serial S, and in what state")
async def serial(serial: str, db: Db) -> BlockView:
    async with db.transaction() as session:
        found = await credits.find_serial(session, serial)
    if found is None:
        raise not_found("serial")
    return found


@router.post("/reports", status_code=201, response_model=FraudReceiptOut,
             summary="Report fraud (举报, Art. 41): anyone, no login, anonymous allowed")
async def report_fraud(body: FraudReportIn, request: Request, runtime: RuntimeDep,
                       db: Db) -> FraudReceiptOut:
    """任何单位和个人都有权举报减排项目、减排量交易及相关活动中的弄虚作假等违法行为 (Art. 41).
    The answer is a receipt; the registry agency investigates and closes the report."""
    host = request.client.host if request.client else "unknown"
    await limiter_for(runtime).hit(REPORT_LIMIT, host, code="public.rate_limited")
    async with db.transaction() as session:
        return await reports.file_report(session, body)
