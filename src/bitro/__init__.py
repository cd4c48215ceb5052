"""bitro: gene expression from H&E histology at spot, slide and single-cell resolution.

Submodules (``io``, ``pp``, ``tl``, ``pl``, ``get``, ``datasets``, ``models``) load on first access, so
``import bitro`` stays light: the science stack (torch, lightning, peft, cellpose,
spatialdata-io) is imported only by the functions that need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._logging import logger
from ._settings import settings

_SUBMODULES = ("datasets", "get", "io", "models", "pl", "pp", "tl")

__all__ = ["__version__", "datasets", "get", "io", "logger", "models", "pl", "pp", "settings", "tl"]

if TYPE_CHECKING:
    from . import datasets, get, io, models, pl, pp, tl


def __getattr__(name: str):
    if name == "__version__":  # importlib.metadata costs ~35 ms: only pay it when asked
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("bitro")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module  # later accesses skip __getattr__
        return module
    raise AttributeError(f"module 'bitro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
