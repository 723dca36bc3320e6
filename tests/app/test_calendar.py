"""The working-day calendar (工作日历) behind statutory deadlines such as the
20-working-day public notice (Art. 17 公示), on the State Council's real schedules."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from app.auth.tokens import issue_access_token
from app.calendar import service
from app.calendar.service import DayRow, HolidayRange, MakeUpDay, Schedule
from app.cli import cli
from app.errors import Invalid, NotFound
from app.runtime import Runtime


def admin_headers(*roles: str) -> dict[str, str]:
    token = issue_access_token("admin", uuid4(), roles=set(roles or {"operator_admin"}))
    return {"Authorization": f"Bearer {token}"}


# A hypothetical 2027 arrangement (not yet published by the State Council when written).
SCHEDULE_2027 = Schedule(
    holidays=(
        HolidayRange("元旦", date(2027, 1, 1), date(2027, 1, 3)),
        HolidayRange("春节", date(2027, 2, 5), date(2027, 2, 12)),
    ),
    workdays=(MakeUpDay(date(2027, 2, 20), "春节"),),
)


async def counts(session: AsyncSession) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        (await session.execute(text(
            "SELECT (SELECT count(*) FROM calendar_days), (SELECT count(*) FROM calendar_years),"
            " (SELECT count(*) FROM audit_log)"))).one()
    )


async def test_national_day_2024(runtime: Runtime) -> None:
    """1–7 Oct 2024 off; Sunday 29 Sep and Saturday 12 Oct worked (调休上班)."""
    async with runtime.db.transaction() as s:
        for d in range(1, 8):
            assert not await service.is_working_day(s, date(2024, 10, d))
        assert await service.is_working_day(s, date(2024, 9, 29))
        assert await service.is_working_day(s, date(2024, 10, 12))
        assert not await service.is_working_day(s, date(2024, 9, 28))  # an ordinary Saturday
        assert not await service.is_working_day(s, date(2024, 10, 13))
        assert await service.is_working_day(s, date(2024, 10, 8))
        year = await service.get_year(s, 2024)
    assert year.source == "chinese-calendar"
    assert (date(2024, 10, 1), False, "国庆节") in year.days
    assert (date(2024, 9, 29), True, "国庆节") in year.days


async def test_spring_festival_2025(runtime: Runtime) -> None:
    """28 Jan–4 Feb 2025 off; Sunday 26 Jan and Saturday 8 Feb worked."""
    async with runtime.db.transaction() as s:
        for d in (28, 29, 30, 31):
            assert not await service.is_working_day(s, date(2025, 1, d))
        for d in (1, 2, 3, 4):
            assert not await service.is_working_day(s, date(2025, 2, d))
        assert await service.is_working_day(s, date(2025, 1, 26))
        assert await service.is_working_day(s, date(2025, 2, 8))
        assert await service.is_working_day(s, date(2025, 2, 5))
        assert not await service.is_working_day(s, date(2025, 2, 9))


async def test_art17_twenty_working_day_notice_from_2024_09_20(runtime: Runtime) -> None:
    """A 公示 published Fri 20 Sep 2024 for 20 working days, counted by hand from the official
    schedule: 23–27 Sep (5), Sun 29 Sep (6), 30 Sep (7), [1–7 Oct off], 8–11 Oct (11),
    Sat 12 Oct (12), 14–18 Oct (17), 21, 22, 23 Oct (20)."""
    async with runtime.db.transaction() as s:
        end = await service.add_working_days(s, date(2024, 9, 20), 20)
        assert end == date(2024, 10, 23)
        assert await service.working_days_between(s, date(2024, 9, 20), end) == 20
        assert await service.working_days_between(s, end, date(2024, 9, 20)) == -20
        assert await service.working_days_between(s, end, end) == 0
        # Starting on a holiday: the first working day after 1 Oct is Tue 8 Oct.
        assert await service.add_working_days(s, date(2024, 10, 1), 1) == date(2024, 10, 8)
        # Across a year end: 2024-12-31 (Tue) + 1 → 2025-01-02 (1 Jan is 元旦).
        assert await service.add_working_days(s, date(2024, 12, 31), 1) == date(2025, 1, 2)
        # The whole of 2024: 251 working days.
        assert await service.working_days_between(s, date(2023, 12, 31), date(2024, 12, 31)) == 251


async def test_n_must_be_positive(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        with pytest.raises(Invalid) as e:
            await service.add_working_days(s, date(2024, 9, 20), 0)
    assert e.value.code == "calendar.days_invalid"


async def test_deadline_into_unpublished_2027_is_refused_until_imported(
    runtime: Runtime,
) -> None:
    """Never weekends-only: a deadline needing 2027 waits for 2027's published schedule.

    From Sun 20 Dec 2026: 21–25 Dec (5), 28–31 Dec (9); 2027: 1–3 Jan off (元旦),
    4–8 Jan (14), 11–15 Jan (19), Mon 18 Jan (20). Weekends-only would give 15 Jan.
    """
    start = date(2026, 12, 20)
    async with runtime.db.session() as s:
        tx = await s.begin()
        with pytest.raises(Invalid) as e:
            await service.add_working_days(s, start, 20)
        assert e.value.code == "calendar.year_not_published" and e.value.status == 422
        assert e.value.extra["year"] == 2027
        assert await service.add_working_days(s, start, 9) == date(2026, 12, 31)  # 2026 only
        with pytest.raises(Invalid):
            await service.working_days_between(s, start, date(2027, 1, 5))

        await service.import_year(s, 2027, SCHEDULE_2027, actor="admin:test")
        assert await service.add_working_days(s, start, 20) == date(2027, 1, 18)
        assert await service.working_days_between(s, start, date(2027, 1, 18)) == 20
        assert await service.is_working_day(s, date(2027, 2, 20))  # a make-up Saturday
        assert not await service.is_working_day(s, date(2027, 2, 8))  # a Monday in 春节
        # Rolled back here so 2027 stays unpublished for every other test of the run.
        await tx.rollback()
    async with runtime.db.transaction() as s:
        with pytest.raises(Invalid) as e:
            await service.add_working_days(s, start, 20)
        assert e.value.code == "calendar.year_not_published"


async def test_import_is_audited_and_bad_input_leaves_nothing(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        before = await counts(s)
    bad_inputs: list[list[tuple[date, bool, str | None]] | Schedule] = [
        [(date(2095, 1, 1), False, "元旦"), (date(2095, 1, 1), True, None)],  # twice
        [(date(2095, 1, 1), False, "元旦"), (date(2096, 1, 1), False, "元旦")],  # other year
        Schedule(holidays=(HolidayRange("春节", date(2095, 2, 9), date(2095, 2, 3)),)),
        Schedule(holidays=(HolidayRange("春节", date(2095, 2, 3), date(2095, 2, 9)),),
                 workdays=(MakeUpDay(date(2095, 2, 5)),)),  # both off and worked
    ]
    for bad in bad_inputs:
        with pytest.raises(Invalid):
            async with runtime.db.transaction() as s:
                await service.import_year(s, 2095, bad, actor="admin:test")
    with pytest.raises(Invalid) as e:
        async with runtime.db.transaction() as s:
            await service.import_year(s, 1999, [], actor="admin:test")
    assert e.value.code == "calendar.year_invalid"
    async with runtime.db.transaction() as s:
        assert await counts(s) == before

    async with runtime.db.transaction() as s:
        await service.import_year(s, 2095, [(date(2095, 1, 1), False, "元旦"),
                                            (date(2095, 1, 8), True, "调休")],
                                  actor="admin:someone")
    async with runtime.db.transaction() as s:
        after = await counts(s)
        entry = (await s.execute(text(
            "SELECT actor, action, data FROM audit_log WHERE entity = 'calendar_year' "
            "AND entity_id = '2095' ORDER BY id DESC LIMIT 1"))).one()
        assert not await service.is_working_day(s, date(2095, 1, 1))  # a Saturday anyway
        assert await service.is_working_day(s, date(2095, 1, 8))  # a make-up Saturday
        assert not await service.is_working_day(s, date(2095, 1, 9))  # Sunday by default
        assert await service.is_working_day(s, date(2095, 1, 10))  # Monday by default
    assert after == (before[0] + 365, before[1] + 1, before[2] + 1)
    assert entry.actor == "admin:someone" and entry.action == "calendar.import"
    assert ["2095-01-08", True, "调休"] in entry.data["exceptions"]


async def test_cache_follows_imports_made_by_another_process(runtime: Runtime) -> None:
    """The per-process cache is keyed by the year's version from the database, so a change
    committed elsewhere (simulated here by raw SQL) is seen at once."""
    async with runtime.db.transaction() as s:
        await service.import_year(s, 2094, [], actor="admin:test")
    async with runtime.db.transaction() as s:
        assert await service.is_working_day(s, date(2094, 3, 1))  # a Monday, now cached
    async with runtime.db.transaction() as s:  # "another process" publishes a correction
        await s.execute(text("UPDATE calendar_days SET is_working_day = false, "
                             "holiday_name = '测试' WHERE day = '2094-03-01'"))
        await s.execute(text("UPDATE calendar_years SET version = "
                             "nextval('calendar_version_seq') WHERE year = 2094"))
    async with runtime.db.transaction() as s:
        assert not await service.is_working_day(s, date(2094, 3, 1))
    # A rolled-back import never leaves its data in the cache.
    async with runtime.db.session() as s:
        tx = await s.begin()
        await service.import_year(s, 2094, [], actor="admin:test")
        assert await service.is_working_day(s, date(2094, 3, 1))
        await tx.rollback()
    async with runtime.db.transaction() as s:
        assert not await service.is_working_day(s, date(2094, 3, 1))


async def test_concurrent_imports_of_one_year_do_not_mix(runtime: Runtime) -> None:
    one: list[DayRow] = [(date(2093, 5, d), False, "甲") for d in range(1, 6)]
    two: list[DayRow] = [(date(2093, 6, d), False, "乙") for d in range(1, 6)]

    async def publish(days: list[tuple[date, bool, str | None]]) -> None:
        async with runtime.db.transaction() as s:
            await service.import_year(s, 2093, days, actor="admin:test")

    await asyncio.gather(publish(one), publish(two))
    async with runtime.db.transaction() as s:
        year = await service.get_year(s, 2093)
    names = {n for _, _, n in year.days if n}
    assert len(year.days) == 365 and names in ({"甲"}, {"乙"})


async def test_admin_api_publishes_and_anyone_reads(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    body = {
        "holidays": [{"name": "国庆节", "start": "2092-10-01", "end": "2092-10-07"}],
        "workdays": [{"date": "2092-09-27", "name": "国庆节"}],
    }
    r = await client.put("/v1/admin/calendar/2092", json=body)
    assert r.status_code == 401
    r = await client.put("/v1/admin/calendar/2092", json=body,
                         headers=admin_headers("operator_staff"))
    assert r.status_code == 403 and r.json()["code"] == "auth.permission_denied"
    r = await client.get("/public/calendar/2092")
    assert r.status_code == 404 and r.json()["code"] == "calendar.year_not_published"

    r = await client.put("/v1/admin/calendar/2092", json={"holidays": [
        {"name": "国庆节", "start": "2092-10-07", "end": "2092-10-01"}]}, headers=admin_headers())
    assert r.status_code == 422 and r.json()["code"] == "calendar.holiday_invalid"
    async with runtime.db.transaction() as s:
        with pytest.raises(NotFound):
            await service.get_year(s, 2092)

    r = await client.put("/v1/admin/calendar/2092", json=body, headers=admin_headers())
    assert r.status_code == 200, r.text
    published = r.json()
    assert published["source"] == "operator" and len(published["days"]) == 366
    days = {d["date"]: d for d in published["days"]}
    assert days["2092-09-27"] == {"date": "2092-09-27", "is_working_day": True,
                                  "holiday_name": "国庆节"}  # a Saturday worked
    assert days["2092-10-01"]["is_working_day"] is False

    r = await client.get("/v1/admin/calendar/2092", headers=admin_headers("expert"))
    assert r.status_code == 200 and r.json() == published
    r = await client.get("/public/calendar/2092")
    assert r.status_code == 200 and r.json() == published
    r = await client.get("/public/calendar/2024")
    assert r.status_code == 200 and r.json()["working_days"] == 251


async def test_cli_imports_csv_and_yaml(runtime: Runtime, data_dir: Path) -> None:
    csv_file = data_dir / "2091.csv"
    csv_file.write_text("date,is_working_day,name\n2091-01-01,false,元旦\n"
                        "2091-01-06,true,调休\n", encoding="utf-8")
    yaml_file = data_dir / "2090.yaml"
    yaml_file.write_text(
        "year: 2090\nholidays:\n  - {name: 元旦, start: 2090-01-01, end: 2090-01-03}\n"
        "workdays:\n  - {date: 2090-01-07, name: 元旦}\n", encoding="utf-8")
    bad_file = data_dir / "bad.csv"
    bad_file.write_text("date,is_working_day\n2089-01-01,maybe\n", encoding="utf-8")
    runner = CliRunner()
    for path in (csv_file, yaml_file):
        result = await asyncio.to_thread(runner.invoke, cli, ["calendar", "import", str(path)])
        assert result.exit_code == 0, result.output
    result = await asyncio.to_thread(runner.invoke, cli, ["calendar", "import", str(bad_file)])
    assert result.exit_code == 1 and "calendar.file_invalid" in result.output
    async with runtime.db.transaction() as s:
        assert not await service.is_working_day(s, date(2091, 1, 1))  # a Monday holiday
        assert await service.is_working_day(s, date(2091, 1, 6))  # a Saturday worked
        assert not await service.is_working_day(s, date(2090, 1, 2))
        assert await service.is_working_day(s, date(2090, 1, 7))  # a Saturday worked
        assert (await service.get_year(s, 2090)).source == "operator"
        assert 2089 not in await service.published_years(s)
