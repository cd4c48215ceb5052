"""What every command shares: one-line errors, verbosity, opening a store, printing a JSON summary."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer

STATE = {"debug": False}
"""Set by the root callback: ``--debug`` shows tracebacks instead of one-line errors."""


def errors(func):
    """A failing command prints one line with the cause and exits with status 1 (``--debug``: the traceback).

    Ctrl-C exits with status 130 after one line; usage errors keep typer's own message and status 2.
    """

    @functools.wraps(func)
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            if STATE["debug"]:
                raise
            message = " ".join(str(err).split()) or type(err).__name__
            typer.echo(f"error: {message} ({type(err).__name__}; --debug shows the traceback)", err=True)
            raise typer.Exit(1) from None

    return run


def set_verbosity(verbose: int, *, progress: bool = False) -> None:
    """``bt.settings.verbosity`` from ``-v`` flags (warnings by default); progress bars show at the default level."""
    import bitro as bt

    bt.settings.verbosity = min(1 + int(verbose), 3)


def open_store(path: Path):
    """A store read crash-safely (an interrupted write is undone first)."""
    import bitro as bt

    return bt.io.read_zarr(path)


def check_out(path: Path, *, overwrite: bool) -> None:
    """``--out`` can take a new folder: refused before any work (a trained model is never lost to its name)."""
    path = Path(path).expanduser()
    if path.is_file():
        raise ValueError(f"`--out`: {path} is a file; give a folder (new, or with --overwrite an earlier output).")
    if path.exists() and not overwrite:
        raise FileExistsError(f"`--out`: {path} already exists; pass --overwrite to replace it, or give a new folder.")


def training_output():
    """Training's progress bar on stderr: stdout holds the command's JSON summary only."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def echo_json(value: dict) -> None:
    """Print a summary as indented JSON on stdout (logs and progress bars go to stderr)."""
    typer.echo(json.dumps(value, indent=1, default=str))
