"""Cell features from whole tiles: one encoder forward per tile, each cell pooled from the patch tokens under it.

A crop per cell costs one forward per cell; a tile (a ViT's input size; 8 crops wide for a
convolutional encoder) holds tens to hundreds of nuclei, so this path is that many times cheaper.
Tiles overlap by a margin of whole patches: a cell
belongs to the tile whose core (the tile less its margin) holds its centroid, so every cell sees at
least the margin of context, and the result does not depend on the batch size. A cell's feature is
the mean of the patch features weighted by the area of its polygon over each patch; a polygon with
no area takes the bilinear sample of the patch grid at its centroid.
"""

from __future__ import annotations

import numpy as np
import torch

from ._encoder import _autocast, _normaliser, padded_window


def encode_tiles(image, geometry, model, *, batch_size: int, device) -> np.ndarray:
    """Features (cells x ``model.token_dim``) pooled from tile patch tokens at the image's pixel size.

    ``image`` is a level-0 ``(c, y, x)`` array (or view) already at the encoder's pixel size and
    ``geometry`` the cell polygons in its pixels; ``batch_size`` tiles go through the encoder at once.
    """
    import shapely

    from ._windows import tiles

    size, patch, margin = model.tile_input, model.patch_size, model.tile_margin  # margin: whole patches
    stride = size - 2 * margin
    mean, std = _normaliser(model, device)
    n = len(geometry)
    values = np.full((n, model.token_dim), np.nan, dtype=np.float32)
    if n == 0:
        return values
    _, height, width = image.shape
    centroids = shapely.get_coordinates(shapely.centroid(geometry))
    groups = tiles(centroids, width, height, stride)
    with torch.inference_mode(), _autocast(device):
        for b in range(0, len(groups), batch_size):
            batch = groups[b : b + batch_size]
            origins = [_origin(centroids[cells[0]], stride, margin, width, height) for cells in batch]
            windows = np.stack([padded_window(image, x0, y0, x0 + size, y0 + size) for x0, y0 in origins])
            x = torch.from_numpy(windows.transpose(0, 3, 1, 2)).to(device)
            maps = model.token_map((x - mean) / std).float().cpu().numpy()
            for cells, (x0, y0), grid in zip(batch, origins, maps, strict=True):
                values[cells] = _pool(geometry[cells], centroids[cells], grid, x0, y0, patch)
    return values


def _origin(centroid: np.ndarray, stride: int, margin: int, width: int, height: int) -> tuple[int, int]:
    """Top-left level pixel of the tile whose core holds ``centroid`` (cells off the image: the nearest tile)."""
    tx = int(np.clip(np.floor(centroid[0] / stride), 0, max((width - 1) // stride, 0)))
    ty = int(np.clip(np.floor(centroid[1] / stride), 0, max((height - 1) // stride, 0)))
    return tx * stride - margin, ty * stride - margin


def _pool(polygons: np.ndarray, centroids: np.ndarray, grid: np.ndarray, x0: int, y0: int, patch: int) -> np.ndarray:
    """Area-weighted mean of the patch features (``grid``: dim x gh x gw) under each polygon."""
    import shapely

    dim, gh, gw = grid.shape
    local = shapely.transform(polygons, lambda xy: (xy - (x0, y0)) / patch)  # in patch units
    jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
    boxes = shapely.box(jj.ravel(), ii.ravel(), jj.ravel() + 1, ii.ravel() + 1)
    cell, box = shapely.STRtree(boxes).query(local, predicate="intersects")
    area = shapely.area(shapely.intersection(local[cell], boxes[box]))
    tokens = grid.reshape(dim, gh * gw).T
    sums = np.zeros((len(polygons), dim))
    np.add.at(sums, cell, tokens[box] * area[:, None])
    weight = np.bincount(cell, weights=area, minlength=len(polygons))
    out = np.empty((len(polygons), dim), dtype=np.float32)
    ok = weight > 0
    out[ok] = sums[ok] / weight[ok, None]
    if (~ok).any():  # no area (or off the tile): bilinear at the centroid
        out[~ok] = _bilinear(grid, (centroids[~ok] - (x0, y0)) / patch)
    return out


def _bilinear(grid: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``grid`` (dim x gh x gw; cell (i, j) spans [j, j+1) x [i, i+1)) at ``xy``."""
    import torch.nn.functional as F

    dim, gh, gw = grid.shape
    u = torch.from_numpy(np.stack([2 * xy[:, 0] / gw - 1, 2 * xy[:, 1] / gh - 1], axis=1)).float()
    out = F.grid_sample(torch.from_numpy(grid)[None], u.view(1, 1, -1, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # fmt: skip
    return out[0, :, 0].T.numpy()
