"""Label images and masks to polygons: the one vectoriser of segmentation, imported labels and tissue masks.

Pixel convention of spatialdata: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``,
so its centre is ``(col + 0.5, row + 0.5)``. Outlines are traced with
:func:`skimage.measure.find_contours` at the 0.5 iso-level of the padded mask, which runs through
pixel edges' midpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def trace(mask: np.ndarray, *, origin=(0.0, 0.0)) -> list[np.ndarray]:
    """Closed outlines ``(n, 2)`` in ``(x, y)`` of a boolean mask, shifted by ``origin`` ``(x0, y0)``.

    Outlines of fewer than 4 points (single pixels touching by a corner) are left out.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.float32)
    # padded (row, col) -> mask index (row - 1, col - 1) -> coordinate index + 0.5
    shift = np.array([origin[0] - 0.5, origin[1] - 0.5])
    return [c[:, ::-1] + shift for c in find_contours(padded, 0.5) if len(c) >= 4]


def _polygon_parts(rings: list[np.ndarray]) -> list:
    """Valid areal polygons from outlines (a self-touching outline is split by ``make_valid``)."""
    import shapely

    parts = []
    for ring in rings:
        polygon = shapely.make_valid(shapely.Polygon(ring))
        parts += [p for p in getattr(polygon, "geoms", [polygon]) if p.geom_type == "Polygon" and p.area > 0]
    return parts


def labels_to_polygons(
    labels: np.ndarray,
    *,
    offset=(0.0, 0.0),
    simplify: float = 0.0,
    skip: Callable[[slice, slice], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One polygon per label of an integer label image (0 is background).

    Parameters
    ----------
    labels
        ``(H, W)`` integer labels.
    offset
        ``(x0, y0)`` added to every coordinate (the image position of ``labels[0, 0]``).
    simplify
        Douglas-Peucker tolerance in pixels (0: none).
    skip
        ``skip(rows, cols)`` -> ``True`` leaves a label out before it is traced (e.g. a cell a tile
        does not own); such labels are not counted as skipped.

    Returns
    -------
    The polygons (object array; a label split into pieces keeps its largest piece), their label
    ids, and the number of labels that gave no valid polygon.
    """
    import shapely
    from scipy import ndimage

    labels = np.asarray(labels)
    polygons, ids, skipped = [], [], 0
    for index, window in enumerate(ndimage.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if window is None or (skip is not None and skip(*window)):
            continue
        origin = (window[1].start + offset[0], window[0].start + offset[1])
        parts = _polygon_parts(trace(labels[window] == index, origin=origin))
        if not parts:
            skipped += 1
            continue
        polygons.append(max(parts, key=lambda p: p.area))
        ids.append(index)
    out = np.empty(len(polygons), dtype=object)
    out[:] = polygons
    if simplify > 0 and len(out):
        out = shapely.simplify(out, simplify, preserve_topology=True)
    return out, np.asarray(ids, dtype=np.int64), skipped


def mask_to_polygon(mask: np.ndarray, *, downsample: tuple[float, float] = (1.0, 1.0), simplify_px: float = 1.0):
    """Outline of a boolean mask as one :class:`shapely.Polygon` / :class:`shapely.MultiPolygon`, or ``None``.

    ``downsample`` is ``(y, x)``: the size of one mask pixel in output units (e.g. level-0 pixels).
    ``simplify_px`` is a Douglas-Peucker tolerance in mask pixels (0: none).
    """
    import shapely

    mask = np.asarray(mask, dtype=bool)
    parts = _polygon_parts(trace(mask)) if mask.any() else []
    if not parts:
        return None
    geometry = shapely.union_all(parts)
    if simplify_px > 0:
        geometry = shapely.simplify(geometry, tolerance=float(simplify_px), preserve_topology=True)
    geometry = shapely.affinity.scale(geometry, xfact=float(downsample[1]), yfact=float(downsample[0]), origin=(0, 0))
    # keep only areal parts (make_valid may leave lines where an outline touches itself)
    parts = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, shapely.Polygon) and g.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
