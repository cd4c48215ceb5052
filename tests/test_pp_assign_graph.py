"""Cell-to-spot assignment and cell graphs on the toy section's true nuclei."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bitro import _constants as K
from bitro._sdata import cell_centroids_um
from bitro.pp._assign import assign_cells
from bitro.pp._graph import cell_graph


def _spot_ids(sdata, key=K.SPOT_ID_KEY) -> np.ndarray:
    return sdata[K.CELLS_TABLE_KEY].obs[key].astype("Float64").fillna(-1).to_numpy(dtype=float)


def _true_spot_ids(sdata) -> np.ndarray:
    return sdata[K.TRUE_CELLS_TABLE_KEY].obs[K.SPOT_ID_KEY].astype("Float64").fillna(-1).to_numpy(dtype=float)


# --- assign_cells --------------------------------------------------------------------------------


def test_factor_one_recovers_true_spots(toy_cells, bitro_log):
    assign_cells(toy_cells, factor=1.0)
    obs = toy_cells[K.CELLS_TABLE_KEY].obs
    assert obs[K.SPOT_ID_KEY].dtype == "Int64"
    np.testing.assert_array_equal(_spot_ids(toy_cells), _true_spot_ids(toy_cells))
    inside = obs[K.SPOT_ID_KEY].notna().to_numpy()
    assert inside.any()
    assert (~inside).any()
    radius_um = 55.0 * toy_cells.attrs[K.ATTRS_KEY][K.ATTR_MPP]
    assert (obs["spot_distance_um"][inside] <= radius_um + 1e-9).all()
    assert obs["spot_distance_um"][~inside].isna().all()
    uns = toy_cells[K.CELLS_TABLE_KEY].uns["bitro_assign"]
    assert uns["n_cells_outside_spots"] == int((~inside).sum())
    assert uns["n_spots_without_cells"] == len(uns["spots_without_cells"])
    assert toy_cells.attrs[K.ATTRS_KEY]["spot_assignment_key"] == K.SPOT_ID_KEY
    assert "cells outside every spot" in bitro_log.text


def test_factor_one_and_a_half_assigns_a_superset(toy_cells):
    assign_cells(toy_cells, factor=1.0)
    strict = _spot_ids(toy_cells)
    assign_cells(toy_cells, factor=1.5, key_added="spot_wide")
    wide = _spot_ids(toy_cells, "spot_wide")
    inside = strict >= 0
    np.testing.assert_array_equal(wide[inside], strict[inside])  # nearest spot wins, spots never overlap
    assert (wide >= 0).sum() > inside.sum()
    distance = toy_cells[K.CELLS_TABLE_KEY].obs["spot_distance_um"]
    assert distance.max() <= 1.5 * 55.0 * 0.5 + 1e-9


def test_nearest_spot_wins_when_reaches_overlap(toy_cells):
    assign_cells(toy_cells, factor=3.0)
    _, cells_um = cell_centroids_um(toy_cells)
    obs = toy_cells[K.CELLS_TABLE_KEY].obs
    spots = toy_cells.shapes[toy_cells.attrs[K.ATTRS_KEY][K.ATTR_SPOTS]]
    # the toy's spots: pixels -> µm with Scale(0.5) + Translation(1500, 800)
    centres_um = np.column_stack([spots.geometry.x, spots.geometry.y]) * 0.5 + [1500, 800]
    d = np.linalg.norm(cells_um[:, None] - centres_um[None], axis=-1)
    assigned = obs[K.SPOT_ID_KEY].notna().to_numpy()
    np.testing.assert_array_equal(
        obs[K.SPOT_ID_KEY][assigned].to_numpy(dtype=int), spots.index.to_numpy()[d.argmin(axis=1)][assigned]
    )
    np.testing.assert_allclose(obs["spot_distance_um"][assigned], d.min(axis=1)[assigned])


def _reframed_spots(sdata, *, how: str):
    import geopandas as gpd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    info = sdata.attrs[K.ATTRS_KEY]
    cs, spots = info[K.ATTR_COORDINATE_SYSTEM], sdata.shapes[info[K.ATTR_SPOTS]]
    x, y, r = spots.geometry.x.to_numpy(), spots.geometry.y.to_numpy(), spots["radius"].to_numpy()
    if how == "um_identity":  # spot circles already in µm of the coordinate system
        gdf = gpd.GeoDataFrame({"radius": r * 0.5}, geometry=gpd.points_from_xy(x * 0.5 + 1500, y * 0.5 + 800))
        transformation = Identity()
    else:  # coordinates doubled, compensated by a Scale(0.25) instead of Scale(0.5)
        gdf = gpd.GeoDataFrame({"radius": r * 2}, geometry=gpd.points_from_xy(x * 2, y * 2))
        transformation = Sequence([Scale([0.25, 0.25], axes=("x", "y")), Translation([1500, 800], axes=("x", "y"))])
    gdf.index = spots.index
    sdata["spots_moved"] = ShapesModel.parse(gdf, transformations={cs: transformation})
    return "spots_moved"


@pytest.mark.parametrize("how", ["um_identity", "scaled_by_two"])
def test_assignment_does_not_depend_on_the_spots_frame(toy_cells, how):
    assign_cells(toy_cells, factor=1.5)
    reference = _spot_ids(toy_cells)
    key = _reframed_spots(toy_cells, how=how)
    assign_cells(toy_cells, spots_key=key, factor=1.5, key_added="spot_moved")
    np.testing.assert_array_equal(_spot_ids(toy_cells, "spot_moved"), reference)


def test_copy_leaves_the_input_alone(toy_cells):
    out = assign_cells(toy_cells, copy=True)
    assert K.SPOT_ID_KEY not in toy_cells[K.CELLS_TABLE_KEY].obs
    assert "spot_assignment_key" not in toy_cells.attrs[K.ATTRS_KEY]
    assert out[K.CELLS_TABLE_KEY].obs[K.SPOT_ID_KEY].notna().any()
    assert assign_cells(toy_cells) is None


def test_missing_spots_key_is_a_clear_error(toy_cells):
    with pytest.raises(KeyError, match="spots_key"):
        assign_cells(toy_cells, spots_key="nope")
    with pytest.raises(ValueError, match="spot circles"):
        assign_cells(toy_cells, spots_key=toy_cells.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES])


def test_no_cells_layer_is_a_clear_error(toy_st):
    with pytest.raises(KeyError, match="segment"):
        assign_cells(toy_st)
    with pytest.raises(KeyError, match="segment"):
        cell_graph(toy_st, within="all")


def test_results_survive_a_zarr_round_trip(toy_cells, tmp_path):
    from spatialdata import read_zarr

    assign_cells(toy_cells, factor=1.5)
    cell_graph(toy_cells)
    toy_cells.write(tmp_path / "s.zarr")
    back = read_zarr(tmp_path / "s.zarr")
    table = back[K.CELLS_TABLE_KEY]
    np.testing.assert_array_equal(_spot_ids(back), _spot_ids(toy_cells))
    assert table.obsp["bitro_graph_distances"].nnz == toy_cells[K.CELLS_TABLE_KEY].obsp["bitro_graph_distances"].nnz
    assert table.uns["bitro_assign"]["n_cells_outside_spots"] >= 0
    assert back.attrs[K.ATTRS_KEY]["cell_graph_key"] == "bitro_graph"


def test_writes_into_a_backed_object(toy_cells, tmp_path):
    from spatialdata import read_zarr

    toy_cells.write(tmp_path / "b.zarr")
    backed = read_zarr(tmp_path / "b.zarr")
    assign_cells(backed, factor=1.0)
    again = read_zarr(tmp_path / "b.zarr")
    np.testing.assert_array_equal(_spot_ids(again), _true_spot_ids(toy_cells))


# --- cell_graph ----------------------------------------------------------------------------------


@pytest.fixture
def assigned(toy_cells):
    assign_cells(toy_cells, factor=1.5)
    return toy_cells


def _edges(sdata, key="bitro_graph"):
    table = sdata[K.CELLS_TABLE_KEY]
    return table.obsp[f"{key}_connectivities"].tocoo(), table.obsp[f"{key}_distances"].tocsr()


def test_spot_graph_stays_inside_spots(assigned):
    cell_graph(assigned, k=8, within="spot")
    conn, dist = _edges(assigned)
    spot = _spot_ids(assigned)
    assert (conn.row != conn.col).all()
    assert (spot[conn.row] == spot[conn.col]).all()
    assert (spot[conn.row] >= 0).all()  # cells outside every spot get no edges
    assert (abs(conn.tocsr() - conn.T.tocsr())).nnz == 0  # symmetric
    assert (abs(dist - dist.T)).max() < 1e-9
    # every cell reaches min(k, bag size - 1) neighbours of its own; symmetry may add more
    degree = np.diff(conn.tocsr().indptr)
    sizes = pd.Series(spot).map(pd.Series(spot).value_counts()).to_numpy()
    inside = spot >= 0
    assert (degree[inside] >= np.minimum(8, sizes[inside] - 1)).all()
    assert (degree[~inside] == 0).all()
    params = assigned[K.CELLS_TABLE_KEY].uns["bitro_graph"]["params"]
    assert params["k"] == 8
    assert params["within"] == "spot"


def test_out_degree_is_k_nearest(assigned):
    """Without symmetrisation each cell links exactly its k nearest bag-mates: check against brute force."""
    cell_graph(assigned, k=3, within="all")
    _, xy = cell_centroids_um(assigned)
    conn, _ = _edges(assigned)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :3]
    csr = conn.tocsr()
    for i in range(0, len(xy), 37):
        assert set(nearest[i]) <= set(csr.indices[csr.indptr[i] : csr.indptr[i + 1]])


def test_distances_are_centroid_distances_in_um(assigned):
    cell_graph(assigned, within="spot")
    _, xy = cell_centroids_um(assigned)
    _, dist = _edges(assigned)
    coo = dist.tocoo()
    np.testing.assert_allclose(coo.data, np.linalg.norm(xy[coo.row] - xy[coo.col], axis=1), rtol=1e-9)
    # the table's µm centroids differ from these by a translation only: same distances
    obs = assigned[K.CELLS_TABLE_KEY].obs[[K.CENTROID_X_UM, K.CENTROID_Y_UM]].to_numpy()
    np.testing.assert_allclose(coo.data, np.linalg.norm(obs[coo.row] - obs[coo.col], axis=1), rtol=1e-6)


def test_radius_cut(assigned):
    cell_graph(assigned, within="all", key_added="full")
    cell_graph(assigned, within="all", radius_um=8.0, key_added="cut")
    _, full = _edges(assigned, "full")
    conn, cut = _edges(assigned, "cut")
    assert cut.data.max() <= 8.0
    assert 0 < cut.nnz < full.nnz
    # the cut graph is the full graph without its long edges
    kept = full.copy()
    kept.data[kept.data > 8.0] = 0
    kept.eliminate_zeros()
    assert abs(kept - cut).max() < 1e-12


def test_tile_graph_stays_inside_tiles(assigned):
    cell_graph(assigned, within="tile", tile_um=60.0, key_added="tiles")
    _, xy = cell_centroids_um(assigned)
    conn, _ = _edges(assigned, "tiles")
    tile = np.floor(xy / 60.0)
    assert conn.nnz > 0
    assert (tile[conn.row] == tile[conn.col]).all()
    with pytest.raises(ValueError, match="tile_um"):
        cell_graph(assigned, within="tile")


def test_graph_errors(toy_cells):
    with pytest.raises(KeyError, match="assign_cells"):
        cell_graph(toy_cells, within="spot")
    with pytest.raises(ValueError, match="within"):
        cell_graph(toy_cells, within="slide")
    with pytest.raises(ValueError, match="`k`"):
        cell_graph(toy_cells, k=0, within="all")


def test_graph_copy(assigned):
    out = cell_graph(assigned, copy=True)
    assert "bitro_graph_connectivities" not in assigned[K.CELLS_TABLE_KEY].obsp
    assert "bitro_graph_connectivities" in out[K.CELLS_TABLE_KEY].obsp
