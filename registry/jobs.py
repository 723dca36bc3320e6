"""Periodic work of the registry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from registry import flows
from registry.models import Instalment, Project


async def lapse_overdue_revisions(session: AsyncSession, *, actor: str,
                                  now: datetime | None = None) -> int:
    """Every application whose revision deadline passed is rejected (Art. 39: 2 years)."""
    at = now or clock.now()
    today = clock.business_date(at)
    n = 0
    for kind, model in (("project", Project), ("instalment", Instalment)):
        ids = (await session.execute(
            select(model.id).where(model.state == "revision_requested",
                                   model.revision_deadline < today)
        )).scalars().all()
        for sid in ids:
            subject = await flows.load(session, kind, sid)  # type: ignore[arg-type]
            await flows.lapse_revision(session, subject, actor=actor, now=at)
            n += 1
    return n
