"""Command line: ``bitro --help``. Importing this module loads typer only, no science stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import STATE, errors

app = typer.Typer(
    name="bitro",
    help="Gene expression from H&E histology (spots, slides, single cells).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback when a command fails.")] = False,
) -> None:
    """Gene expression from H&E histology (spots, slides, single cells).

    A pipeline over zarr stores: `bitro read` an input into a store, then `segment`, `features`,
    `predict` (which runs what is missing), `evaluate`; `fit` and `transfer` train models; `run`
    does read -> predict -> figure for one input.
    """
    STATE["debug"] = debug


def _register() -> None:
    """The pipeline commands (their modules load the science stack only when a command runs)."""
    from . import _pipeline as p

    for name, func in (
        ("read", p.read),
        ("segment", p.segment),
        ("features", p.features),
        ("fit", p.fit),
        ("predict", p.predict),
        ("transfer", p.transfer),
        ("evaluate", p.evaluate),
        ("run", p.run),
        ("predict-slides", p.predict_slides),
    ):
        app.command(name)(errors(func))


_register()


@app.command()
@errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("bitro_demo"),
    n_spots: Annotated[int, typer.Option(help="Spots of the synthetic section.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic section.")] = 0,
) -> None:
    """Run the demo on synthetic tissue: build it, write it to zarr, read it back, plot and summarise it."""
    from bitro.cli._toy_demo import run_demo

    run_demo(out, n_spots=n_spots, seed=seed)


@app.command("predict-her2st")
@errors
def predict_her2st(
    data: Annotated[
        Path, typer.Argument(help="Folder laid out like the her2st repository's data/ (tests/data/her2st).")
    ],
    section: Annotated[str, typer.Option(help="Section id, e.g. C3.")] = "C3",
    out: Annotated[Path, typer.Option(help="Folder for the zarr store and the figure.")] = Path("bitro_her2st"),
    model: Annotated[Path | None, typer.Option(help="A saved model folder; default: the bundled model.")] = None,
    crop: Annotated[
        tuple[float, float, float, float] | None,
        typer.Option(help="Only this box of the section: x0 y0 x1 y1 in µm (default: the whole section)."),
    ] = None,
) -> None:
    """Predict expression of a real HER2ST section from its H&E image and compare with its counts."""
    import json

    from bitro.cli._her2st_predict import run_her2st

    summary = run_her2st(data, section, out, model_dir=model, crop=crop)
    if summary["section"] in summary["model_trained_on"]:
        typer.echo(
            f"note: the model was trained on {summary['section']}; held-out accuracy: docs/benchmarks.md", err=True
        )  # stdout holds the JSON summary only
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def version() -> None:
    """Print the installed version."""
    from bitro import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``bitro`` console script."""
    app()
