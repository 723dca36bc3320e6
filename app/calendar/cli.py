"""``tanhui calendar``: publish a year's working-day calendar from a file."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.errors import DomainError

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="CSV (date,is_working_day,name) or YAML schedule")],
) -> None:
    """Publish (or replace) the year the file describes; the import is audited."""
    from app.calendar import service
    from app.calendar.files import parse_file
    from app.cli import run_with_runtime
    from app.runtime import Runtime

    async def go(runtime: Runtime) -> tuple[int, int]:
        year, days = parse_file(file)
        async with runtime.db.transaction() as session:
            await service.import_year(session, year, days, actor=f"cli:{getpass.getuser()}")
            published = await service.get_year(session, year)
        return year, sum(1 for _, w, _ in published.days if w)

    try:
        year, working = run_with_runtime(go)
    except DomainError as exc:
        console.print(f"[red]refused[/red] {exc.code}: {exc.detail or ''}")
        raise typer.Exit(1) from exc
    console.print(f"published {year}: {working} working days")


@app.command("years")
def years() -> None:
    """List the years whose calendar is published."""
    from app.calendar import service
    from app.cli import run_with_runtime
    from app.runtime import Runtime

    async def go(runtime: Runtime) -> list[int]:
        async with runtime.db.transaction() as session:
            return await service.published_years(session)

    typer.echo(" ".join(str(y) for y in run_with_runtime(go)))
