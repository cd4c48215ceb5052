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
from bitro._logging import logger
from bitro.pp._cells import add_element, bitro_info

if TYPE_CHECKING:
    from spatialdata import SpatialData


# --- shared helpers (also used by the graph and the plots) ---------------------------------------


def _affine_xy(element, cs: str) -> np.ndarray:
    """3x3 affine matrix (x, y) mapping ``element`` to coordinate system ``cs``, with a clear error if it has none."""
    from spatialdata.transformations import get_transformation

    transformations = get_transformation(element, get_all=True)
    if cs not in transformations:
        raise ValueError(
            f"element has no transformation to the coordinate system {cs!r} recorded in attrs['bitro'] "
            f"(it has {list(transformations)})."
        )
    return np.asarray(transformations[cs].to_affine_matrix(("x", "y"), ("x", "y")), dtype=float)


def _apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map ``(n, 2)`` points with a 3x3 affine matrix."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def _linear_scale(matrix: np.ndarray) -> float:
    """Length scale of an affine map (its area scale's square root); lengths like radii multiply by it."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def _cells_table_key(sdata: SpatialData) -> str:
    key = bitro_info(sdata).get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY)
    if key not in sdata.tables:
        raise KeyError(
            f"`sdata` has no cells table {key!r}: run a segmentation (bt.pp.segment_cells) first "
            f"(tables: {list(sdata.tables)})."
        )
    return key


def _cells_shapes_key(sdata: SpatialData, table_key: str) -> str:
    table = sdata.tables[table_key]
    key = bitro_info(sdata).get(K.ATTR_CELLS_SHAPES)
    if key is None:
        regions = table.uns.get("spatialdata_attrs", {}).get("region")
        key = regions if isinstance(regions, str) else (list(regions)[0] if regions is not None else None)
    if key is None or key not in sdata.shapes:
        raise KeyError(
            f"the cells boundaries {key!r} that table {table_key!r} annotates are not shapes of `sdata` "
            f"(shapes: {list(sdata.shapes)})."
        )
    return key


def cell_boundaries(sdata: SpatialData) -> tuple[str, str, np.ndarray]:
    """Cells table key, boundaries key and the boundary polygons ordered like the table's rows.

    Rows are matched to polygons on the table's instance key; a cell without a boundary is an error.
    Polygons are in the boundaries element's own frame.
    """
    table_key = _cells_table_key(sdata)
    shapes_key = _cells_shapes_key(sdata, table_key)
    table, shapes = sdata.tables[table_key], sdata.shapes[shapes_key]
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.CELL_ID_KEY)
    ids = table.obs[instance_key].to_numpy()
    missing = ~pd.Index(ids).isin(shapes.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} cells of table {table_key!r} have no boundary in {shapes_key!r}.")
    return table_key, shapes_key, shapes.geometry.loc[ids].to_numpy()


def cell_centroids_um(sdata: SpatialData) -> tuple[str, np.ndarray]:
    """Cells table key and the ``(n_cells, 2)`` centroids of its cells in the µm coordinate system.

    Centroids are those of the boundary polygons, mapped with the boundaries' own transformation
    and ordered like the table's rows (matched on the table's instance key).
    """
    import shapely

    cs = bitro_info(sdata)[K.ATTR_COORDINATE_SYSTEM]
    table_key, shapes_key, geometry = cell_boundaries(sdata)
    shapes = sdata.shapes[shapes_key]
    centroid_px = shapely.get_coordinates(shapely.centroid(geometry)) if len(geometry) else np.zeros((0, 2))
    return table_key, _apply(_affine_xy(shapes, cs), centroid_px)


def _copy_or_self(sdata: SpatialData, copy: bool) -> SpatialData:
    if not copy:
        return sdata
    from spatialdata import deepcopy

    out = deepcopy(sdata)
    out.attrs.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in sdata.attrs.items()})
    return out


def _record_attrs(sdata: SpatialData, **entries) -> None:
    info = dict(bitro_info(sdata))
    info.update(entries)
    sdata.attrs[K.ATTRS_KEY] = info
    if sdata.is_backed():
        sdata.write_attrs()


# --- the step ------------------------------------------------------------------------------------


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
        (1.5 as in BiTro; 1.0 keeps only cells whose centroid is inside the spot).
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
    >>> sdata = bt.datasets.toy_st()
    >>> bt.pp.segment_cells(sdata)  # doctest: +SKIP
    >>> bt.pp.assign_cells(sdata, factor=1.5)  # doctest: +SKIP
    >>> sdata["bitro_cells"].obs["spot_id"].value_counts()  # doctest: +SKIP
    """
    import shapely

    if factor <= 0:
        raise ValueError(f"`factor` must be positive, got {factor}.")
    sdata = _copy_or_self(sdata, copy)
    info = bitro_info(sdata)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    spots_key = spots_key if spots_key is not None else info.get(K.ATTR_SPOTS)
    if spots_key is None or spots_key not in sdata.shapes:
        raise KeyError(
            f"`spots_key`: {spots_key!r} is not a shapes element of `sdata` (shapes: {list(sdata.shapes)}); "
            "pass the spot circles' element or read the data with a bt.io spot reader."
        )
    spots = sdata.shapes[spots_key]
    if "radius" not in spots.columns or not (spots.geom_type == "Point").all():
        raise ValueError(f"`spots_key`: {spots_key!r} must hold spot circles (points with a `radius` column).")
    table_key, cells_um = cell_centroids_um(sdata)
    table = sdata.tables[table_key]

    spot_matrix = _affine_xy(spots, cs)
    centres_um = _apply(spot_matrix, shapely.get_coordinates(spots.geometry.to_numpy()))
    reach_um = factor * spots["radius"].to_numpy(dtype=float) * _linear_scale(spot_matrix)

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
    add_element(sdata, table_key, table)
    _record_attrs(sdata, **{K.ATTR_SPOT_ASSIGNMENT: key_added})
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
