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
