"""Cell-to-spot assignment: each cell joins the nearest spot whose centre lies within ``factor`` x its radius.

Positions are compared in the µm coordinate system recorded in ``sdata.attrs["bitro"]``: spot
centres, spot radii and cell centroids are each mapped there with their own element's
transformation, so spots and cells never have to share a pixel frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_float, check_name

if TYPE_CHECKING:
    from spatialdata import SpatialData


MAX_FACTOR = 10.0
"""Largest accepted ``factor``: beyond it a spot would gather the cells of its neighbours many pitches away."""


def assign_cells(
    sdata: SpatialData,
    *,
    spots_key: str | None = None,
    factor: float = 1.5,
    key_added: str = K.SPOT_ID_KEY,
    copy: bool = False,
) -> SpatialData | None:
    """Assign each cell to the nearest spot whose centre lies within ``factor`` x the spot radius.

    Spot centres, radii and cell centroids are compared in the µm coordinate system recorded in
    ``sdata.attrs["bitro"]["coordinate_system"]``; each element is mapped there with its own
    transformation (radii are multiplied by the transformation's length scale). Candidate pairs come
    from a shapely STRtree; when a cell lies within reach of several spots, the nearest centre wins.

    Parameters
    ----------
    sdata
        Spatial data with a cells layer (``bitro_cells`` table and its boundaries, as written by
        a segmentation) and spot circles (points with a ``radius`` column, in the element's units).
    spots_key
        Shapes element of the spot circles; defaults to ``attrs["bitro"]["spots_key"]``.
    factor
        A cell joins a spot when its centroid is within ``factor`` x the spot radius of the centre
        (1.5 as in BiTro; 1.0 keeps only cells whose centroid is inside the spot); in ``(0, 10]``.
    key_added
        ``obs`` column of the cells table for the spot's instance id (the index of the spot
        shapes, nullable ``Int64``; ``<NA>`` for cells outside every spot). The distance to that
        spot's centre goes to ``obs["spot_distance_um"]`` (``NaN`` outside).
    copy
        Return a modified copy instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes ``obs[key_added]`` and
    ``obs["spot_distance_um"]`` of the cells table, ``uns["bitro_assign"]`` (parameters, number of
    cells outside every spot, number of spots without a cell and those spots as ``{spot_id: 0}``),
    and ``attrs["bitro"]["spot_assignment_key"]``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9, seed=0)
    >>> bt.pp.segment_cells(sdata, method="watershed")
    >>> bt.pp.assign_cells(sdata, factor=1.5)
    >>> sdata["bitro_cells"].obs["spot_id"].notna().sum() > 0  # cells within reach of a spot
    np.True_
    """
    import shapely

    factor = check_float(factor, "factor", min_value=0, max_value=MAX_FACTOR, strict_min=True)
    key_added = check_name(key_added, "key_added")
    sdata = _sdata.copy_or_self(sdata, copy)
    cs = _sdata.coordinate_system(sdata)
    spots_key = spots_key if spots_key is not None else _sdata.info(sdata).get(K.ATTR_SPOTS)
    if spots_key is None or spots_key not in sdata.shapes:
        raise KeyError(
            f"`spots_key`: {spots_key!r} is not a shapes element of `sdata` (shapes: {list(sdata.shapes)}); "
            "pass the spot circles' element or read the data with a bt.io spot reader."
        )
    spots = sdata.shapes[spots_key]
    if "radius" not in spots.columns or not (spots.geom_type == "Point").all():
        raise ValueError(f"`spots_key`: {spots_key!r} must hold spot circles (points with a `radius` column).")
    table_key, cells_um = _sdata.cell_centroids_um(sdata)
    table = _sdata.editable_table(sdata, table_key)
    centres_um, radius_um = _sdata.spots_um(sdata, spots_key)
    reach_um = factor * radius_um

    n_cells = len(cells_um)
    best_spot = np.full(n_cells, -1, dtype=np.int64)
    best_dist = np.full(n_cells, np.nan)
    if n_cells and len(centres_um):
        tree = shapely.STRtree(shapely.points(centres_um))
        cell_idx, spot_idx = tree.query(shapely.points(cells_um), predicate="dwithin", distance=float(reach_um.max()))
        dist = np.hypot(*(cells_um[cell_idx] - centres_um[spot_idx]).T)
        keep = dist <= reach_um[spot_idx]
        cell_idx, spot_idx, dist = cell_idx[keep], spot_idx[keep], dist[keep]
        order = np.lexsort((dist, cell_idx))  # by cell, nearest first
        first = np.unique(cell_idx[order], return_index=True)[1]
        chosen = order[first]
        best_spot[cell_idx[chosen]] = spot_idx[chosen]
        best_dist[cell_idx[chosen]] = dist[chosen]

    inside = best_spot >= 0
    spot_ids = spots.index.to_numpy()
    if pd.api.types.is_integer_dtype(spots.index):
        values = pd.array(np.where(inside, spot_ids[np.maximum(best_spot, 0)], 0), dtype="Int64")
        values[~inside] = pd.NA
    else:
        values = pd.Categorical(
            np.where(inside, spot_ids.astype(str)[np.maximum(best_spot, 0)], None), categories=spot_ids.astype(str)
        )
    table.obs[key_added] = pd.Series(values, index=table.obs.index)
    table.obs[K.SPOT_DISTANCE_KEY] = best_dist

    used = np.zeros(len(spot_ids), dtype=bool)
    used[best_spot[inside]] = True
    empty = {str(s): 0 for s in spot_ids[~used]}
    n_outside = int((~inside).sum())
    table.uns[K.ASSIGN_UNS_KEY] = {
        "params": {"spots_key": spots_key, "factor": float(factor), "key_added": key_added, "coordinate_system": cs},
        "n_cells_assigned": int(inside.sum()),
        "n_cells_outside_spots": n_outside,
        "n_spots_without_cells": len(empty),
        "spots_without_cells": empty,
    }
    _sdata.write(sdata, {table_key: table}, attrs={K.ATTR_SPOT_ASSIGNMENT: key_added})
    logger.info(
        "%d of %d cells assigned to %d spots of %s (factor %.2g); %d cells outside every spot, %d spots without a cell",
        int(inside.sum()),
        n_cells,
        int(used.sum()),
        spots_key,
        factor,
        n_outside,
        len(empty),
    )
    return sdata if copy else None
