"""Disclosure (信息公开, Art. 22, 29, 36) without login: methodologies, projects, notices and
comments, registrations, issuances, cancellations; CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock

PUBLIC_STATES = ("submitted", "in_notice", "applied", "under_assessment",
                 "revision_requested", "assessed", "letter_issued", "registered", "rejected",
                 "cancelled", "revoked", "legacy")

_QUERIES: dict[str, str] = {
    "projects": """
        SELECT p.no, p.title, p.category, m.code AS methodology, o.name AS owner,
               p.district_code, p.site, p.operation_start, p.crediting_start, p.crediting_end,
               p.state, p.registered_at, p.cancelled_at, p.cancel_ground, p.revoked_at
        FROM registry_projects p JOIN registry_methodologies m ON m.id = p.methodology_id
        JOIN organisations o ON o.id = p.owner_id
        WHERE p.state = ANY(:states) ORDER BY p.no""",
    "registrations": """
        SELECT 'project' AS kind, p.no AS project_no, NULL::int AS instalment_no, p.title,
               o.name AS owner, p.category, p.registered_at, NULL::date AS period_start,
               NULL::date AS period_end, NULL::bigint AS verified_tonnes
        FROM registry_projects p JOIN organisations o ON o.id = p.owner_id
        WHERE p.registered_at IS NOT NULL
        UNION ALL
        SELECT 'instalment', p.no, i.no, p.title, o.name, p.category, i.registered_at,
               i.period_start, i.period_end, i.verified_tonnes
        FROM registry_instalments i JOIN registry_projects p ON p.id = i.project_id
        JOIN organisations o ON o.id = p.owner_id WHERE i.registered_at IS NOT NULL
        ORDER BY registered_at, project_no""",
    "issuances": """
        SELECT p.no AS project_no, ins.no AS instalment_no, s.vintage, s.category, s.quantity,
               'CQCER-' || p.no || '-' || ins.no || '-' || s.vintage || '-1-' || s.quantity
                   AS serial_range,
               o.name AS owner, s.issued_at
        FROM registry_issuances s JOIN registry_projects p ON p.id = s.project_id
        JOIN registry_instalments ins ON ins.id = s.instalment_id
        JOIN organisations o ON o.id = p.owner_id ORDER BY s.issued_at, s.no""",
    "cancellations": """
        SELECT c.id, c.created_at, c.holder_name, c.quantity, c.purpose, c.beneficiary,
               string_agg('CQCER-' || b.project_no || '-' || b.instalment_no || '-' ||
                          b.vintage || '-' || b.serial_start || '-' || b.serial_end, ' '
                          ORDER BY b.project_no, b.serial_start) AS serials
        FROM registry_cancellations c JOIN registry_blocks b ON b.cancellation_id = c.id
        GROUP BY c.id ORDER BY c.created_at""",
    "project_cancellations": """
        SELECT p.no, p.title, o.name AS owner, p.cancel_ground, p.closed_reason AS reason,
               p.cancelled_at
        FROM registry_projects p JOIN organisations o ON o.id = p.owner_id
        WHERE p.state = 'cancelled' ORDER BY p.cancelled_at""",
    "notices": """
        SELECT n.id, n.subject_kind, n.title, p.no AS project_no, n.starts_on, n.ends_on,
               n.published_at,
               (SELECT count(*) FROM registry_comments c WHERE c.notice_id = n.id) AS comments
        FROM registry_notices n JOIN registry_projects p ON p.id = n.project_id
        WHERE n.ends_on >= :today ORDER BY n.ends_on, n.published_at""",
    "methodologies": """
        SELECT m.code, m.title, m.category, m.field, m.status, v.version, v.status AS
               version_status, v.published_at, v.formula, v.monitoring_plan_ref
        FROM registry_methodologies m JOIN registry_methodology_versions v
             ON v.methodology_id = m.id
        WHERE m.status <> 'draft' AND v.status <> 'draft' ORDER BY m.code, v.version""",
}

DATASETS = tuple(_QUERIES)


async def dataset(session: AsyncSession, name: str, *, today: date | None = None
                  ) -> list[dict[str, Any]]:
    """The rows of one public dataset (a fixed, reviewed query; no personal data)."""
    params: dict[str, Any] = {}
    if ":states" in _QUERIES[name]:
        params["states"] = list(PUBLIC_STATES)
    if ":today" in _QUERIES[name]:
        params["today"] = today or clock.today()
    rows = (await session.execute(text(_QUERIES[name]), params)).mappings().all()
    return [dict(r) for r in rows]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with a header row (UTF-8 BOM added by the caller for spreadsheet users)."""
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else str(v) for k, v in r.items()})
    return out.getvalue()
