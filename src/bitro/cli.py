"""Command line: ``bitro --help``. Importing this module loads typer only, no science stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="bitro",
    help="Gene expression from H&E histology (spots, slides, single cells).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Gene expression from H&E histology (spots, slides, single cells)."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("bitro_demo"),
    n_spots: Annotated[int, typer.Option(help="Spots of the synthetic section.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic section.")] = 0,
) -> None:
    """Run the demo on synthetic tissue: build it, write it to zarr, read it back, plot and summarise it."""
    from bitro._demo import run_demo

    run_demo(out, n_spots=n_spots, seed=seed)


@app.command()
def version() -> None:
    """Print the installed version."""
    from bitro import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``bitro`` console script."""
    app()
