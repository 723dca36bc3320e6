"""``tanhui points expire|check``: run the expiry now, reconcile every account."""

from __future__ import annotations

import typer
from rich.console import Console

from app.runtime import Runtime

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def expire() -> None:
    """Expire due lots and lapsed holds now (what the daily job does); safe to run twice."""
    from app.cli import run_with_runtime
    from points.jobs import run_expiry

    async def go(runtime: Runtime) -> int | None:
        return await run_expiry(runtime.db)

    done = run_with_runtime(go)
    if done is None:
        console.print("another expiry run holds the lock; nothing done")
    else:
        console.print(f"expired {done} lot(s) and lapsed hold(s)")


@app.command()
def check() -> None:
    """Reconcile every account; exit 1 listing the accounts that differ.

    Checks credited = available + held + redeemed + expired, balances = the lots' remainders
    and the active holds, and the entries replayed give the balances."""
    from app.cli import run_with_runtime
    from points.service import AccountDiff
    from points.service import check as check_accounts

    async def go(runtime: Runtime) -> list[AccountDiff]:
        async with runtime.db.transaction() as session:
            return await check_accounts(session)

    diffs = run_with_runtime(go)
    if not diffs:
        console.print("all accounts reconcile")
        return
    for d in diffs:
        console.print(
            f"account {d.account_id} citizen {d.citizen_id}: credited={d.credited}"
            f" available={d.available} held={d.held} redeemed={d.redeemed}"
            f" expired={d.expired} lots_remaining={d.lots_remaining}"
            f" active_holds={d.holds_held} — {'; '.join(d.problems)}",
            soft_wrap=True, markup=False,
        )
    console.print(f"{len(diffs)} account(s) differ")
    raise typer.Exit(1)
