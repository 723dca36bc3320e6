"""Commands of the trading system (``tanhui trading ...``)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def check() -> None:
    """Funds conservation: deposits − withdrawals = available + locked + fees, every account's
    journal equals its balances, locked funds equal open buy orders' reservations. Exits 1 and
    prints the differences when there are any."""
    from app.cli import run_with_runtime
    from trading.service import check_funds

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            return await check_funds(session)

    result = run_with_runtime(go)
    for p in result.problems:
        console.print(f"[red]✗[/red] {p}")
    if not result.ok:
        raise typer.Exit(code=1)
    console.print(
        f"[green]✓[/green] funds conserved: deposits {result.deposits_fen} − withdrawals "
        f"{result.withdrawals_fen} = available {result.available_fen} + locked "
        f"{result.locked_fen} + fees {result.fees_fen} (fen)")


@app.command()
def close() -> None:
    """End of day: expire earlier days' open orders and overdue deal proposals (run after the
    last session, e.g. from cron)."""
    from app.cli import run_with_runtime
    from trading import deals, matching

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            orders = await matching.expire_stale(session, actor="system:cli")
            expired = await deals.expire_due(session, actor="system:cli")
        return orders, expired

    orders, expired = run_with_runtime(go)
    console.print(f"expired {orders} orders and {expired} deal proposals")
