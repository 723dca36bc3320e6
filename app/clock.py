"""The one injectable clock. Time is stored in UTC; business dates are Asia/Shanghai."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

_now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """The current instant, timezone-aware UTC."""
    return _now()


def today() -> date:
    """Today's business date in Asia/Shanghai."""
    return now().astimezone(SHANGHAI).date()


def business_date(at: datetime) -> date:
    return at.astimezone(SHANGHAI).date()


def set_clock(fn: Callable[[], datetime] | None) -> None:
    """Tests move time with this; ``None`` restores the real clock."""
    global _now
    _now = fn or (lambda: datetime.now(UTC))
