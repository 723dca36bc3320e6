"""Working days (工作日) for statutory deadlines, e.g. the 20-working-day public notice (公示).

A day is a working day exactly as the year's published schedule says: Monday to Friday unless
a public holiday (法定节假日), and Saturday or Sunday only when it is a make-up working day
(调休上班). A computation that needs a year without a published schedule is refused with
``calendar.year_not_published`` — never silently weekends-only.

Each process caches a year's days. The cache is keyed by the year's ``version``, drawn from a
database sequence on every import and read (one small query) on every call, so a cached year is
used exactly while it is still the committed one in any process; a version is never reused,
even when an import rolls back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit, clock
from app.errors import Invalid, NotFound

MIN_YEAR, MAX_YEAR = 2000, 2100
_LOCK_CLASS = 0x63616C  # "cal": advisory lock class of calendar imports, one lock per year

DayRow = tuple[date, bool, str | None]


@dataclass(frozen=True, slots=True)
class HolidayRange:
    """Consecutive days off for one holiday (放假), ``start`` to ``end`` inclusive."""

    name: str
    start: date
    end: date


@dataclass(frozen=True, slots=True)
class MakeUpDay:
    """A weekend day worked in exchange for a holiday (调休上班)."""

    day: date
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A year as the State Council publishes it: holidays and make-up working days; every
    other day is a working day from Monday to Friday and a rest day on Saturday and Sunday."""

    holidays: tuple[HolidayRange, ...] = ()
    workdays: tuple[MakeUpDay, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishedYear:
    year: int
    source: str
    published_at: datetime
    days: list[DayRow] = field(default_factory=list)


# --- the per-process cache ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Year:
    version: int
    first: date
    working: bytes  # one byte per day of the year: 1 = working day
    cumulative: tuple[int, ...]  # cumulative[i] = working days among the first i days

    def is_working(self, day: date) -> bool:
        return self.working[(day - self.first).days] == 1

    def count_after(self, day: date) -> int:
        """Working days of this year strictly after ``day`` (``day`` may precede the year)."""
        index = max((day - self.first).days + 1, 0)
        return self.cumulative[-1] - self.cumulative[index]

    def nth_after(self, day: date, n: int) -> date:
        """The n-th working day strictly after ``day``, within this year (caller checked)."""
        index = max((day - self.first).days + 1, 0)
        target = self.cumulative[index] + n
        # The first position whose cumulative count reaches the target.
        lo, hi = index, len(self.working)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cumulative[mid + 1] >= target:
                hi = mid
            else:
                lo = mid + 1
        return self.first + timedelta(days=lo)


_cache: dict[int, _Year] = {}


def _not_published(year: int) -> Invalid:
    return Invalid(
        "calendar.year_not_published",
        f"{year}年的工作日历尚未发布 (the working-day calendar for {year} is not published).",
        year=year,
    )


async def _years(session: AsyncSession, first: int, last: int) -> dict[int, _Year]:
    """The cached calendars of years ``first..last``; refuse if any is unpublished."""
    versions: dict[int, int] = dict(
        (
            await session.execute(
                text("SELECT year, version FROM calendar_years WHERE year BETWEEN :a AND :b"),
                {"a": first, "b": last},
            )
        ).all()
    )
    result: dict[int, _Year] = {}
    for year in range(first, last + 1):
        version = versions.get(year)
        if version is None:
            raise _not_published(year)
        cached = _cache.get(year)
        if cached is None or cached.version != version:
            cached = await _load(session, year, version)
            _cache[year] = cached
        result[year] = cached
    return result


async def _load(session: AsyncSession, year: int, version: int) -> _Year:
    rows = (
        await session.execute(
            text(
                "SELECT day, is_working_day FROM calendar_days "
                "WHERE day BETWEEN :a AND :b ORDER BY day"
            ),
            {"a": date(year, 1, 1), "b": date(year, 12, 31)},
        )
    ).all()
    first = date(year, 1, 1)
    if len(rows) != (date(year + 1, 1, 1) - first).days:
        raise _not_published(year)  # a year is only ever written whole; be safe anyway
    working = bytes(1 if w else 0 for _, w in rows)
    cumulative = [0]
    for flag in working:
        cumulative.append(cumulative[-1] + flag)
    return _Year(version=version, first=first, working=working, cumulative=tuple(cumulative))


def invalidate(year: int | None = None) -> None:
    """Forget cached years (all, or one). Correctness never depends on calling this."""
    if year is None:
        _cache.clear()
    else:
        _cache.pop(year, None)


# --- queries ------------------------------------------------------------------------------


async def is_working_day(session: AsyncSession, day: date) -> bool:
    """Whether ``day`` is a statutory working day."""
    return (await _years(session, day.year, day.year))[day.year].is_working(day)


async def add_working_days(session: AsyncSession, start: date, n: int) -> date:
    """The date that is ``n`` working days after ``start`` (``start`` itself not counted).

    E.g. a notice published on ``start`` for 20 working days ends on
    ``add_working_days(start, 20)``.
    """
    if n < 1:
        raise Invalid("calendar.days_invalid", "n must be at least 1.", n=n)
    remaining, after, year = n, start, (start + timedelta(days=1)).year
    while True:
        cal = (await _years(session, year, year))[year]
        available = cal.count_after(after)
        if remaining <= available:
            return cal.nth_after(after, remaining)
        remaining -= available
        after = date(year, 12, 31)
        year += 1


async def working_days_between(session: AsyncSession, start: date, end: date) -> int:
    """Working days ``d`` with ``start < d <= end`` (negative if ``end`` precedes ``start``),
    so ``working_days_between(s, add_working_days(s, n)) == n``."""
    if end < start:
        return -await working_days_between(session, end, start)
    if end == start:
        return 0
    first = (start + timedelta(days=1)).year
    years = await _years(session, first, end.year)
    total = 0
    for year, cal in years.items():
        total += cal.count_after(start)
        if year == end.year:
            total -= cal.count_after(end)
    return total


async def get_year(session: AsyncSession, year: int) -> PublishedYear:
    """A published year with all its days; ``NotFound`` if it is not published."""
    head = (
        await session.execute(
            text("SELECT source, published_at FROM calendar_years WHERE year = :y"), {"y": year}
        )
    ).first()
    if head is None:
        raise NotFound(
            "calendar.year_not_published", f"{year}年的工作日历尚未发布。", year=year
        )
    rows = (
        await session.execute(
            text(
                "SELECT day, is_working_day, holiday_name FROM calendar_days "
                "WHERE day BETWEEN :a AND :b ORDER BY day"
            ),
            {"a": date(year, 1, 1), "b": date(year, 12, 31)},
        )
    ).all()
    return PublishedYear(year=year, source=head.source, published_at=head.published_at,
                         days=[(d, w, n) for d, w, n in rows])


async def published_years(session: AsyncSession) -> list[int]:
    return list(
        (await session.execute(text("SELECT year FROM calendar_years ORDER BY year"))).scalars()
    )


# --- publishing a year --------------------------------------------------------------------


def _weekend_default(day: date) -> bool:
    return day.weekday() < 5


def _check_year(year: int) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise Invalid("calendar.year_invalid", f"The year must be {MIN_YEAR}–{MAX_YEAR}.",
                      year=year)


def _in_year(year: int, day: date, what: str) -> None:
    if day.year != year:
        raise Invalid("calendar.day_outside_year", f"{what} {day} is not in {year}.",
                      year=year, day=day.isoformat())


def expand(year: int, days: list[DayRow] | Schedule) -> list[DayRow]:
    """Every day of ``year``: listed days (or the schedule's holidays and make-up days) as
    given, other days by the weekday default."""
    _check_year(year)
    first = date(year, 1, 1)
    table: dict[date, DayRow] = {}
    if isinstance(days, Schedule):
        for h in days.holidays:
            _in_year(year, h.start, "holiday start")
            _in_year(year, h.end, "holiday end")
            if h.end < h.start or not h.name.strip():
                raise Invalid("calendar.holiday_invalid",
                              f"Holiday {h.name!r} needs a name and start ≤ end.")
            d = h.start
            while d <= h.end:
                if d in table:
                    raise Invalid("calendar.duplicate_day", f"{d} is listed twice.",
                                  day=d.isoformat())
                table[d] = (d, False, h.name.strip())
                d += timedelta(days=1)
        for w in days.workdays:
            _in_year(year, w.day, "make-up working day")
            if w.day in table:
                raise Invalid("calendar.duplicate_day",
                              f"{w.day} is both a holiday and a working day.",
                              day=w.day.isoformat())
            table[w.day] = (w.day, True, (w.name or "").strip() or None)
    else:
        for d, working, name in days:
            _in_year(year, d, "day")
            if d in table:
                raise Invalid("calendar.duplicate_day", f"{d} is listed twice.",
                              day=d.isoformat())
            table[d] = (d, bool(working), (name or "").strip() or None)
    out: list[DayRow] = []
    d = first
    while d.year == year:
        out.append(table.get(d, (d, _weekend_default(d), None)))
        d += timedelta(days=1)
    return out


def _exceptions(days: list[DayRow]) -> list[list[Any]]:
    """The days that differ from the weekday default, for the audit record."""
    return [[d.isoformat(), w, n] for d, w, n in days if w != _weekend_default(d) or n]


async def write_year(session: AsyncSession, year: int, days: list[DayRow], *, source: str,
                     now: datetime) -> None:
    """Replace a year's days and publish it under a fresh version (set-based)."""
    # Concurrent imports of one year take turns (else the second insert would collide).
    await session.execute(text("SELECT pg_advisory_xact_lock(:k, :y)"),
                          {"k": _LOCK_CLASS, "y": year})
    await session.execute(
        text("DELETE FROM calendar_days WHERE day BETWEEN :a AND :b"),
        {"a": date(year, 1, 1), "b": date(year, 12, 31)},
    )
    await session.execute(
        text(
            "INSERT INTO calendar_days (day, is_working_day, holiday_name) "
            "SELECT * FROM unnest(CAST(:d AS date[]), CAST(:w AS boolean[]), "
            "CAST(:n AS text[]))"
        ),
        {"d": [r[0] for r in days], "w": [r[1] for r in days], "n": [r[2] for r in days]},
    )
    await session.execute(
        text(
            "INSERT INTO calendar_years (year, source, published_at, version) "
            "VALUES (:y, :s, :at, nextval('calendar_version_seq')) "
            "ON CONFLICT (year) DO UPDATE SET source = EXCLUDED.source, "
            "published_at = EXCLUDED.published_at, version = EXCLUDED.version"
        ),
        {"y": year, "s": source, "at": now},
    )


async def import_year(
    session: AsyncSession,
    year: int,
    days: list[DayRow] | Schedule,
    *,
    actor: str,
    now: datetime | None = None,
) -> None:
    """Publish (or replace) ``year``'s schedule as the operator's, audited.

    ``days`` is either a :class:`Schedule` or a list of ``(day, is_working_day, name)``;
    days not given follow the weekday default (Monday–Friday working).
    """
    now = now or clock.now()
    full = expand(year, days)
    await write_year(session, year, full, source="operator", now=now)
    exceptions = _exceptions(full)
    await audit.append(
        session, actor=actor, action="calendar.import", entity="calendar_year",
        entity_id=str(year), now=now,
        data={
            "working_days": sum(1 for _, w, _ in full if w),
            "exceptions": exceptions,
            "sha256": hashlib.sha256(
                orjson.dumps([[d.isoformat(), w, n] for d, w, n in full])
            ).hexdigest(),
        },
    )
    invalidate(year)
