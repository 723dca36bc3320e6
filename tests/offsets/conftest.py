"""Fixtures of the offsets tests: the trading tests' pinned clock and market (the Art. 29 test
crosses trading and offsets), reused."""

from tests.trading.conftest import market, pin

__all__ = ["market", "pin"]
