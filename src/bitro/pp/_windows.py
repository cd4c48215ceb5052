"""Reading level-0 image windows and grouping cells by the tile that holds their centroid."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np


def read_rgb(image, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """RGB float32 window (h, w, 3) in [0, 1] of the level-0 image, clipped to it by the caller."""
    from skimage.util import img_as_float32

    block = np.asarray(image[:3, y0:y1, x0:x1])
    if block.shape[0] < 3:
        raise ValueError(f"the image has {block.shape[0]} channel(s); cell features need RGB.")
    return img_as_float32(np.moveaxis(block, 0, -1))


def tiles(centroids: np.ndarray, width: int, height: int, tile_size: int):
    """Indices of the cells whose centroid lies in each tile (cells off the image go to the nearest tile)."""
    tx = np.clip(np.floor(centroids[:, 0] / tile_size), 0, max((width - 1) // tile_size, 0)).astype(int)
    ty = np.clip(np.floor(centroids[:, 1] / tile_size), 0, max((height - 1) // tile_size, 0)).astype(int)
    n_tx = max((width - 1) // tile_size, 0) + 1
    tile = ty * n_tx + tx
    order = np.argsort(tile, kind="stable")
    bounds = np.flatnonzero(np.diff(tile[order])) + 1
    return [grp for grp in np.split(order, bounds) if len(grp)]


def level_for(element, level0_mpp: float, target_mpp: float | None, cs: str) -> tuple[int, float]:
    """The pyramid level to read for ``target_mpp``: the coarsest whose pixels are no coarser (5 % slack); and its mpp."""
    from bitro import _sdata

    levels = _sdata.levels(element)
    if target_mpp is None or len(levels) == 1:
        return 0, level0_mpp
    mpps = [_sdata.linear_scale(_sdata.affine_xy(level, cs)) for level in levels]
    fine_enough = [i for i, m in enumerate(mpps) if m <= target_mpp * 1.05]
    index = max(fine_enough) if fine_enough else 0
    return index, float(mpps[index])


class ResampledImage:
    """A ``(c, y, x)`` view of an image at another pixel size: each window read from one pyramid level and resized.

    Cell features index it like the level-0 array (``view[:3, y0:y1, x0:x1]``, ``view.shape``), so
    they can be measured at a model's pixel size whatever the scan's; only the windows asked for are
    read, so memory stays bounded by the tile.
    """

    def __init__(self, element, *, level0_mpp: float, target_mpp: float, cs: str, white: float = 1.0) -> None:
        from bitro import _sdata

        index, mpp = level_for(element, level0_mpp, target_mpp, cs)
        self.source = _sdata.levels(element)[index].data
        if white != 1.0:  # floats in [0, 255] (see bitro._sdata.image_white): read as [0, 1]
            self.source = self.source / np.float32(white)
        self.factor = mpp / target_mpp  # target pixels per source pixel
        c, h, w = self.source.shape
        self.shape = (c, int(round(h * self.factor)), int(round(w * self.factor)))

    def __getitem__(self, key):
        c, ys, xs = key
        return self.resample(*self.read_source(c, ys.start or 0, ys.stop, xs.start or 0, xs.stop))

    def read_source(self, c, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, tuple]:
        """The source pixels under the window ``[y0:y1, x0:x1]`` (target pixels), and how to resample them."""
        f = self.factor
        sy0, sx0 = int(np.floor(y0 / f)), int(np.floor(x0 / f))
        sy1 = min(int(np.ceil(y1 / f)) + 1, self.source.shape[1])
        sx1 = min(int(np.ceil(x1 / f)) + 1, self.source.shape[2])
        block = np.asarray(self.source[c, sy0:sy1, sx0:sx1])
        return block, (f, sy0, sy1, sx0, sx1, y0, y1, x0, x1)

    @staticmethod
    def resample(block: np.ndarray, spec: tuple) -> np.ndarray:
        """The window from :meth:`read_source`'s pixels (a static method: it runs in worker processes)."""
        from ._resample import resize_bilinear

        f, sy0, sy1, sx0, sx1, y0, y1, x0, x1 = spec
        size = (int(round((sy1 - sy0) * f)), int(round((sx1 - sx0) * f)))
        big = resize_bilinear(block, size, channel_axis=0, anti_aliasing=f < 1)
        oy, ox = int(round(y0 - sy0 * f)), int(round(x0 - sx0 * f))
        out = big[:, oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
        if out.shape[1:] != (y1 - y0, x1 - x0):  # at the image's far edge: pad by repeating the border
            pad = ((0, 0), (0, y1 - y0 - out.shape[1]), (0, x1 - x0 - out.shape[2]))
            out = np.pad(out, pad, mode="edge")
        return out


class Window:
    """One window of an image, read now and indexed later like the image (global coordinates).

    The parent reads (cheap: a chunk read), a worker process resamples and measures: only the
    window's pixels travel, never the slide.
    """

    def __init__(self, image, y0: int, y1: int, x0: int, x1: int) -> None:
        self.box = (y0, y1, x0, x1)
        if isinstance(image, ResampledImage):
            self.block, self.spec = image.read_source(slice(0, 3), y0, y1, x0, x1)
        else:
            self.block, self.spec = np.asarray(image[:3, y0:y1, x0:x1]), None

    def __getitem__(self, key):
        c, ys, xs = key
        if (ys.start, ys.stop, xs.start, xs.stop) != self.box:
            raise IndexError(f"this window holds {self.box} (y0, y1, x0, x1), not {key}.")
        block = self.block if self.spec is None else ResampledImage.resample(self.block, self.spec)
        return block[c]


def map_tiles(func, jobs, *, n_jobs: int = 1):
    """``func(*job)`` for each job, in order: here, or in ``n_jobs`` worker processes.

    A fresh pool per call (shut down at the end): a worker that dies raises ``BrokenProcessPool``
    here instead of leaving a shared pool to hang. The workers are forked from a server process that
    imported bitro's tile code once (see :func:`pool_context`), so a pool starts in well under a
    second after the first. At most ``2 * n_jobs`` jobs are in flight, so a slide's tiles never all
    wait in memory. Each worker gets ``cpu_count // n_jobs`` math threads. Inside a dask worker (e.g.
    a slide of ``bt.tl.predict_slides``) the jobs run here.
    """
    if n_jobs <= 1 or in_dask_worker():
        for job in jobs:
            yield func(*job)
        return
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    context = pool_context()
    with ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        pending: deque = deque()
        try:
            for job in jobs:
                with _main_not_rerun():  # a submit may spawn a worker
                    pending.append(pool.submit(func, *job))
                if len(pending) >= 2 * n_jobs:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


PRELOAD = ("bitro.pp._segment", "bitro.pp._features", "bitro.pp._unet")
"""Modules the worker server imports once (the tile functions and what they need: numpy, skimage, torch)."""


def pool_context():
    """The ``multiprocessing`` context of tile workers: a forkserver that preloads :data:`PRELOAD`.

    A spawned worker imports bitro, numpy, skimage and torch anew (~4 s of CPU each, every pool); a
    forkserver pays that once per session and forks each worker from its clean, single-threaded
    state (unlike ``fork``, which would copy the caller's threads and locks). Spawn where the
    platform has no forkserver (Windows).
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # acts when the server starts (first pool); else no-op
    return context


@contextlib.contextmanager
def _main_not_rerun():
    """Spawned workers do not re-run the user's script: ``__main__`` is hidden while they start.

    A spawned process normally imports the parent's main module, so a script without an
    ``if __name__ == "__main__":`` guard would run again in every worker (and fail when it starts
    the pool again). Tile jobs only hold bitro's own importable functions and data, so the workers
    never need the main module (as with joblib's loky).
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if not saved:
        yield
        return
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _init_worker(n: int) -> None:
    """Worker initialiser: ``n`` threads for OpenMP / BLAS / torch, and exit with the parent.

    Libraries the server preloaded sized their thread pools at import, so they are limited here
    (torch, and threadpoolctl for BLAS / OpenMP); the variables hold for those imported later.
    A pool's idle workers outlive a parent that is killed (SIGKILL): each holds its own end of the
    job queue, so it never sees end-of-file. A daemon thread waits on the parent's sentinel instead.
    """
    import multiprocessing
    import threading

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # as a call, not a block: the limits stay for the worker's life
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent) -> None:
    parent.join()
    os._exit(1)


def in_dask_worker() -> bool:
    """Whether this code runs inside a ``dask.distributed`` worker's task."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
        return True
    except ValueError:
        return False
