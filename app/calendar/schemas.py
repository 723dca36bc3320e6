"""Request and response bodies of the calendar API."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from app.calendar.service import HolidayRange, MakeUpDay, PublishedYear, Schedule


class HolidayIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["国庆节"])
    start: date
    end: date


class WorkdayIn(BaseModel):
    date: date
    name: str | None = Field(default=None, max_length=100)


class ScheduleIn(BaseModel):
    """Holidays (days off, inclusive ranges) and make-up working days (调休上班); every other
    day is a working day Monday to Friday."""

    holidays: list[HolidayIn] = Field(default_factory=list, max_length=100)
    workdays: list[WorkdayIn] = Field(default_factory=list, max_length=100)

    def to_schedule(self) -> Schedule:
        return Schedule(
            holidays=tuple(HolidayRange(h.name, h.start, h.end) for h in self.holidays),
            workdays=tuple(MakeUpDay(w.date, w.name) for w in self.workdays),
        )


class DayOut(BaseModel):
    date: date
    is_working_day: bool
    holiday_name: str | None


class YearOut(BaseModel):
    year: int
    source: str
    published_at: datetime
    working_days: int
    days: list[DayOut]

    @classmethod
    def of(cls, y: PublishedYear) -> YearOut:
        return cls(
            year=y.year, source=y.source, published_at=y.published_at,
            working_days=sum(1 for _, w, _ in y.days if w),
            days=[DayOut(date=d, is_working_day=w, holiday_name=n) for d, w, n in y.days],
        )
