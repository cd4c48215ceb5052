"""Package-wide settings: ``bt.settings``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ._logging import logger

_VERBOSITY_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
_DEVICES = ("auto", "cpu", "cuda", "mps")


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

    def __init__(self) -> None:
        self._verbosity = 1
        self._n_jobs = 1
        self._device = "auto"
        self._use_dask = True
        self._cachedir = Path(os.environ.get("BITRO_CACHE_DIR", Path.home() / ".cache" / "bitro"))
        self.verbosity = int(os.environ.get("BITRO_VERBOSITY", 1))

    @property
    def verbosity(self) -> int:
        """Verbosity, which also sets the ``bitro`` logger level (0 errors, 1 warnings, 2 info, 3 debug)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value not in _VERBOSITY_LEVELS:
            raise ValueError(f"`verbosity` must be one of {sorted(_VERBOSITY_LEVELS)}, got {value!r}.")
        self._verbosity = value
        logger.setLevel(_VERBOSITY_LEVELS[value])

    @property
    def n_jobs(self) -> int:
        """Number of parallel workers for tiled steps (``-1`` means all cores)."""
        return self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
            raise ValueError(f"`n_jobs` must be a positive integer or -1 (all cores), got {value!r}.")
        self._n_jobs = value

    @property
    def effective_n_jobs(self) -> int:
        """The number of workers that ``n_jobs`` means here (``-1`` resolved to the available cores)."""
        return (os.cpu_count() or 1) if self._n_jobs == -1 else self._n_jobs

    @property
    def device(self) -> str:
        """The torch device models run on (``"auto"`` picks a GPU when present, else ``"cpu"``; or ``"cuda:N"``, ``"mps"``)."""
        return self._device

    @device.setter
    def device(self, value: str) -> None:
        if not isinstance(value, str) or (value not in _DEVICES and not value.startswith("cuda:")):
            raise ValueError(f"`device` must be one of {_DEVICES} or 'cuda:N', got {value!r}.")
        self._device = value

    @property
    def use_dask(self) -> bool:
        """Whether tiled steps run through dask (the active scheduler, or a distributed client)."""
        return self._use_dask

    @use_dask.setter
    def use_dask(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"`use_dask` must be a bool, got {type(value).__name__}.")
        self._use_dask = value

    @property
    def cachedir(self) -> Path:
        """The folder for downloaded datasets and model weights (``$BITRO_CACHE_DIR`` overrides the default)."""
        return self._cachedir

    @cachedir.setter
    def cachedir(self, value: str | os.PathLike) -> None:
        if not isinstance(value, str | os.PathLike):
            raise TypeError(f"`cachedir` must be a path, got {type(value).__name__}.")
        self._cachedir = Path(value).expanduser()

    def __repr__(self) -> str:
        fields = ("verbosity", "n_jobs", "device", "use_dask", "cachedir")
        return "bitro settings:\n" + "\n".join(f"  {f} = {getattr(self, f)!r}" for f in fields)


settings = Settings()
