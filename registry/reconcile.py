"""Reconciliation (对账): for every project, issued = held + locked + cancelled, and no serial
lies in two blocks (Art. 30). ``tanhui registry check`` runs it."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_PER_PROJECT = text("""
    WITH issued AS (
        SELECT project_id, sum(quantity) AS issued FROM registry_issuances GROUP BY project_id
    ), blocks AS (
        SELECT project_id,
               sum(serial_end - serial_start + 1) FILTER (WHERE state = 'held') AS held,
               sum(serial_end - serial_start + 1) FILTER (WHERE state = 'locked') AS locked,
               sum(serial_end - serial_start + 1) FILTER (WHERE state = 'cancelled')
                   AS cancelled
        FROM registry_blocks GROUP BY project_id
    )
    SELECT p.no, coalesce(i.issued, 0) AS issued, coalesce(b.held, 0) AS held,
           coalesce(b.locked, 0) AS locked, coalesce(b.cancelled, 0) AS cancelled
    FROM issued i FULL JOIN blocks b ON b.project_id = i.project_id
    JOIN registry_projects p ON p.id = coalesce(i.project_id, b.project_id)
    WHERE coalesce(i.issued, 0)
          <> coalesce(b.held, 0) + coalesce(b.locked, 0) + coalesce(b.cancelled, 0)
    ORDER BY p.no
""")

# Blocks of one issuance, in serial order, must tile 1..quantity with no gap and no overlap.
_TILING = text("""
    WITH ordered AS (
        SELECT b.issuance_id, b.serial_start, b.serial_end, i.quantity, i.no,
               lag(b.serial_end) OVER w AS prev_end,
               row_number() OVER w AS rn, count(*) OVER (PARTITION BY b.issuance_id) AS n
        FROM registry_blocks b JOIN registry_issuances i ON i.id = b.issuance_id
        WINDOW w AS (PARTITION BY b.issuance_id ORDER BY b.serial_start, b.serial_end)
    )
    SELECT no, serial_start, serial_end, prev_end, quantity, rn, n FROM ordered
    WHERE (rn = 1 AND serial_start <> 1)
       OR (rn > 1 AND serial_start <> prev_end + 1)
       OR (rn = n AND serial_end <> quantity)
    ORDER BY no, serial_start
""")

_ORPHANS = text("""
    SELECT i.no FROM registry_issuances i
    WHERE NOT EXISTS (SELECT 1 FROM registry_blocks b WHERE b.issuance_id = i.id)
""")


async def reconcile(session: AsyncSession) -> list[str]:
    """Every difference found, as a sentence; empty when the registry is consistent."""
    problems: list[str] = []
    for r in (await session.execute(_PER_PROJECT)).all():
        problems.append(
            f"project {r.no}: issued {r.issued} != held {r.held} + locked {r.locked} "
            f"+ cancelled {r.cancelled}"
        )
    for r in (await session.execute(_TILING)).all():
        if r.rn > 1 and r.serial_start <= r.prev_end:
            problems.append(f"issuance {r.no}: serials {r.serial_start}-{r.prev_end} lie in "
                            "two blocks")
        elif r.rn > 1 and r.serial_start > r.prev_end + 1:
            problems.append(f"issuance {r.no}: serials {r.prev_end + 1}-{r.serial_start - 1} "
                            "lie in no block")
        if r.rn == 1 and r.serial_start != 1:
            problems.append(f"issuance {r.no}: serials 1-{r.serial_start - 1} lie in no block")
        if r.rn == r.n and r.serial_end != r.quantity:
            problems.append(f"issuance {r.no}: blocks end at {r.serial_end}, issued "
                            f"{r.quantity}")
    for no in (await session.execute(_ORPHANS)).scalars():
        problems.append(f"issuance {no}: no block")
    return problems
