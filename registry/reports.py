"""Reports of fraud (举报, Art. 41): 任何单位和个人都有权举报减排项目、减排量交易及相关活动中的
弄虚作假等违法行为. Anyone files a report on the public surface; the registry agency (or the
bureau) reads and closes it with an outcome. Reports are never deleted (Art. 17 trigger).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock, crypto
from registry.errors import not_found, wrong_state
from registry.models import FraudReport
from registry.schemas import FraudReceiptOut, FraudReportIn, FraudReportOut

CONTACT_CONTEXT = "registry.fraud_report.contact"


async def file_report(session: AsyncSession, data: FraudReportIn, *,
                      now: datetime | None = None) -> FraudReceiptOut:
    """Record a report and answer its receipt. The audit entry names no reporter."""
    at = now or clock.now()
    r = FraudReport(
        id=uuid.uuid4(), subject=data.subject, reference=data.reference, body=data.body,
        reporter_name=data.reporter_name,
        contact_enc=crypto.encrypt(data.contact, context=CONTACT_CONTEXT)
        if data.contact else None,
        status="received", created_at=at,
    )
    session.add(r)
    await session.flush()
    await audit.append(session, actor="public", action="fraud_report.file",
                       entity="registry_fraud_report", entity_id=str(r.id), now=at,
                       data={"subject": r.subject})
    return FraudReceiptOut(id=r.id, subject=data.subject, status="received", received_at=at)


def _out(r: FraudReport) -> FraudReportOut:
    return FraudReportOut.model_validate({
        "id": r.id, "subject": r.subject, "reference": r.reference, "body": r.body,
        "reporter_name": r.reporter_name,
        "contact": crypto.decrypt(r.contact_enc, context=CONTACT_CONTEXT)
        if r.contact_enc else None,
        "status": r.status, "outcome": r.outcome, "handled_by": r.handled_by,
        "created_at": r.created_at, "closed_at": r.closed_at,
    })


async def list_reports(session: AsyncSession, *,
                       status: Literal["received", "closed"] | None = None,
                       limit: int = 100) -> list[FraudReportOut]:
    """Reports, oldest first (the open ones are worked in the order they came in)."""
    q = select(FraudReport).order_by(FraudReport.created_at, FraudReport.id).limit(limit)
    if status is not None:
        q = q.where(FraudReport.status == status)
    return [_out(r) for r in (await session.execute(q)).scalars().all()]


async def close_report(session: AsyncSession, report_id: UUID, *, outcome: str, actor: str,
                       now: datetime | None = None) -> FraudReportOut:
    """Close a report with the outcome of the investigation (once)."""
    at = now or clock.now()
    r = await session.get(FraudReport, report_id, with_for_update=True)
    if r is None:
        raise not_found("fraud_report")
    if r.status != "received":
        raise wrong_state("fraud report", r.status, "received")
    r.status, r.outcome, r.handled_by, r.closed_at = "closed", outcome, actor, at
    await session.flush()
    await audit.append(session, actor=actor, action="fraud_report.close",
                       entity="registry_fraud_report", entity_id=str(r.id), now=at)
    return _out(r)
