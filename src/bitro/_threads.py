"""torch's thread count, kept across libraries that change it behind its back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Keep torch's thread count as it was before the block, whatever numba does in it.

    scanpy's residual variances and squidpy's Moran's I run numba kernels; numba's OpenMP layer sets
    the thread count of the OpenMP runtime it shares with torch (one libgomp) to its own (all cores).
    torch then ran on numba's count, not the user's (``OMP_NUM_THREADS``, ``torch.set_num_threads``),
    and a process that had used those threads hung the processes ``strategy="ddp_fork"`` forks from it.
    """
    import torch  # even when unused so far: torch reads the runtime's count at its first parallel use

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
