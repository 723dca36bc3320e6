"""Tables of the working-day calendar."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Date, DateTime, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CalendarYear(Base):
    """A year whose schedule is published (已发布年度). ``version`` changes on every import,
    from a sequence, so a cached year is valid exactly while its version is unchanged."""

    __tablename__ = "calendar_years"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("source IN ('chinese-calendar', 'operator')", name="source_known"),
    )


class CalendarDay(Base):
    """One day: working (工作日, including make-up days 调休上班) or not (休息日)."""

    __tablename__ = "calendar_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    is_working_day: Mapped[bool] = mapped_column(Boolean)
    holiday_name: Mapped[str | None] = mapped_column(Text)
