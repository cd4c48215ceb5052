"""``bt.io.read_zarr``: read a SpatialData zarr store that bitro wrote, crash-safe."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._common import check_path

if TYPE_CHECKING:
    from spatialdata import SpatialData


def read_zarr(path: str | os.PathLike) -> SpatialData:
    """Read a SpatialData zarr store, first undoing a bitro write that a crash interrupted.

    bitro writes into a backed store crash-safely (the new elements are complete on disk before
    the old ones go, see :func:`bitro.pp.segment_cells`); a process killed in the middle of that
    swap leaves a journal, and this reader puts the previous elements back before reading.
    Otherwise it is :func:`spatialdata.read_zarr`.

    Parameters
    ----------
    path
        Folder of the zarr store (``*.zarr``).

    Returns
    -------
    The :class:`spatialdata.SpatialData` object, backed by ``path``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=4)
    >>> sdata.write("toy.zarr", overwrite=True)  # doctest: +SKIP
    >>> sdata = bt.io.read_zarr("toy.zarr")  # doctest: +SKIP
    """
    import spatialdata as sd

    from bitro._store import is_store, recover

    path = check_path(path, name="path", kind="dir")
    if not is_store(path):
        raise ValueError(f"`path`: {path} is not a zarr store (no zarr.json).")
    recover(path)
    try:
        return sd.read_zarr(path)
    except (OSError, ValueError, KeyError, TypeError) as err:  # damaged metadata or arrays: say which store
        raise ValueError(f"`path`: {path} is not a readable SpatialData store ({type(err).__name__}: {err}).") from err
