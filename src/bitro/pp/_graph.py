"""kNN cell graphs in µm, restricted to a bag (the cells of a spot, of a square tile, or of the whole section).

Stored like squidpy's ``spatial_neighbors``: sparse ``obsp["{key}_connectivities"]`` (1 per edge) and
``obsp["{key}_distances"]`` (µm), both symmetric, and the parameters in ``uns[key]``.
squidpy's builder is not used: it has no notion of cells outside every bag, and its kNN builder
needs more cells than neighbours in every library; one cKDTree over all cells with the bag as a
far-away third coordinate gives the per-bag kNN in one vectorised query instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_choice, check_float, check_int, check_name

if TYPE_CHECKING:
    from spatialdata import SpatialData


def _bags(
    sdata: SpatialData, table, xy_um: np.ndarray, within: str, tile_um: float | None, spot_key: str | None
) -> tuple[np.ndarray, dict]:
    """Bag code of each cell (``-1``: no bag, no edges) and the parameters that defined the bags."""
    n = len(xy_um)
    if within == "all":
        return np.zeros(n, dtype=np.int64), {}
    if within == "tile":
        if tile_um is None or not tile_um > 0:
            raise ValueError(f"`within='tile'` needs a positive `tile_um` (got {tile_um!r}).")
        tiles = np.floor(xy_um / float(tile_um)).astype(np.int64)
        codes = np.unique(tiles, axis=0, return_inverse=True)[1].reshape(-1) if n else np.zeros(0, np.int64)
        return codes.astype(np.int64), {"tile_um": float(tile_um)}
    if within == "spot":
        key = spot_key or _sdata.recorded(sdata, K.ATTR_SPOT_ASSIGNMENT)
        if key not in table.obs:
            raise KeyError(
                f"`within='spot'` needs the cells' spot in obs[{key!r}] of the cells table: run "
                "bt.pp.assign_cells first (or pass `spot_key`)."
            )
        codes = pd.Series(table.obs[key].to_numpy()).astype("category").cat.codes.to_numpy()
        return codes.astype(np.int64), {"spot_key": key}
    raise ValueError(f"`within` must be 'spot', 'tile' or 'all', got {within!r}.")


def _knn_within_bags(xy: np.ndarray, bags: np.ndarray, k: int, radius: float | None):
    """Directed kNN edges (rows, cols, distances) between cells of the same bag; cells with bag ``-1`` get none."""
    from scipy.spatial import cKDTree

    idx = np.flatnonzero(bags >= 0)
    if len(idx) < 2 or k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    pts = xy[idx]
    # the bag as a third coordinate, further apart than any two cells: same-bag distances stay exact
    # (identical z), other bags are beyond the query's upper bound
    span = float(np.ptp(pts, axis=0).max()) if len(pts) else 0.0
    gap = float(2 ** np.ceil(np.log2(span + 2.0))) * 4.0
    bound = min(radius, gap / 2) if radius is not None else gap / 2
    coords = np.column_stack([pts, bags[idx].astype(float) * gap])
    kq = min(k + 1, len(idx))
    dist, nbr = cKDTree(coords).query(coords, k=kq, distance_upper_bound=np.nextafter(bound, np.inf))
    dist, nbr = dist.reshape(len(idx), kq), nbr.reshape(len(idx), kq)
    rows = np.repeat(np.arange(len(idx)), kq)
    cols, d = nbr.reshape(-1), dist.reshape(-1)
    ok = np.isfinite(d) & (cols != rows) & (cols < len(idx))
    rows, cols, d = rows[ok], cols[ok], d[ok]
    # a cell's own index may be missing from its k+1 (duplicate positions): keep at most k per cell
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < k
    return idx[rows[keep]], idx[cols[keep]], d[keep]


def cell_graph(
    sdata: SpatialData,
    *,
    k: int = 8,
    radius_um: float | None = None,
    within: Literal["spot", "tile", "all"] = "spot",
    tile_um: float | None = None,
    spot_key: str | None = None,
    key_added: str = K.GRAPH_KEY,
    copy: bool = False,
) -> SpatialData | None:
    """Build a symmetric kNN graph over cell centroids (µm), restricted to cells of the same bag.

    Each cell links to its ``k`` nearest cells in its bag (fewer if the bag is small or
    ``radius_um`` cuts them); the graph is then made symmetric (an edge in either direction is kept),
    so a cell can end up with more than ``k`` neighbours. Centroids are taken in the µm coordinate
    system recorded in ``sdata.attrs["bitro"]``.

    Parameters
    ----------
    sdata
        Spatial data with a cells layer (``bitro_cells`` table and its boundaries).
    k
        Number of nearest neighbours of each cell (8 as in BiTro).
    radius_um
        Drop edges longer than this (µm); ``None`` keeps all ``k`` neighbours.
    within
        Bags the edges stay inside: ``"spot"`` (cells with the same spot in ``obs[spot_key]``;
        cells outside every spot get no edges), ``"tile"`` (cells in the same square tile of side
        ``tile_um``, aligned to the coordinate system's origin) or ``"all"`` (one bag).
    tile_um
        Tile side (µm) for ``within="tile"``.
    spot_key
        ``obs`` column with each cell's spot for ``within="spot"``; defaults to the column the
        last :func:`bitro.pp.assign_cells` wrote (``"spot_id"``).
    key_added
        Prefix of the ``obsp`` keys and the ``uns`` key of the parameters.
    copy
        Return a modified copy instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes, in the cells table,
    ``obsp[f"{key_added}_connectivities"]`` (CSR, 1.0 per edge), ``obsp[f"{key_added}_distances"]``
    (CSR, µm) and ``uns[key_added]`` (keys of both matrices and the parameters), and records
    ``attrs["bitro"]["cell_graph_key"]``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9, seed=0)
    >>> bt.pp.segment_cells(sdata, method="watershed")
    >>> bt.pp.assign_cells(sdata)
    >>> bt.pp.cell_graph(sdata, k=8, within="spot")
    >>> graph = sdata["bitro_cells"].obsp["bitro_graph_distances"]
    >>> graph.shape[0] == sdata["bitro_cells"].n_obs
    True
    """
    from scipy import sparse

    k = check_int(k, "k", min_value=1)
    if radius_um is not None:
        radius_um = check_float(radius_um, "radius_um", min_value=0, strict_min=True)
    within = check_choice(within, "within", ("spot", "tile", "all"))
    key_added = check_name(key_added, "key_added")
    sdata = _sdata.copy_or_self(sdata, copy)
    table_key, xy = _sdata.cell_centroids_um(sdata)
    table = _sdata.editable_table(sdata, table_key)
    bags, bag_params = _bags(sdata, table, xy, within, tile_um, spot_key)
    rows, cols, dist = _knn_within_bags(xy, bags, int(k), radius_um)

    n = len(xy)
    directed = sparse.csr_matrix((dist, (rows, cols)), shape=(n, n))
    # symmetric union; distances are symmetric, so the larger of the two stored entries is the distance
    distances = directed.maximum(directed.T).tocsr()
    distances.sort_indices()
    connectivities = distances.copy()
    connectivities.data = np.ones_like(connectivities.data)

    conn_key, dist_key = f"{key_added}_connectivities", f"{key_added}_distances"
    table.obsp[conn_key] = connectivities
    table.obsp[dist_key] = distances
    params = {"k": int(k), "within": within, "coordinate_system": _sdata.coordinate_system(sdata)}
    if radius_um is not None:
        params["radius_um"] = float(radius_um)
    params.update(bag_params)
    table.uns[key_added] = {"connectivities_key": conn_key, "distances_key": dist_key, "params": params}
    _sdata.write(sdata, {table_key: table}, attrs={K.ATTR_GRAPH: key_added})
    degree = np.diff(connectivities.indptr)
    logger.info(
        "cell graph %s: %d edges over %d cells (k=%d, within=%s), %d cells without neighbours",
        key_added,
        connectivities.nnz // 2,
        n,
        k,
        within,
        int((degree == 0).sum()),
    )
    return sdata if copy else None
