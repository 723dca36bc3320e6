"""The one command line: ``tanhui``."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
import uvloop
from rich.console import Console

from app.settings import get_settings

cli = typer.Typer(no_args_is_help=True, help="碳惠通 Tanhuitong backend")
console = Console(stderr=True)

T = TypeVar("T")


def run_with_runtime(fn: Callable[..., Awaitable[T]], *, start_bus: bool = False) -> T:
    """Open the runtime (embedded or real servers), run ``fn(runtime)``, close it."""
    from app.observability import configure_logging
    from app.runtime import open_runtime

    settings = get_settings()
    configure_logging(settings)

    async def main() -> T:
        runtime = await open_runtime(settings, start_bus=start_bus)
        try:
            return await fn(runtime)
        finally:
            await runtime.close()

    return uvloop.run(main())  # the same event loop as `serve` (uvicorn's uvloop)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="API processes (full mode only)")] = 1,
) -> None:
    """Serve the API and console (and, unless TANHUI_RUN_WORKER=0, the points worker)."""
    import uvicorn

    from app.runtime import describe_settings

    settings = get_settings()
    console.print(f"[bold]碳惠通[/bold] serving on http://{host}:{port}")
    console.print(f"  {describe_settings(settings)}", highlight=False)
    console.print(f"  API docs  http://{host}:{port}/docs   console http://{host}:{port}/console")
    uvicorn.run(
        "app.main:create_app", factory=True, host=host, port=port, loop="uvloop",
        workers=workers if not settings.embedded else 1, log_level="warning",
        access_log=False,
    )


@cli.command()
def migrate() -> None:
    """Upgrade the database to the newest migration."""
    from app.migrations import upgrade

    async def go(runtime):  # type: ignore[no-untyped-def]
        await upgrade(runtime.db.url)
        console.print(f"migrated {runtime.describe()['database']} to head")

    run_with_runtime(go)


@cli.command()
def seed() -> None:
    """Load demo data (labelled as such); safe to run twice."""
    from rich.table import Table

    from app.seed import seed_demo

    seeded = run_with_runtime(seed_demo)
    table = Table(title="Demo data (演示数据) — development only", show_lines=False)
    table.add_column("domain")
    table.add_column("item")
    table.add_column("value", no_wrap=True)  # keys and secrets must stay copyable
    for domain, summary in seeded.items():
        for key, value in summary.items():
            table.add_row(domain.removesuffix(".seed"), key, str(value))
    Console(width=200).print(table)


def _mount(name: str, module: str, help_text: str) -> None:
    cli.add_typer(importlib.import_module(module).app, name=name, help=help_text)


_mount("admin", "app.auth.cli", "Admin users")
_mount("audit", "app.audit_cli", "The hash-chained audit log")
_mount("calendar", "app.calendar.cli", "The working-day calendar")
_mount("services", "app.services_cli", "Local services for tests and full mode (Kafka)")
_mount("scenes", "scenes.cli", "Scenes and rules")
_mount("points", "points.cli", "The points ledger")
_mount("dlq", "ingestion.cli", "Dead-lettered events")
_mount("mall", "mall.cli", "The points mall")
_mount("registry", "registry.cli", "The CQCER registry")
_mount("trading", "trading.cli", "CQCER trading")
_mount("bench", "loadtests.cli", "Benchmarks")


@cli.command()
def worker(
    consumers: Annotated[int, typer.Option(help="concurrent consumers in this process")] = 1,
) -> None:
    """Run the points worker: consume event batches from the bus and credit points."""
    from ingestion.worker import run_until_signal

    run_with_runtime(lambda rt: run_until_signal(rt, consumers=consumers), start_bus=True)


def main() -> None:
    cli()
