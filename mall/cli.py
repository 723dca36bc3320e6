"""``tanhui mall``: the mall's housekeeping from the command line (also run by ``serve``)."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command()
def expire() -> None:
    """Expire due vouchers now: their holds are released and the stock returned."""
    from app.cli import run_with_runtime
    from mall.flows import expire_vouchers

    n = run_with_runtime(expire_vouchers)
    out.print(f"expired {n} voucher(s)")


@app.command("resync-stock")
def resync_stock() -> None:
    """Set every offer's Redis stock gate back to the database's figure (the truth)."""
    from app.cli import run_with_runtime
    from mall.flows import reconcile_gates

    n = run_with_runtime(reconcile_gates)
    out.print(f"resynced {n} offer(s)")
