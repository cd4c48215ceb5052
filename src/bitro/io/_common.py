"""Helpers shared by the readers: path checks, names, uniqueness, ``attrs["bitro"]``."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pandas as pd

from bitro import _constants as K
from bitro._logging import logger

_INVALID = re.compile(r"[^A-Za-z0-9_.-]")


def check_path(path: str | os.PathLike, *, name: str, kind: str = "file") -> Path:
    """Return ``path`` as :class:`~pathlib.Path` or raise naming the argument and what was expected.

    ``kind`` is ``"file"``, ``"dir"`` or ``"any"``.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`{name}` must be a path, got {type(path).__name__} {path!r}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"`{name}`: {p} does not exist.")
    if kind == "file" and not p.is_file():
        raise ValueError(f"`{name}`: {p} is not a file.")
    if kind == "dir" and not p.is_dir():
        raise ValueError(f"`{name}`: {p} is not a directory.")
    return p


def sanitize_id(value: str, *, name: str) -> str:
    """Make ``value`` usable as an element-name prefix (``[A-Za-z0-9_.-]``, no leading ``__``), logging any change."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
    clean = _INVALID.sub("_", value).lstrip("_") or "sample"
    if clean != value:
        logger.warning("`%s` %r is not a valid element name; using %r.", name, value, clean)
    return clean


def make_unique(index: pd.Index, *, what: str, source: str | os.PathLike) -> pd.Index:
    """Return ``index`` with duplicates made unique (``name-1``, ``name-2``, ...), warning with the count and file."""
    index = pd.Index(index.astype(str))
    if index.is_unique:
        return index
    n_dup = int(index.duplicated().sum())
    from anndata.utils import make_index_unique

    warnings.warn(
        f"{source}: {n_dup} duplicated {what} made unique by appending '-1', '-2', ...",
        UserWarning,
        stacklevel=3,
    )
    return make_index_unique(index)


def record_attrs(sdata, **entries) -> None:
    """Merge ``entries`` (JSON-serialisable) and the package version into ``sdata.attrs["bitro"]``."""
    from bitro import __version__

    info = dict(sdata.attrs.get(K.ATTRS_KEY, {}))
    info.update({k: v for k, v in entries.items() if v is not None})
    info[K.ATTR_VERSION] = __version__
    sdata.attrs[K.ATTRS_KEY] = info
