"""``tanhui audit``: check the hash chain of the audit log (Art. 17)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def verify() -> None:
    """Recompute every row's hash; exit 1 listing the rows that do not verify."""
    from sqlalchemy import text

    from app.audit import verify_chain
    from app.cli import run_with_runtime
    from app.runtime import Runtime

    async def go(runtime: Runtime) -> tuple[int, list[int]]:
        async with runtime.db.transaction() as session:
            total = (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
            return int(total), await verify_chain(session)

    total, bad = run_with_runtime(go)
    if bad:
        typer.echo(" ".join(str(i) for i in bad))
        console.print(f"[red]audit chain broken[/red]: {len(bad)} of {total} rows do not verify")
        raise typer.Exit(1)
    console.print(f"audit chain intact: {total} rows")
