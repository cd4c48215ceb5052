"""Reading level-0 image windows and grouping cells by the tile that holds their centroid."""

from __future__ import annotations

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

    def __init__(self, element, *, level0_mpp: float, target_mpp: float, cs: str) -> None:
        from bitro import _sdata

        index, mpp = level_for(element, level0_mpp, target_mpp, cs)
        self.source = _sdata.levels(element)[index].data
        self.factor = mpp / target_mpp  # target pixels per source pixel
        c, h, w = self.source.shape
        self.shape = (c, int(round(h * self.factor)), int(round(w * self.factor)))

    def __getitem__(self, key):
        from skimage.transform import resize

        c, ys, xs = key
        y0, y1, x0, x1 = ys.start or 0, ys.stop, xs.start or 0, xs.stop
        f = self.factor
        sy0, sx0 = int(np.floor(y0 / f)), int(np.floor(x0 / f))
        sy1 = min(int(np.ceil(y1 / f)) + 1, self.source.shape[1])
        sx1 = min(int(np.ceil(x1 / f)) + 1, self.source.shape[2])
        block = np.asarray(self.source[c, sy0:sy1, sx0:sx1])
        big = resize(block, (block.shape[0], int(round((sy1 - sy0) * f)), int(round((sx1 - sx0) * f))), order=1,
                     preserve_range=True, anti_aliasing=f < 1).astype(block.dtype)  # fmt: skip
        oy, ox = int(round(y0 - sy0 * f)), int(round(x0 - sx0 * f))
        out = big[:, oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
        if out.shape[1:] != (y1 - y0, x1 - x0):  # at the image's far edge: pad by repeating the border
            pad = ((0, 0), (0, y1 - y0 - out.shape[1]), (0, x1 - x0 - out.shape[2]))
            out = np.pad(out, pad, mode="edge")
        return out
