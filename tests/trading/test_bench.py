"""The benchmark's own checks hold on a small run (it settles, conserves and reconciles)."""

from __future__ import annotations

from app.runtime import Runtime
from loadtests.trading_bench import _run


async def test_bench_small_run_conserves_funds_and_credits(runtime: Runtime, market: str) -> None:
    result = await _run(runtime, 120, 4, 30, 20, 1)
    assert result["orders"] == 120 and result["matches"] > 0
    assert result["refused"] == {}
    assert result["funds_conserved"] and result["credits_conserved"]
    assert result["registry_reconciled"]
    # the registry's work is done in batch calls: at most one delivery call per batch
    assert result["registry_calls"]["deliver_many"] <= 120 // 30
    assert "move_locked" not in result["registry_calls"]
