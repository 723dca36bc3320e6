"""``tanhui bench ...``: throughput benchmarks. Each prints a table and, as its last line,
one JSON object with its figures and the ratio to a raw baseline measured in the same run."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True)

# command name -> module with a ``command`` (a typer-compatible function)
BENCHES = {
    "points": "loadtests.points_bench",
    "ingest": "loadtests.ingest_bench",
    "flash-sale": "loadtests.flash_sale_bench",
    "trading": "loadtests.trading_bench",
}

for _name, _module in BENCHES.items():
    app.command(_name)(importlib.import_module(_module).command)
