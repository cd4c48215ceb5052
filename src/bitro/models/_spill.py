"""Bags of many samples on disk: their per-cell arrays in one file, memory-mapped once.

A bulk cohort's cells (features, positions, graph, tiles) would otherwise stay in memory for the
whole training run; here each sample's arrays are appended to one file as soon as its bags are cut,
and the training reads them back through the page cache, which the system reclaims. One file (not
one per array or sample) keeps a cohort of thousands of slides to one open file descriptor.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import sparse

from ._data import Bags

ALIGN = 64
"""Byte alignment of each array in the file (any dtype's itemsize divides it)."""


class BagSpill:
    """Append :class:`Bags` to ``path`` with :meth:`add`; :meth:`open` gives them back, memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "w+b")  # open until `open()`: samples are added one by one
        with contextlib.suppress(OSError):  # POSIX: the name goes now, the data when the last user does,
            os.unlink(self.path)  # so a killed run leaves no cohort-sized file behind (Windows: kept, removed after)
        self._stubs: list[tuple[Bags, dict]] = []

    def _put(self, array: np.ndarray) -> tuple[int, str, tuple]:
        array = np.ascontiguousarray(array)
        offset = self._file.tell()
        pad = -offset % ALIGN
        if pad:
            self._file.write(b"\0" * pad)
            offset += pad
        array.tofile(self._file)
        return offset, array.dtype.str, array.shape

    def add(self, bags: Bags) -> int:
        """Write the per-cell arrays of ``bags`` (which may then be released); returns its index."""
        graph = sparse.csr_matrix(bags.graph)
        layout = {
            "x": self._put(bags.x),
            "xy": self._put(bags.xy),
            "cell_index": self._put(bags.cell_index),
            "graph": (self._put(graph.data), self._put(graph.indices), self._put(graph.indptr), graph.shape),
            "seq_cells": (self._put(_flat(bags.seq_cells)), [len(a) for a in bags.seq_cells]),
            "seq_context": (self._put(_flat(bags.seq_context)), [len(a) for a in bags.seq_context]),
        }
        empty = np.zeros(0, np.float32)
        self._stubs.append(
            (replace(bags, x=empty, xy=empty, graph=None, seq_cells=[], seq_context=[], cell_index=empty), layout)
        )
        return len(self._stubs) - 1

    def close(self) -> None:
        """Close the file being written (a run that fails before :meth:`open` leaves no open handle)."""
        self._file.close()

    def open(self) -> list[Bags]:
        """Every added sample's :class:`Bags`, its per-cell arrays read-only views of the mapped file."""
        self._file.flush()
        size = os.fstat(self._file.fileno()).st_size
        buffer = np.memmap(self._file, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self.close()  # the mapping holds its own reference to the data

        def get(entry) -> np.ndarray:
            offset, dtype, shape = entry
            dtype = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            return buffer[offset : offset + n].view(dtype).reshape(shape)

        def split(entry) -> list[np.ndarray]:
            flat, lengths = entry
            return np.split(get(flat), np.cumsum(lengths)[:-1]) if lengths else []

        out = []
        for stub, layout in self._stubs:
            data, indices, indptr, shape = layout["graph"]
            out.append(
                replace(
                    stub,
                    x=get(layout["x"]),
                    xy=get(layout["xy"]),
                    cell_index=get(layout["cell_index"]),
                    graph=sparse.csr_matrix((get(data), get(indices), get(indptr)), shape=shape),
                    seq_cells=split(layout["seq_cells"]),
                    seq_context=split(layout["seq_context"]),
                )
            )
        return out


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
