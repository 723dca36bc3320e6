"""Art. 34's 5-year validity, end to end: the setting cannot exceed it, and the default fits
the database's bound even across the tightest 5 calendar years (no 29 February in them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.db import Database
from app.settings import Settings, get_settings
from points import service
from tests.points.factories import assert_reconciled, credit, new_citizen


def test_art34_points_validity_setting_is_at_most_5_years(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Art. 34: 碳积分有效期最长不超过5年 — the operator cannot configure a longer validity,
    neither in code nor through the environment; the default is the longest allowed."""
    assert Settings(_env_file=None).points_validity_days == 5 * 365
    for days in (5 * 365 + 1, 6 * 365, 0, -1):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, points_validity_days=days)
    monkeypatch.setenv("TANHUI_POINTS_VALIDITY_DAYS", str(5 * 365 + 2))
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
    monkeypatch.setenv("TANHUI_POINTS_VALIDITY_DAYS", "365")
    assert Settings(_env_file=None).points_validity_days == 365


async def test_art34_default_validity_fits_5_calendar_years_without_a_leap_day(
        db: Database) -> None:
    """Art. 34: 5 × 365 days is within 5 calendar years even when those years hold no
    29 February (2098-03-01 → 2103-03-01 skips 2100, not a leap year): the database's CHECK
    (``expires_at <= credited_at + 5 years``) accepts the lot, and its points stop counting
    at that instant."""
    citizen = new_citizen()
    t = datetime(2098, 3, 1, 1, 0, tzinfo=UTC)
    await credit(db, citizen, 7, now=t)
    async with db.transaction() as s:
        (lot,) = await service.list_lots(s, citizen, now=t)
    assert lot.expires_at == t + timedelta(days=get_settings().points_validity_days)
    assert lot.expires_at <= t.replace(year=2103)
    async with db.transaction() as s:
        before = await service.balance(s, citizen, now=lot.expires_at - timedelta(seconds=1))
        after = await service.balance(s, citizen, now=lot.expires_at)
    assert (before.available, after.available) == (7, 0)
    await assert_reconciled(db, citizen)
