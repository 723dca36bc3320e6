"""Reports of the points mall: a merchant's redemptions and settlement, and the public
disclosure of redemption statistics and merchants (Art. 36)."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from uuid import UUID

from sqlalchemy import and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import SHANGHAI
from mall import errors
from mall.models import Offer, Voucher
from mall.schemas import (
    PublicMerchant,
    Redemption,
    Settlement,
    SettlementRow,
    StatRow,
)
from mall.service import decode_cursor, encode_cursor

MAX_PERIOD_DAYS = 366
# Days a report may cover: their bounds as instants stay inside what timestamptz and
# ``date + 1 day`` hold (year 1 at +08:00 is before year 1 UTC; 9999-12-31 has no next day).
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2999, 12, 31)


def period_bounds(date_from: date, date_to: date) -> tuple[datetime, datetime]:
    """``[date_from 00:00, date_to+1 00:00)`` in Asia/Shanghai, as instants."""
    if date_to < date_from:
        raise errors.invalid("period_invalid", "date_to must not be before date_from.")
    if date_from < FIRST_DAY or date_to > LAST_DAY:
        raise errors.invalid("period_invalid", f"A period lies within {FIRST_DAY}–{LAST_DAY}.")
    if (date_to - date_from).days >= MAX_PERIOD_DAYS:
        raise errors.invalid("period_too_long", f"A period is at most {MAX_PERIOD_DAYS} days.")
    start = datetime.combine(date_from, time(0), SHANGHAI)
    end = datetime.combine(date_to + timedelta(days=1), time(0), SHANGHAI)
    return start, end


async def list_redemptions(
    session: AsyncSession, merchant_id: UUID, *, date_from: date, date_to: date,
    cursor: str | None = None, limit: int = 50,
) -> tuple[list[Redemption], str | None]:
    """The merchant's verified vouchers in a period, newest first (no citizen identity)."""
    start, end = period_bounds(date_from, date_to)
    stmt = (
        select(Voucher, Offer.title_zh, Offer.title_en)
        .join(Offer, Offer.id == Voucher.offer_id)
        .where(
            Voucher.merchant_id == merchant_id, Voucher.status == "used",
            Voucher.used_at >= start, Voucher.used_at < end,
        )
        .order_by(Voucher.used_at.desc(), Voucher.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        at, id_ = decode_cursor(cursor)
        stmt = stmt.where(
            or_(Voucher.used_at < at, and_(Voucher.used_at == at, Voucher.id < id_))
        )
    rows = (await session.execute(stmt)).all()
    items = [
        Redemption(
            voucher_id=v.id, offer_id=v.offer_id, title_zh=tz, title_en=te, store_id=v.store_id,
            price_points=v.price_points, issued_at=v.issued_at, used_at=v.used_at,
            status=v.status,
        )
        for v, tz, te in rows[:limit]
    ]
    nxt = None
    if len(rows) > limit and items[-1].used_at is not None:
        nxt = encode_cursor(items[-1].used_at, items[-1].voucher_id)
    return items, nxt


async def settlement(
    session: AsyncSession, merchant_id: UUID, *, date_from: date, date_to: date
) -> Settlement:
    """Count and points of the merchant's verified vouchers in a period, by offer and store.
    Points are shown as points: they have no money value (Art. 34)."""
    start, end = period_bounds(date_from, date_to)
    rows = (
        await session.execute(
            text(
                "SELECT v.offer_id, o.title_zh, v.store_id, s.name AS store_name, "
                "count(*) AS n, sum(v.price_points) AS points "
                "FROM mall_vouchers v JOIN mall_offers o ON o.id = v.offer_id "
                "LEFT JOIN mall_stores s ON s.id = v.store_id "
                "WHERE v.merchant_id = :m AND v.status = 'used' "
                "AND v.used_at >= :start AND v.used_at < :end "
                "GROUP BY v.offer_id, o.title_zh, v.store_id, s.name "
                "ORDER BY o.title_zh, s.name NULLS LAST"
            ),
            {"m": merchant_id, "start": start, "end": end},
        )
    ).all()
    out = [
        SettlementRow(
            offer_id=r.offer_id, title_zh=r.title_zh, store_id=r.store_id,
            store_name=r.store_name, count=r.n, points=int(r.points),
        )
        for r in rows
    ]
    return Settlement(
        merchant_id=merchant_id, date_from=date_from, date_to=date_to, rows=out,
        total_count=sum(r.count for r in out), total_points=sum(r.points for r in out),
    )


def settlement_csv(report: Settlement) -> str:
    """The settlement as CSV (UTF-8; the router adds a BOM so spreadsheet tools read zh-CN)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["date_from", "date_to", "offer_id", "offer_title", "store_id", "store_name",
                "count", "points"])
    for r in report.rows:
        w.writerow([report.date_from, report.date_to, r.offer_id, r.title_zh, r.store_id or "",
                    r.store_name or "", r.count, r.points])
    w.writerow([report.date_from, report.date_to, "", "TOTAL", "", "", report.total_count,
                report.total_points])
    return buf.getvalue()


async def public_stats(session: AsyncSession, *, year: int | None = None) -> list[StatRow]:
    """Art. 36: redemption statistics by month (Asia/Shanghai) and category — vouchers used
    (points cancelled) and vouchers issued. Aggregates only: nothing about any citizen."""
    params: dict[str, object] = {}
    where = ""
    if year is not None:
        start = datetime(year, 1, 1, tzinfo=SHANGHAI)
        params = {"start": start, "end": datetime(year + 1, 1, 1, tzinfo=SHANGHAI)}
        where = "AND at >= :start AND at < :end"
    rows = (
        await session.execute(
            text(
                "WITH e AS ("
                "  SELECT used_at AS at, category, 1 AS used, price_points AS points, 0 AS issued"
                "  FROM mall_vouchers WHERE status = 'used'"
                "  UNION ALL"
                "  SELECT issued_at, category, 0, 0, 1 FROM mall_vouchers"
                ") "
                "SELECT to_char(at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') AS month, category, "
                "sum(used) AS redemptions, sum(points) AS points, sum(issued) AS issued "
                f"FROM e WHERE true {where} GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            params,
        )
    ).all()
    return [
        StatRow(month=r.month, category=r.category, redemptions=int(r.redemptions),
                points=int(r.points), vouchers_issued=int(r.issued))
        for r in rows
    ]


async def public_merchants(session: AsyncSession) -> list[PublicMerchant]:
    """Art. 36: the merchants accepting points (active ones), with their stores and the
    categories they offer."""
    rows = (
        await session.execute(
            text(
                "SELECT m.id, m.name, m.name_en, m.agreement_signed_on, m.is_demo, "
                "(SELECT count(*) FROM mall_stores s WHERE s.merchant_id = m.id "
                "  AND s.status = 'open') AS stores, "
                "COALESCE((SELECT array_agg(DISTINCT o.category ORDER BY o.category) "
                "  FROM mall_offers o WHERE o.merchant_id = m.id "
                "  AND o.status IN ('on_sale', 'paused')), '{}') AS categories "
                "FROM mall_merchants m WHERE m.status = 'active' ORDER BY m.name"
            )
        )
    ).all()
    return [
        PublicMerchant(id=r.id, name=r.name, name_en=r.name_en, stores=r.stores,
                       categories=list(r.categories), since=r.agreement_signed_on,
                       is_demo=r.is_demo)
        for r in rows
    ]

