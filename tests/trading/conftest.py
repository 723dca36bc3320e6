"""Fixtures of the trading tests: the clock pinned in a trading session of a working day, the
listed product, and after each test an empty book, a reconciled registry and conserved funds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime

import pytest

from app import clock
from app.runtime import Runtime
from tests.trading.factories import consistent, ensure_product, shanghai
from trading import matching

TRADING_DAY = "2025-09-10"  # a Wednesday


@pytest.fixture
def pin() -> Iterator[Callable[..., datetime]]:
    """``pin("2025-09-10", "10:00")`` moves the clock to that Chongqing time; restored after."""

    def move(day: str = TRADING_DAY, hhmm: str = "10:00") -> datetime:
        instant = shanghai(day, hhmm)
        clock.set_clock(lambda: instant)
        return instant

    move()
    yield move
    clock.set_clock(None)


@pytest.fixture
async def market(runtime: Runtime, pin: Callable[..., datetime]) -> AsyncIterator[str]:
    """The ``engineering`` product listed; afterwards the book is cleared and the registry and
    the funds are checked."""
    async with runtime.db.transaction() as s:
        key = await ensure_product(s)
    yield key
    pin()
    async with runtime.db.transaction() as s:
        await matching.cancel_all(s, actor="test")
    async with runtime.db.transaction() as s:
        await consistent(s)
