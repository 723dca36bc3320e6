"""calendar: the working-day calendar, seeded from the chinese-calendar package.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _package_years() -> dict[int, list[tuple[date, bool, str | None]]]:
    """Every whole year the installed chinese-calendar covers, day by day. Holiday names are
    the Chinese ones; a make-up working day carries the name of the holiday it serves."""
    import chinese_calendar
    from chinese_calendar import Holiday
    from chinese_calendar.constants import holidays, workdays

    zh = {h.value: h.chinese for h in Holiday}
    known = set(holidays) | set(workdays)
    years: dict[int, list[tuple[date, bool, str | None]]] = {}
    for year in range(min(known).year, max(known).year + 1):
        try:
            chinese_calendar.is_workday(date(year, 1, 1))
            chinese_calendar.is_workday(date(year, 12, 31))
        except NotImplementedError:
            continue
        days = []
        d = date(year, 1, 1)
        while d.year == year:
            _, name = chinese_calendar.get_holiday_detail(d)
            days.append((d, bool(chinese_calendar.is_workday(d)), zh.get(name, name)))
            d += timedelta(days=1)
        years[year] = days
    return years


def upgrade() -> None:
    op.execute("CREATE SEQUENCE calendar_version_seq")
    years = op.create_table(
        "calendar_years",
        sa.Column("year", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False,
                  server_default=sa.text("nextval('calendar_version_seq')")),
        sa.CheckConstraint("source IN ('chinese-calendar', 'operator')",
                           name="ck_calendar_years_source_known"),
        sa.PrimaryKeyConstraint("year", name="pk_calendar_years"),
    )
    days = op.create_table(
        "calendar_days",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("is_working_day", sa.Boolean, nullable=False),
        sa.Column("holiday_name", sa.Text),
        sa.PrimaryKeyConstraint("day", name="pk_calendar_days"),
    )
    seeded = _package_years()
    now = datetime.now(UTC)
    op.bulk_insert(days, [
        {"day": d, "is_working_day": w, "holiday_name": n}
        for rows in seeded.values() for d, w, n in rows
    ])
    op.bulk_insert(years, [
        {"year": y, "source": "chinese-calendar", "published_at": now} for y in sorted(seeded)
    ])


def downgrade() -> None:
    op.drop_table("calendar_days")
    op.drop_table("calendar_years")
    op.execute("DROP SEQUENCE calendar_version_seq")
