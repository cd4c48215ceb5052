"""Predictions as scverse tables: every cell, values >= 0, uncertainty, spatial agreement, any resolution,
imported cells, and round trips that a deep copy survives — on toy data and on real files (HER2ST, Visium)."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import bitro as bt

DATA = Path(__file__).parent / "data"
SPOTS, CELLS = "bitro_pred_spots", "bitro_pred_cells"


@pytest.fixture(scope="module")
def model(_toy_sections):
    """A toy spot model with validation (toy2), so it carries its calibration."""
    return bt.tl.fit(copy.deepcopy(_toy_sections[:3]), n_genes=15, val=["toy2"], max_epochs=12, seed=0, progress=False)


@pytest.fixture(scope="module")
def predicted(model, _toy_sections):
    test = copy.deepcopy(_toy_sections[3])
    bt.tl.predict(test, model)
    return test


# --- 2. tables that scverse tools read directly ----------------------------------------------------


def test_render_shapes_colours_by_a_predicted_gene(predicted):
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers .pl)

    gene = bt.get.predictions(predicted).var_names[0]
    cs = predicted.attrs["bitro"]["coordinate_system"]
    for table, element in ((CELLS, predicted.attrs["bitro"]["cells_shapes_key"]), (SPOTS, "toy3")):
        ax = plt.figure().gca()
        predicted.pl.render_shapes(element, color=gene, table_name=table).pl.show(ax=ax, coordinate_systems=cs)
        colours = np.concatenate([c.get_facecolor() for c in ax.collections if len(c.get_facecolor())])
        assert len(np.unique(colours.round(3), axis=0)) > 5  # coloured by the gene's values, not one colour
    plt.close("all")


def test_squidpy_spatial_autocorr_indexes_genes_by_name(predicted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # squidpy's docrep, at import
        import squidpy as sq

    cells = bt.get.predictions(predicted, level="cells").copy()
    sq.gr.spatial_neighbors_knn(cells, n_neighs=6)
    sq.gr.spatial_autocorr(cells, mode="moran", n_perms=None, show_progress_bar=False)
    moran = cells.uns["moranI"]
    assert set(moran.index) == set(cells.var_names)
    assert moran["I"].max() > 0.1  # predicted expression of neighbouring cells is alike


def test_scanpy_clusters_and_markers_of_predicted_cells(predicted):
    import scanpy as sc

    cells = bt.get.predictions(predicted, level="cells").copy()
    sc.pp.neighbors(cells, n_neighbors=10)
    sc.tl.leiden(cells, resolution=0.5, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert cells.obs["leiden"].nunique() >= 2
    sc.tl.rank_genes_groups(cells, "leiden", method="wilcoxon")
    markers = sc.get.rank_genes_groups_df(cells, group=cells.obs["leiden"].cat.categories[0])
    assert set(markers["names"]) <= set(cells.var_names)
    # clusters of predicted cells follow the true cell types of the toy tissue
    truth = predicted["true_cells"].obs
    assert truth.shape[0] > 0


def test_get_accessors(predicted):
    spots = bt.get.predictions(predicted)
    df = bt.get.prediction_df(predicted, list(spots.var_names[:2]))
    assert list(df.columns) == list(spots.var_names[:2])
    np.testing.assert_array_equal(df.to_numpy(), spots.X[:, :2])
    sd = bt.get.prediction_df(predicted, spots.var_names[0], level="cells", layer="std")
    assert sd.shape == (predicted["bitro_cells"].n_obs, 1)
    obs = bt.get.observed_df(predicted, spots.var_names[:2])
    assert obs.index.equals(spots.obs_names)
    with pytest.raises(ValueError, match="holds predictions, not counts"):  # never normalised a second time
        bt.get.observed_df(predicted, spots.var_names[:2], table_key="bitro_pred_spots")
    with pytest.raises(KeyError, match="were not predicted"):
        bt.get.prediction_df(predicted, "NOPE")
    with pytest.raises(TypeError, match="`genes` must be a name or a list of names, got int"):
        bt.get.prediction_df(predicted, 0)
    with pytest.raises(KeyError, match="`layer`"):
        bt.get.prediction_df(predicted, spots.var_names[0], layer="nope")
    with pytest.raises(ValueError, match="`level`"):
        bt.get.predictions(predicted, level="tissue")


# --- 1, 3. every cell predicted, values in the target's range --------------------------------------


def test_every_cell_is_predicted_and_none_is_negative(predicted):
    cells = bt.get.predictions(predicted, level="cells")
    assert np.isfinite(cells.X).all()
    assert (~cells.obs["in_spot"]).sum() > 0  # cells between the spots have predictions too
    assert cells.obs.loc[~cells.obs["in_spot"], "bag"].str.startswith("pseudo").all()
    assert cells.X.min() >= 0
    assert bt.get.predictions(predicted).X.min() >= 0


# --- 4. uncertainty, calibrated on validation data; which genes are predictable ---------------------


def test_uncertainty_is_calibrated_on_validation(model, predicted):
    calibration = model.config["calibration"]["spot"]
    assert calibration["n_val_bags"] > 20
    assert 0.6 <= calibration["coverage_80"] <= 0.97  # a nominal 80 % interval, measured on validation
    var = bt.get.predictions(predicted).var
    assert {"val_pearson", "val_pearson_lo", "val_pearson_hi", "noise_sd", "predictable"} <= set(var.columns)
    assert (var["val_pearson_lo"] <= var["val_pearson"]).all()
    assert (var["val_pearson"] <= var["val_pearson_hi"]).all()
    assert var["predictable"].any()
    scores = bt.tl.evaluate(predicted, spatial=False)
    assert 0.4 <= scores.loc["toy3", "coverage_80"] <= 1.0  # on the held-out section
    spots = bt.get.predictions(predicted)
    assert (spots.layers["std"] > 0).all()
    # the interval of a spot includes the calibrated noise: wider than the dropout spread alone
    cells = bt.get.predictions(predicted, level="cells")
    assert np.median(spots.layers["std"]) > np.median(cells.layers["std"]) * 0.5


# --- 5. spatial agreement ---------------------------------------------------------------------------


def test_evaluate_reports_morans_i_of_predicted_and_observed(predicted):
    scores = bt.tl.evaluate(predicted)
    var = bt.get.predictions(predicted).var
    assert np.isfinite(var["moran_pred"]).all()
    assert np.isfinite(var["moran_obs"]).all()
    assert (var["moran_pred"].abs() <= 1.05).all()
    assert scores.loc["toy3", "moran_pred_mean"] == pytest.approx(var["moran_pred"].mean())


# --- 6. any resolution ---------------------------------------------------------------------------


def test_a_025_um_image_works_with_the_default_model():
    sdata = bt.datasets.toy_st(n_spots=9, seed=2, mpp=0.25)
    bt.tl.predict(sdata)  # the bundled model was trained on 0.69 µm/px features
    info = sdata.attrs["bitro"]
    trained = bt.models.default_model().config["features"]["params"]["mpp"]
    assert info["features_mpp"] == pytest.approx(trained)
    assert sdata["bitro_cells"].uns["bitro_features"]["params"]["mpp"] == pytest.approx(trained)
    assert np.isfinite(bt.get.predictions(sdata, level="cells").X).all()
    # the same tissue at 0.5 µm/px gives cells of the same size (areas measured in µm²)
    other = bt.datasets.toy_st(n_spots=9, seed=2, mpp=0.5)
    bt.pp.segment_cells(other, method="watershed")
    a, b = sdata["bitro_cells"].obs["area_um2"], other["bitro_cells"].obs["area_um2"]
    assert np.median(a) == pytest.approx(np.median(b), rel=0.15)


def test_segmentation_reads_the_level_of_its_pixel_size():
    sdata = bt.datasets.toy_st(n_spots=9, seed=2, mpp=0.25)
    bt.pp.segment_cells(sdata, method="watershed", mpp=0.5)
    assert sdata.attrs["bitro"]["segmentation_mpp"] == pytest.approx(0.5, rel=1e-3)  # level 1: 746 of 1493 rows
    full = bt.datasets.toy_st(n_spots=9, seed=2, mpp=0.25)
    bt.pp.segment_cells(full, method="watershed")
    assert full.attrs["bitro"]["segmentation_mpp"] == pytest.approx(0.25)
    n_half, n_full = sdata["bitro_cells"].n_obs, full["bitro_cells"].n_obs
    assert abs(n_half - n_full) <= 0.1 * n_full  # level 1 finds the same nuclei, stored in level-0 pixels
    x_half = np.median(sdata["bitro_cells"].obs["x_px"])
    assert x_half == pytest.approx(np.median(full["bitro_cells"].obs["x_px"]), rel=0.05)


# --- 7. an existing shapes element as the cells -----------------------------------------------------


def test_import_an_existing_shapes_element(toy_st):
    import shapely

    true_key = toy_st.attrs["bitro"]["true_cells_key"]
    bt.pp.segment_cells(toy_st, method="import", path=true_key)
    cells = toy_st["import_boundaries"]
    truth = toy_st[true_key]
    assert len(cells) == len(truth)
    # the same outlines, mapped through both elements' transformations (here both in image pixels)
    np.testing.assert_allclose(shapely.area(cells.geometry.to_numpy()), shapely.area(truth.geometry.to_numpy()))
    np.testing.assert_allclose(
        shapely.get_coordinates(shapely.centroid(cells.geometry.to_numpy())),
        shapely.get_coordinates(shapely.centroid(truth.geometry.to_numpy())),
        atol=1e-6,
    )
    with pytest.raises(FileNotFoundError, match="neither a segmentation file nor a shapes element"):
        bt.pp.segment_cells(toy_st, method="import", path="no_such_element")


# --- 8. every element bitro writes survives a round trip and a deep copy ----------------------------


def _strings_in_uns(value, where="uns") -> list[str]:
    """Places in ``uns`` holding a list or array of strings (they break AnnData.copy after zarr with numpy < 2.1)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _strings_in_uns(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        found.append(where)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "OUT":
        found.append(where)
    return found


COPY_ALL = """
import copy, sys, warnings
warnings.filterwarnings("ignore")
import spatialdata as sd
s = sd.read_zarr(sys.argv[1])
for name, table in s.tables.items():
    table.copy()
    copy.deepcopy(table)
sd.deepcopy(s)
print("copied", len(s.tables))
"""


@pytest.mark.parametrize("source", ["toy", "her2st", "visium_sr3"])
def test_round_trip_then_deep_copy_in_a_subprocess(source, model, predicted, tmp_path, her2st_crop):
    if source == "toy":
        sdata = copy.deepcopy(predicted)  # the write below would back the shared fixture by this store
        bt.tl.evaluate(sdata)
    elif source == "her2st":
        sdata = her2st_crop((2000, 1800, 2600, 2400))
        bt.tl.predict(sdata, n_samples=2)
        bt.tl.evaluate(sdata)
    else:
        # real Space Ranger 3 files; the CytAssist image (~4.7 µm/px) shows no nuclei, so the spots stand in
        # for cells (import from a shapes element), morphology is measured on them and a toy model predicts
        with warnings.catch_warnings():  # the real folder lacks the hires image and has 11 duplicated genes
            warnings.simplefilter("ignore", UserWarning)
            sdata = bt.io.visium(DATA / "visium" / "sr3_mouse_placenta")
        # a corner of the section (~1/10 of its 2 898 spots): measuring the toy model's features means
        # upsampling the image 9-fold, which for the whole section took a minute
        import spatialdata as sd

        from bitro.cli._her2st_predict import crop_section

        cs, spots_key = sdata.attrs["bitro"]["coordinate_system"], sdata.attrs["bitro"]["spots_key"]
        xy = sd.transform(sdata[spots_key], to_coordinate_system=cs).geometry.get_coordinates().to_numpy()
        (x0, y0), (x1, y1) = xy.min(axis=0) - 1, np.quantile(xy, 0.32, axis=0)
        sdata = crop_section(sdata, (x0, y0, x1, y1))  # attrs kept, regions tidied
        assert 150 < sdata[spots_key].shape[0] < 600
        bt.pp.segment_cells(sdata, method="import", path=spots_key)
        bt.tl.predict(sdata, model, n_samples=2, max_mpp_ratio=20)
    for name, table in sdata.tables.items():
        assert not _strings_in_uns(dict(table.uns)), (name, _strings_in_uns(dict(table.uns)))
    path = tmp_path / "s.zarr"
    sdata.write(path)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COPY_ALL), str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]  # a segfault gives -11
    assert "copied" in result.stdout
    back = bt.io.read_zarr(path)
    assert list(back[SPOTS].var_names) == list(sdata[SPOTS].var_names)
    np.testing.assert_array_equal(back[CELLS].X, sdata[CELLS].X)
