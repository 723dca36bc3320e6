"""Commands of this package (added under `tanhui`)."""

import typer

app = typer.Typer(no_args_is_help=True)
