"""The BiTro cell-level multiple-instance-learning model (torch + Lightning).

:class:`BiTro` is what :func:`bitro.tl.fit` returns and :func:`bitro.tl.predict` applies;
:class:`BiTroModule` is its network (pure torch) and :class:`TrainingPlan` its Lightning loop;
:func:`encoders` lists the named image encoders :func:`bitro.pp.cell_features` can load.
Importing this submodule stays cheap: torch loads on first use of a class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bitro.pp._encoder_zoo import encoders

from ._default import default_model, default_model_path

if TYPE_CHECKING:
    from ._config import Architecture
    from ._model import BiTro
    from ._module import BiTroModule
    from ._plan import TrainingPlan
    from ._training import TrainingInterrupted

_LAZY = {
    "Architecture": "._config",
    "BiTro": "._model",
    "BiTroModule": "._module",
    "TrainingInterrupted": "._training",
    "TrainingPlan": "._plan",
}

__all__ = [
    "Architecture",
    "BiTro",
    "BiTroModule",
    "TrainingInterrupted",
    "TrainingPlan",
    "default_model",
    "default_model_path",
    "encoders",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
