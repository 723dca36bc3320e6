"""Commands of the registry (``tanhui registry ...``)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def check() -> None:
    """Reconcile: per project issued = held + locked + cancelled; no serial in two blocks.
    Exits 1 and prints the differences when there are any."""
    from app.cli import run_with_runtime
    from registry.reconcile import reconcile

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            return await reconcile(session)

    problems = run_with_runtime(go)
    for p in problems:
        console.print(f"[red]✗[/red] {p}")
    if problems:
        raise typer.Exit(code=1)
    console.print("[green]✓[/green] registry reconciled: every tonne in exactly one block")


@app.command()
def lapse() -> None:
    """Reject applications whose revision deadline has passed (Art. 39: 2-year refusal)."""
    from app.cli import run_with_runtime
    from registry.jobs import lapse_overdue_revisions

    async def go(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            return await lapse_overdue_revisions(session, actor="system:cli")

    console.print(f"lapsed {run_with_runtime(go)} applications")
