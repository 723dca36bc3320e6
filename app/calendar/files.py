"""Calendar files for ``tanhui calendar import``: CSV of days or a YAML schedule.

CSV (header required; days not listed follow the weekday default)::

    date,is_working_day,name
    2027-01-01,false,元旦
    2027-02-07,true,春节

YAML (a year as the State Council publishes it)::

    year: 2027
    holidays:                 # days off, inclusive ranges
      - {name: 元旦, start: 2027-01-01, end: 2027-01-01}
      - {name: 春节, start: 2027-02-06, end: 2027-02-13}
    workdays:                 # make-up working days (调休上班)
      - {date: 2027-02-07, name: 春节}
"""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from app.calendar.service import DayRow, HolidayRange, MakeUpDay, Schedule
from app.errors import Invalid

TRUE = {"true", "1", "yes", "y", "t", "是", "班"}
FALSE = {"false", "0", "no", "n", "f", "否", "休"}


def _date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise Invalid("calendar.file_invalid", f"{where}: {value!r} is not a date.") from exc


def parse_csv(content: str) -> tuple[int, list[DayRow]]:
    """The year and the days of a CSV file ``date,is_working_day,name``."""
    reader = csv.DictReader(io.StringIO(content.lstrip("\ufeff")))
    if not reader.fieldnames or not {"date", "is_working_day"} <= set(reader.fieldnames):
        raise Invalid("calendar.file_invalid",
                      "The CSV needs a header: date,is_working_day,name.")
    days: list[DayRow] = []
    for line, row in enumerate(reader, start=2):
        flag = (row.get("is_working_day") or "").strip().lower()
        if flag not in TRUE | FALSE:
            raise Invalid("calendar.file_invalid",
                          f"line {line}: is_working_day must be true or false.")
        days.append((_date(row.get("date"), f"line {line}"), flag in TRUE,
                     (row.get("name") or "").strip() or None))
    years = {d.year for d, _, _ in days}
    if len(years) != 1:
        raise Invalid("calendar.file_invalid", "The CSV must list days of exactly one year.")
    return years.pop(), days


def parse_yaml(content: str) -> tuple[int, Schedule]:
    """The year and the schedule of a YAML file (``year``, ``holidays``, ``workdays``)."""
    try:
        doc = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise Invalid("calendar.file_invalid", f"Not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("year"), int):
        raise Invalid("calendar.file_invalid", "The YAML needs an integer `year`.")
    try:
        holidays = tuple(
            HolidayRange(name=str(h["name"]), start=_date(h["start"], "holiday"),
                         end=_date(h.get("end", h["start"]), "holiday"))
            for h in doc.get("holidays") or ()
        )
        workdays = tuple(
            MakeUpDay(day=_date(w["date"], "workday"), name=w.get("name"))
            for w in doc.get("workdays") or ()
        )
    except (KeyError, TypeError) as exc:
        raise Invalid("calendar.file_invalid",
                      "holidays need name and start (end optional); workdays need date.") from exc
    return doc["year"], Schedule(holidays=holidays, workdays=workdays)


def parse_file(path: Path) -> tuple[int, list[DayRow] | Schedule]:
    content = path.read_text(encoding="utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        return parse_yaml(content)
    if path.suffix.lower() == ".csv":
        return parse_csv(content)
    raise Invalid("calendar.file_invalid", "Give a .csv or .yaml file.")
