"""``tanhui dlq list|replay``: inspect and replay dead-lettered events."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.runtime import Runtime

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_(
    reason: Annotated[str | None, typer.Option(help="only this reason code")] = None,
    include_replayed: Annotated[bool, typer.Option("--all", help="also replayed ones")] = False,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
) -> None:
    """List dead letters (oldest first) with their reason."""
    from app.cli import run_with_runtime
    from ingestion.deadletters import count_open, list_dead_letters

    async def go(runtime: Runtime) -> None:
        async with runtime.db.session() as session:
            rows = await list_dead_letters(
                session, include_replayed=include_replayed, reason_code=reason, limit=limit
            )
            open_ = await count_open(session)
        table = Table("id", "created", "scene", "event", "reason", "detail", "replayed")
        for r in rows:
            table.add_row(
                str(r.id), r.created_at.isoformat(timespec="seconds"),
                str(r.scene_id or "-")[:8], r.event_id or "-", r.reason_code, r.reason[:60],
                r.replayed_at.isoformat(timespec="seconds") if r.replayed_at else "",
            )
        console.print(table)
        console.print(f"{open_} open dead letter(s)")

    run_with_runtime(go)


@app.command()
def replay(
    ids: Annotated[list[int] | None, typer.Option("--id", help="replay these ids")] = None,
    reason: Annotated[str | None, typer.Option(help="replay those with this reason")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every open dead letter")] = False,
    limit: Annotated[int, typer.Option(help="at most this many")] = 10_000,
) -> None:
    """Put dead letters back on the bus (after fixing their cause)."""
    from app.cli import run_with_runtime
    from ingestion.deadletters import replay_dead_letters

    if not ids and not reason and not all_:
        raise typer.BadParameter("name --id, --reason or --all")

    async def go(runtime: Runtime) -> int:
        async with runtime.db.transaction() as session:
            return await replay_dead_letters(
                session, runtime, ids=ids or None, reason_code=reason, limit=limit
            )

    n = run_with_runtime(go, start_bus=True)
    console.print(f"replayed {n} dead letter(s)")
