"""Guarantees of the synthetic tissue that later tests rely on as ground truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd
from scipy import stats
from skimage.color import rgb2hed
from skimage.draw import polygon as draw_polygon
from spatialdata.transformations import get_transformation

import bitro as bt
from bitro import _constants as K


def _image(sdata, scale: str = "scale0") -> np.ndarray:
    key = sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    return np.asarray(sdata[key][scale]["image"].values)


def _spot_members(sdata) -> tuple[np.ndarray, np.ndarray]:
    """Recompute, from geometry alone, which true cell lies in which spot (or -1)."""
    info = sdata.attrs[K.ATTRS_KEY]
    spots = sdata[info[K.ATTR_SPOTS]]
    cells = sdata[info[K.ATTR_TRUE_CELLS]]
    centroids = shapely.get_coordinates(cells.geometry.centroid)
    centres = shapely.get_coordinates(spots.geometry)
    d = np.hypot(*(centroids[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    inside = d <= spots["radius"].to_numpy()[None, :]
    assert inside.sum(axis=1).max() <= 1  # spots do not overlap
    return np.where(inside.any(axis=1), inside.argmax(axis=1), -1), cells.index.to_numpy()


# --- layout, names and coordinates -------------------------------------------------------------


def test_toy_st_elements_follow_conventions(toy_st):
    info = toy_st.attrs[K.ATTRS_KEY]
    assert info[K.ATTR_IMAGE] == "toy_full_image"
    assert info[K.ATTR_SPOTS] == "toy"
    assert info[K.ATTR_COORDINATE_SYSTEM] == "toy"
    assert info[K.ATTR_MPP] == 0.5
    assert set(toy_st.coordinate_systems) == {"toy"}  # never "global"
    image = toy_st["toy_full_image"]
    assert list(image.keys())[:2] == ["scale0", "scale1"]  # multiscale
    arr = image["scale0"]["image"]
    assert arr.dims == ("c", "y", "x")
    assert arr.dtype == np.uint8
    assert arr.shape[0] == 3
    assert max(arr.data.chunksize) <= 1024  # chunked
    table = toy_st[K.TABLE_KEY]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == ("toy", "region", "spot_id")
    assert np.array_equal(table.obs["spot_id"], toy_st["toy"].index)
    assert table.n_obs == 25
    assert table.n_vars == 60


def test_toy_st_transformation_is_non_identity_and_in_um(toy_st):
    info = toy_st.attrs[K.ATTRS_KEY]
    spots = toy_st[info[K.ATTR_SPOTS]]
    t = get_transformation(spots, to_coordinate_system="toy")
    matrix = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    assert not np.allclose(matrix, np.eye(3))
    assert np.allclose(np.diag(matrix)[:2], 0.5)
    assert np.all(matrix[:2, 2] > 0)
    # radius is in pixels: 55 µm spot diameter at 0.5 µm/px
    assert np.allclose(spots["radius"], 55.0)
    # all elements share the image's transformation
    for key in (info[K.ATTR_IMAGE], info[K.ATTR_TRUE_CELLS]):
        other = get_transformation(toy_st[key], to_coordinate_system="toy")
        assert np.allclose(other.to_affine_matrix(("x", "y"), ("x", "y")), matrix)


def test_spot_lattice_hex_and_square():
    hexa = bt.datasets.toy_st(n_spots=9, n_genes=5, seed=0)
    square = bt.datasets.toy_st(n_spots=9, n_genes=5, seed=0, grid="square", spot_diameter_um=100, spot_spacing_um=200)
    for sdata, spacing, radius in ((hexa, 100.0, 27.5), (square, 200.0, 50.0)):
        xy = shapely.get_coordinates(sdata["toy"].geometry) * 0.5  # µm
        d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert np.allclose(d.min(axis=1), spacing)  # nearest neighbour at the spot pitch
        assert np.allclose(sdata["toy"]["radius"] * 0.5, radius)
    # hexagonal rows are offset by half a pitch; square rows are not
    assert sorted(hexa[K.TABLE_KEY].obs["array_col"].unique()) == [0, 1, 2, 3, 4, 5]
    assert sorted(square[K.TABLE_KEY].obs["array_col"].unique()) == [0, 1, 2]


def test_true_cells_table_and_polygons_agree(toy_st):
    cells = toy_st[K.TRUE_CELLS_TABLE_KEY]
    polys = toy_st["toy_true_cells"]
    assert np.array_equal(cells.obs["cell_id"], polys.index)
    assert polys.geometry.is_valid.all()
    centroid = shapely.get_coordinates(polys.geometry.centroid)
    assert np.allclose(cells.obs[["x_px", "y_px"]], centroid)
    assert np.allclose(cells.obs[["x_um", "y_um"]], centroid * 0.5)
    assert np.allclose(cells.obs["area_um2"], polys.geometry.area * 0.25)
    # true nuclei never overlap, so they are an unambiguous reference for segmentation
    tree = shapely.STRtree(polys.geometry.to_numpy())
    pairs = tree.query(polys.geometry.to_numpy(), predicate="intersects")
    assert np.all(pairs[0] == pairs[1])
    # every nucleus lies inside the image
    h, w = _image(toy_st).shape[1:]
    xmin, ymin, xmax, ymax = polys.total_bounds
    assert xmin >= 0
    assert ymin >= 0
    assert xmax <= w
    assert ymax <= h


# --- counts are Poisson draws from the summed expression of the cells in each spot -------------


def test_spot_rates_are_sums_of_member_cells(toy_st):
    member, cell_ids = _spot_members(toy_st)
    cells = toy_st[K.TRUE_CELLS_TABLE_KEY]
    table = toy_st[K.TABLE_KEY]
    expr = cells[pd.Index(cell_ids).map(dict(zip(cells.obs["cell_id"], cells.obs_names, strict=True)))].X
    expected = np.zeros(table.shape)
    np.add.at(expected, member[member >= 0], np.asarray(expr, dtype=float)[member >= 0])
    assert np.allclose(table.layers[K.TRUE_RATE_LAYER], expected, rtol=1e-5)
    assert np.array_equal(table.obs[K.N_CELLS_KEY], np.bincount(member[member >= 0], minlength=table.n_obs))
    obs_spot = cells.obs["spot_id"].astype("float").fillna(-1).to_numpy()
    assert np.array_equal(obs_spot, member)
    assert (table.obs[K.N_CELLS_KEY] > 0).all()


def test_counts_are_poisson_around_the_rates(toy_st):
    table = toy_st[K.TABLE_KEY]
    counts = table.X.toarray()
    rate = table.layers[K.TRUE_RATE_LAYER].astype(float)
    assert np.array_equal(counts, np.round(counts))
    assert counts.min() >= 0
    assert np.all(counts[rate == 0] == 0)
    # Pearson dispersion: ~1 for Poisson (n ~ 1500 cells, sd of the statistic ~ 0.04)
    pos = rate > 0
    dispersion = np.mean((counts[pos] - rate[pos]) ** 2 / rate[pos])
    assert 0.85 < dispersion < 1.15
    # totals agree within a few Poisson standard deviations
    assert abs(counts.sum() - rate.sum()) < 5 * np.sqrt(rate.sum())


def test_bulk_counts_are_poisson_sums_of_all_cells(toy_cohort):
    slides, cohort = toy_cohort
    for i, sdata in enumerate(slides):
        total = np.asarray(sdata[K.TRUE_CELLS_TABLE_KEY].X, dtype=float).sum(axis=0)
        assert np.allclose(cohort.layers[K.TRUE_RATE_LAYER][i], total, rtol=1e-5)
        assert np.array_equal(cohort.X[i], sdata[K.TABLE_KEY].X[0])
    z = (cohort.X - cohort.layers[K.TRUE_RATE_LAYER]) / np.sqrt(cohort.layers[K.TRUE_RATE_LAYER])
    assert 0.7 < np.mean(z**2) < 1.3


# --- determinism and shared programs -----------------------------------------------------------


def test_same_seed_reproduces_exactly():
    a = bt.datasets.toy_st(n_spots=4, n_genes=10, seed=11)
    b = bt.datasets.toy_st(n_spots=4, n_genes=10, seed=11)
    c = bt.datasets.toy_st(n_spots=4, n_genes=10, seed=12)
    assert np.array_equal(_image(a), _image(b))
    assert np.array_equal(a[K.TABLE_KEY].X.toarray(), b[K.TABLE_KEY].X.toarray())
    assert a["toy_true_cells"].geometry.equals(b["toy_true_cells"].geometry)
    assert not np.array_equal(a[K.TABLE_KEY].X.toarray(), c[K.TABLE_KEY].X.toarray())
    assert len(a["toy_true_cells"]) != len(c["toy_true_cells"]) or not np.array_equal(_image(a), _image(c))


def test_cohort_seed_reproduces_exactly():
    a = bt.datasets.toy_bulk_cohort(n_slides=2, n_genes=10, cells_per_slide=200, seed=4)
    b = bt.datasets.toy_bulk_cohort(n_slides=2, n_genes=10, cells_per_slide=200, seed=4)
    assert np.array_equal(a[1].X, b[1].X)
    assert np.array_equal(_image(a[0][1]), _image(b[0][1]))


def test_programs_are_shared_across_seeds_and_generators(toy_st, toy_cohort):
    slides, cohort = toy_cohort
    other = bt.datasets.toy_st(n_spots=4, n_genes=60, seed=99)
    program = toy_st[K.TRUE_CELLS_TABLE_KEY].varm[K.TYPE_PROGRAM_KEY]
    for sdata in (other, slides[0]):
        assert np.array_equal(sdata[K.TRUE_CELLS_TABLE_KEY].varm[K.TYPE_PROGRAM_KEY], program)
        assert sdata[K.TRUE_CELLS_TABLE_KEY].var_names.equals(toy_st[K.TRUE_CELLS_TABLE_KEY].var_names)
    assert cohort.var_names.equals(toy_st[K.TABLE_KEY].var_names)
    assert toy_st[K.TABLE_KEY].uns[K.TOY_UNS_KEY]["morphology"] == cohort.uns[K.TOY_UNS_KEY]["morphology"]
    # gene j's program does not depend on how many genes are drawn
    fewer = bt.datasets.toy_st(n_spots=1, n_genes=20, seed=0)
    assert np.array_equal(fewer[K.TRUE_CELLS_TABLE_KEY].varm[K.TYPE_PROGRAM_KEY], program[:20])
    # a different program seed gives different programs
    changed = bt.datasets.toy_st(n_spots=1, n_genes=60, seed=0, program_seed=1)
    assert not np.allclose(changed[K.TRUE_CELLS_TABLE_KEY].varm[K.TYPE_PROGRAM_KEY], program)


def test_marker_genes_mark_their_type(toy_st):
    cells = toy_st[K.TRUE_CELLS_TABLE_KEY]
    expr = pd.DataFrame(np.log1p(cells.X), columns=cells.var_names)
    means = expr.groupby(cells.obs["cell_type"].to_numpy()).mean()
    markers = cells.var[K.MARKER_OF_KEY]
    assert (markers != "none").sum() >= 20
    for gene, kind in markers[markers != "none"].items():
        assert means[gene].idxmax() == kind, gene


# --- morphology: cell types differ measurably --------------------------------------------------


def _nucleus_measures(sdata) -> pd.DataFrame:
    cells = sdata[K.TRUE_CELLS_TABLE_KEY]
    polys = sdata[sdata.attrs[K.ATTRS_KEY][K.ATTR_TRUE_CELLS]].geometry
    hed = rgb2hed(np.moveaxis(_image(sdata), 0, -1))[..., 0]
    rows = []
    for poly in polys:
        xy = np.asarray(poly.exterior.coords)
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, hed.shape)
        centred = xy - xy.mean(axis=0)
        ev = np.sort(np.linalg.eigvalsh(np.cov(centred.T)))
        rows.append(
            {
                "area": poly.area * 0.25,
                "elongation": np.sqrt(ev[1] / ev[0]),
                "solidity": poly.area / poly.convex_hull.area,
                "hematoxylin": hed[rr, cc].mean(),
                "texture": hed[rr, cc].std() / hed[rr, cc].mean(),
            }
        )
    df = pd.DataFrame(rows)
    df["cell_type"] = cells.obs["cell_type"].to_numpy()
    return df


def test_cell_types_differ_in_morphology_and_stain():
    sdata = bt.datasets.toy_st(n_spots=16, n_genes=5, seed=0)
    df = _nucleus_measures(sdata)
    means = df.groupby("cell_type", observed=True).mean()
    # each measure separates the types far beyond chance (one-way ANOVA)
    for measure in ("area", "elongation", "solidity", "hematoxylin", "texture"):
        groups = [g[measure].to_numpy() for _, g in df.groupby("cell_type", observed=True)]
        assert stats.f_oneway(*groups).pvalue < 1e-10, measure
    assert means["area"].idxmin() == "lymphocyte"
    assert means["area"].idxmax() == "tumor"
    assert means["elongation"].idxmax() == "stroma"
    assert means["solidity"].idxmin() == "myeloid"
    assert means["hematoxylin"].idxmax() == "lymphocyte"
    assert means["texture"].idxmax() == "tumor"


def test_cell_types_cluster_into_regions(toy_st):
    from scipy.spatial import cKDTree

    obs = toy_st[K.TRUE_CELLS_TABLE_KEY].obs
    xy, kind = obs[["x_um", "y_um"]].to_numpy(), obs["cell_type"].cat.codes.to_numpy()
    _, nn = cKDTree(xy).query(xy, k=7)
    same = (kind[nn[:, 1:]] == kind[:, None]).mean()
    chance = np.sum(np.bincount(kind) ** 2) / len(kind) ** 2
    assert same > chance + 0.1
    unmixed = bt.datasets.toy_st(n_spots=25, n_genes=5, seed=3, region_sharpness=0.0)
    obs = unmixed[K.TRUE_CELLS_TABLE_KEY].obs
    xy, kind = obs[["x_um", "y_um"]].to_numpy(), obs["cell_type"].cat.codes.to_numpy()
    _, nn = cKDTree(xy).query(xy, k=7)
    assert abs((kind[nn[:, 1:]] == kind[:, None]).mean() - np.sum(np.bincount(kind) ** 2) / len(kind) ** 2) < 0.05


def test_cell_type_proportions_are_respected():
    sdata = bt.datasets.toy_st(n_spots=25, n_genes=5, seed=1, cell_type_proportions=[1, 0, 0, 0])
    assert (sdata[K.TRUE_CELLS_TABLE_KEY].obs["cell_type"] == "tumor").mean() > 0.99
    assert np.allclose(sdata[K.TABLE_KEY].obsm[K.TYPE_FRACTION_KEY].sum(axis=1), 1)


def test_more_cell_types_than_the_canonical_four():
    sdata = bt.datasets.toy_st(n_spots=9, n_genes=10, n_cell_types=6, seed=0)
    kinds = sdata[K.TRUE_CELLS_TABLE_KEY].obs["cell_type"].cat.categories.tolist()
    assert kinds == ["tumor", "stroma", "lymphocyte", "myeloid", "type4", "type5"]
    assert sdata[K.TABLE_KEY].obsm[K.TYPE_FRACTION_KEY].shape == (9, 6)


# --- bulk cohort ---------------------------------------------------------------------------------


def test_bulk_cohort_structure(toy_cohort):
    slides, cohort = toy_cohort
    assert cohort.shape == (4, 60)
    assert cohort.obs["patient_id"].tolist() == ["patient0", "patient1", "patient0", "patient1"]
    for sdata, (sample_id, row) in zip(slides, cohort.obs.iterrows(), strict=True):
        info = sdata.attrs[K.ATTRS_KEY]
        assert info[K.ATTR_SAMPLE_ID] == sample_id == row["slide_id"]
        assert info[K.ATTR_IMAGE] == f"{sample_id}_he_image"
        assert info[K.ATTR_TISSUE] == f"{sample_id}_tissue"
        table = sdata[K.TABLE_KEY]
        assert table.n_obs == 1
        assert table.uns["spatialdata_attrs"]["region"] == f"{sample_id}_tissue"
        tissue = sdata[f"{sample_id}_tissue"].geometry.iloc[0]
        centroids = sdata[K.TRUE_CELLS_TABLE_KEY].obs[["x_px", "y_px"]].to_numpy()
        assert shapely.contains_xy(tissue, centroids[:, 0], centroids[:, 1]).all()
        assert row["n_cells"] == sdata[K.TRUE_CELLS_TABLE_KEY].n_obs
    assert 400 < cohort.obs["n_cells"].mean() < 900  # about cells_per_slide=600
    fractions = cohort.obsm[K.TYPE_FRACTION_KEY]
    assert np.allclose(fractions.sum(axis=1), 1)
    assert fractions.std(axis=0).max() > 0.05


def test_slides_concatenate_without_collisions(toy_cohort):
    slides, _ = toy_cohort
    images = [s.attrs[K.ATTRS_KEY][K.ATTR_IMAGE] for s in slides[:2]]
    both = sd.concatenate([sd.SpatialData(images={k: s[k]}) for k, s in zip(images, slides[:2], strict=True)])
    assert set(both.images) == set(images)
    assert set(both.coordinate_systems) == {"slide0", "slide1"}


# --- lazy rendering, scale, zarr ---------------------------------------------------------------


def test_lazy_image_equals_eager_image():
    eager = bt.datasets.toy_st(n_spots=16, n_genes=5, seed=2)
    lazy = bt.datasets.toy_st(n_spots=16, n_genes=5, seed=2, lazy=True)
    arr = lazy["toy_full_image"]["scale0"]["image"].data
    assert isinstance(arr, da.Array)
    assert arr.numblocks[2] >= 2
    assert np.array_equal(arr.compute(), _image(eager))
    # chunks render independently: any window computed alone matches the whole image
    window = arr[:, 900:1100, 950:1150].compute(scheduler="sync")
    assert np.array_equal(window, _image(eager)[:, 900:1100, 950:1150])


def test_large_toy_stays_lazy():
    sdata = bt.datasets.toy_st(n_spots=900, n_genes=5, seed=0, lazy=True)
    assert sdata[K.TRUE_CELLS_TABLE_KEY].n_obs > 20_000
    arr = sdata["toy_full_image"]["scale0"]["image"].data
    assert isinstance(arr, da.Array)
    assert arr.npartitions > 20


def test_zarr_round_trip(toy_st, toy_cohort, tmp_path):
    slides, _ = toy_cohort
    for name, sdata in (("st", toy_st), ("bulk", slides[0])):
        path = tmp_path / f"{name}.zarr"
        sdata.write(path)
        back = sd.read_zarr(path)
        assert back.attrs[K.ATTRS_KEY] == sdata.attrs[K.ATTRS_KEY]
        assert set(back.images) == set(sdata.images)
        assert set(back.shapes) == set(sdata.shapes)
        key = sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
        assert np.array_equal(_image(back), _image(sdata))
        for shapes_key in sdata.shapes:
            assert back[shapes_key].geometry.geom_equals_exact(sdata[shapes_key].geometry, tolerance=1e-9).all()
        for table_key in sdata.tables:
            a, b = sdata[table_key], back[table_key]
            assert np.array_equal(
                np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
                np.asarray(b.X.todense() if hasattr(b.X, "todense") else b.X),
            )
            pd.testing.assert_frame_equal(a.obs, b.obs, check_dtype=False, check_categorical=False)
            b.copy()  # tables read back can be copied (string arrays in uns crash numpy < 2.1)
        t = get_transformation(back[key], to_coordinate_system=sdata.attrs[K.ATTRS_KEY][K.ATTR_COORDINATE_SYSTEM])
        assert np.allclose(t.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0], 0.5)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_spots": 0}, ValueError, "n_spots"),
        ({"n_spots": 2.5}, TypeError, "n_spots"),
        ({"n_genes": -1}, ValueError, "n_genes"),
        ({"n_cell_types": 0}, ValueError, "n_cell_types"),
        ({"grid": "hexagon"}, ValueError, "grid"),
        ({"spot_diameter_um": 120.0}, ValueError, "spot_diameter_um"),
        ({"spot_spacing_um": -5.0}, ValueError, "spot_spacing_um"),
        ({"mpp": 0.0}, ValueError, "mpp"),
        ({"mpp": float("nan")}, ValueError, "mpp"),
        ({"sample_id": "my sample/1"}, ValueError, "sample_id"),
        ({"sample_id": ""}, TypeError, "sample_id"),
        ({"cell_type_proportions": [1, 2]}, ValueError, "cell_type_proportions"),
        ({"cell_type_proportions": [1, -1, 1, 1]}, ValueError, "cell_type_proportions"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"lazy": "yes"}, TypeError, "lazy"),
        ({"cell_spacing_um": 1.0}, ValueError, "cell_spacing_um"),
    ],
)
def test_toy_st_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bt.datasets.toy_st(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_slides": 0}, ValueError, "n_slides"),
        ({"cells_per_slide": -5}, ValueError, "cells_per_slide"),
        ({"n_slides": 2, "n_patients": 3}, ValueError, "n_patients"),
        ({"mixture_concentration": 0}, ValueError, "mixture_concentration"),
        ({"sample_prefix": "a b"}, ValueError, "sample_prefix"),
    ],
)
def test_toy_bulk_cohort_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bt.datasets.toy_bulk_cohort(**kwargs)


def test_generators_take_keyword_arguments_only():
    with pytest.raises(TypeError):
        bt.datasets.toy_st(10)  # type: ignore[misc]
