"""What every command shares: one-line errors, verbosity, opening a store, printing a JSON summary."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import typer

STATE = {"debug": False}
"""Set by the root callback: ``--debug`` shows tracebacks instead of one-line errors."""

# The library's messages name Python arguments and functions; a command's user types flags and commands.
CLI_WORDS = (
    (r"pass overwrite=True", "pass --overwrite"),
    (r"`dir_path`", "`--model`"),  # BiTro.load's folder (output folders are checked by the commands first)
    (r"`adapter`", "`--adapter`"),
    (r"\bbt\.pp\.segment_cells\b", "`bitro segment`"),
    (r"\bbt\.pp\.cell_features\(sdata, method=(['\"])([^'\"]+)\1\)", r"`bitro features STORE --method \2`"),
    (r"\bbt\.pp\.cell_features\b", "`bitro features`"),
    (r"\bmpp=(\d)", r"--mpp \1"),  # "e.g. mpp=0.25"
    (r"`mpp=`", "`--mpp`"),
    (r"\bbt\.tl\.predict\b", "`bitro predict`"),
)


def cli_message(err: BaseException) -> str:
    """``err`` as one line in a command's words (flags and commands instead of Python names)."""
    # str() of a KeyError is the repr of its argument: quoted, with escaped quotes inside
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
    message = " ".join(str(text).split()) or type(err).__name__
    for python, cli in CLI_WORDS:
        message = re.sub(python, cli, message)
    return message


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
            typer.echo(
                f"error: {cli_message(err)} ({type(err).__name__}; `bitro --debug ...` shows the traceback)", err=True
            )
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


def check_out(path: Path, *, overwrite: bool, owned: set[str] | None = None) -> None:
    """``--out`` can take a new folder: refused before any work (a trained model is never lost to its name).

    With ``--overwrite``, a folder holding files other than ``owned`` (those the command writes) is refused
    now too: saving would refuse it after the training.
    """
    path = Path(path).expanduser()
    if path.is_file():
        raise ValueError(f"`--out`: {path} is a file; give a folder (new, or with --overwrite an earlier output).")
    if path.exists() and not overwrite:
        raise FileExistsError(f"`--out`: {path} already exists; pass --overwrite to replace it, or give a new folder.")
    if path.is_dir() and owned is not None:
        foreign = sorted(p.name for p in path.iterdir() if p.name not in owned)
        if foreign:
            raise FileExistsError(
                f"`--out`: {path} holds files this command does not write ({foreign[:5]}); --overwrite would "
                "delete them. Give a new folder, or move them first."
            )


def check_store(path: Path, *, overwrite: bool) -> None:
    """A store to write is new or ``--overwrite`` was given: refused before the input is read."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or give another --out.")


def training_output():
    """Training's progress bar on stderr: stdout holds the command's JSON summary only."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def echo_json(value: dict) -> None:
    """Print a summary as indented JSON on stdout (logs and progress bars go to stderr)."""
    typer.echo(json.dumps(value, indent=1, default=str))
