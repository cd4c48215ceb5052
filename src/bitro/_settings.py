"""Package-wide settings: ``bt.settings``."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._logging import logger

_VERBOSITY_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
_DEVICES = ("auto", "cpu", "cuda", "mps")


def _verbosity(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _VERBOSITY_LEVELS:
        raise ValueError(f"`verbosity` must be one of {sorted(_VERBOSITY_LEVELS)}, got {value!r}.")
    logger.setLevel(_VERBOSITY_LEVELS[value])
    return value


def _n_jobs(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise ValueError(f"`n_jobs` must be a positive integer or -1 (all cores), got {value!r}.")
    return value


def _device(value) -> str:
    if not isinstance(value, str) or (value not in _DEVICES and not re.fullmatch(r"cuda:\d+", value)):
        raise ValueError(f"`device` must be one of {_DEVICES} or 'cuda:N', got {value!r}.")
    return value


def _use_dask(value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`use_dask` must be a bool, got {type(value).__name__}.")
    return value


def _cachedir(value) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"`cachedir` must be a path, got {type(value).__name__}.")
    return Path(value).expanduser()


def _setting(name: str, check: Callable[[Any], Any], doc: str) -> property:
    """A property whose assignments pass through ``check`` (which raises naming the setting, or returns the value)."""

    def get(self):
        return getattr(self, f"_{name}")

    def put(self, value) -> None:
        setattr(self, f"_{name}", check(value))

    return property(get, put, doc=doc)


class Settings:
    """Settings shared by every bitro function.

    Attributes are validated on assignment; a bad value raises :class:`ValueError` or
    :class:`TypeError` naming the setting.

    Examples
    --------
    >>> import bitro as bt
    >>> bt.settings.verbosity = 2  # log what each step does
    >>> bt.settings.n_jobs = 2
    """

    verbosity = _setting(
        "verbosity",
        _verbosity,
        "Verbosity, which also sets the ``bitro`` logger level (0 errors, 1 warnings, 2 info, 3 debug).",
    )
    n_jobs = _setting("n_jobs", _n_jobs, "Number of parallel workers for tiled steps (``-1`` means all cores).")
    device = _setting(
        "device",
        _device,
        'The torch device models run on (``"auto"`` picks a GPU when present, else ``"cpu"``; or ``"cuda:N"``, ``"mps"``).',
    )
    use_dask = _setting(
        "use_dask", _use_dask, "Whether tiled steps run through dask (the active scheduler, or a distributed client)."
    )
    cachedir = _setting(
        "cachedir",
        _cachedir,
        "The folder for downloaded datasets and model weights (``$BITRO_CACHE_DIR`` overrides the default).",
    )

    def __init__(self) -> None:
        self.n_jobs = 1
        self.device = "auto"
        self.use_dask = True
        self.cachedir = os.environ.get("BITRO_CACHE_DIR") or Path.home() / ".cache" / "bitro"  # "" is unset
        verbosity = os.environ.get("BITRO_VERBOSITY") or "1"
        try:
            self.verbosity = int(verbosity)
        except ValueError:  # a bad environment variable must not break `import bitro` (and every command)
            warnings.warn(
                f"$BITRO_VERBOSITY is {verbosity!r}, not a verbosity (0-3); using 1.", UserWarning, stacklevel=2
            )
            self.verbosity = 1

    def __setattr__(self, name: str, value) -> None:
        # a misspelt setting (`bt.settings.verbose = 3`) would otherwise be accepted and do nothing
        if not name.startswith("_") and not isinstance(getattr(type(self), name, None), property):
            settings = [k for k, v in vars(type(self)).items() if isinstance(v, property) and v.fset is not None]
            raise AttributeError(f"bitro has no setting {name!r}; settings: {settings}.")
        super().__setattr__(name, value)

    @property
    def effective_n_jobs(self) -> int:
        """The number of workers that ``n_jobs`` means here (``-1`` resolved to the available cores)."""
        return _cores() if self.n_jobs == -1 else self.n_jobs

    def __repr__(self) -> str:
        fields = ("verbosity", "n_jobs", "device", "use_dask", "cachedir")
        return "bitro settings:\n" + "\n".join(f"  {f} = {getattr(self, f)!r}" for f in fields)


settings = Settings()


def resolve_n_jobs(n_jobs: int | None) -> int:
    """``n_jobs`` of a function as a count of workers (``None``: ``settings.n_jobs``; ``-1``: all cores)."""
    n = settings.effective_n_jobs if n_jobs is None else (_cores() if _n_jobs(n_jobs) == -1 else n_jobs)
    if n > _cores():  # more worker processes than cores only add start-up and memory (measured: 64 on 2 cores, 30x)
        logger.warning("n_jobs=%d is more than the %d cores here; using %d", n, _cores(), _cores())
        n = _cores()
    return n


def _cores() -> int:
    """The cores this process may run on (a container's or a job's share, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
