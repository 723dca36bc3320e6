"""Fixtures of the registry tests: a pinned clock, restored after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from app import clock
from tests.registry.factories import at


@pytest.fixture
def pin() -> Iterator[Callable[[str], datetime]]:
    """``pin("2025-03-03")`` moves the clock to that business date; restored afterwards."""

    def move(day: str, hour: int = 3) -> datetime:
        instant = at(day, hour)
        clock.set_clock(lambda: instant)
        return instant

    yield move
    clock.set_clock(None)
