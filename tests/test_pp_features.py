"""bt.pp.cell_features: handcrafted morphology features and a deep encoder on the toy section's true nuclei."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

from bitro import _constants as K
from bitro.pp._features import MORPHOLOGY_FEATURES, cell_features


@pytest.fixture(scope="module")
def morph_session():
    """The toy cells with morphology features, computed once for the read-only tests of this module."""
    import bitro as bt
    from bitro.pp._cells import write_cells

    sdata = bt.datasets.toy_st(n_spots=25, n_genes=60, seed=3)
    info = sdata.attrs[K.ATTRS_KEY]
    write_cells(sdata, sdata[info[K.ATTR_TRUE_CELLS]], image=info[K.ATTR_IMAGE], method="true")
    cell_features(sdata, tile_size=2048)
    return sdata


def _truth(sdata) -> np.ndarray:
    cells = sdata.tables[K.CELLS_TABLE_KEY].obs
    true = sdata.tables[K.TRUE_CELLS_TABLE_KEY].obs
    # the cells layer was written from the true polygons in order: same cell ids, same order
    np.testing.assert_array_equal(cells[K.CELL_ID_KEY].to_numpy(), true[K.CELL_ID_KEY].to_numpy())
    return true[K.CELL_TYPE_KEY].to_numpy()


def test_morphology_writes_obsm_uns_attrs(toy_cells):
    out = cell_features(toy_cells)
    assert out is None
    table = toy_cells.tables[K.CELLS_TABLE_KEY]
    x = table.obsm[K.FEATURES_KEY]
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float32
    assert x.shape == (table.n_obs, len(MORPHOLOGY_FEATURES))
    assert np.isfinite(x).all()
    uns = table.uns[K.FEATURES_KEY]
    assert isinstance(uns["names"], dict)
    assert uns["names"] == {name: i for i, name in enumerate(MORPHOLOGY_FEATURES)}
    assert uns["method"] == "morphology"
    assert uns["params"]["tile_size"] == 2048
    assert toy_cells.attrs[K.ATTRS_KEY]["features_key"] == K.FEATURES_KEY
    # obs area of the cells layer (shapely, µm²) matches the area feature
    np.testing.assert_allclose(x[:, uns["names"]["area_um2"]], table.obs[K.AREA_UM2_KEY], rtol=1e-5)


def test_morphology_shape_matches_regionprops_of_a_disk_and_ellipse():
    """Polygon moments give the axes of an ellipse (as skimage's regionprops does for a raster)."""
    import shapely

    from bitro.pp._features import _shape_features

    t = np.linspace(0, 2 * np.pi, 721)[:-1]
    ellipse = shapely.Polygon(np.column_stack([1000 + 20 * np.cos(t), 500 + 8 * np.sin(t)]))
    disk = shapely.Point(3000, 3000).buffer(10, quad_segs=256)
    f = _shape_features(np.array([ellipse, disk], dtype=object), mpp=0.5)
    area, perim, ecc, solidity, major, minor, circ = f.T
    np.testing.assert_allclose(area, [np.pi * 20 * 8 * 0.25, np.pi * 100 * 0.25], rtol=1e-3)
    np.testing.assert_allclose(major, [4 * 20 / 2 * 0.5, 2 * 10 * 0.5], rtol=1e-3)  # full axis lengths, µm
    np.testing.assert_allclose(minor, [2 * 8 * 0.5, 2 * 10 * 0.5], rtol=1e-3)
    np.testing.assert_allclose(ecc, [np.sqrt(1 - (8 / 20) ** 2), 0], atol=1e-3)
    np.testing.assert_allclose(solidity, 1, atol=1e-3)
    np.testing.assert_allclose(circ[1], 1, atol=1e-3)
    assert perim[1] == pytest.approx(2 * np.pi * 10 * 0.5, rel=1e-3)


def test_stain_deconvolution_matches_skimage():
    from skimage.color import rgb2hed

    from bitro.pp._features import _hematoxylin_eosin

    img = np.random.default_rng(0).integers(0, 256, (3, 40, 50), dtype=np.uint8)
    ref = rgb2hed(np.moveaxis(img, 0, -1))
    for arr in (img, img.astype(np.float32) / 255):
        h, e = _hematoxylin_eosin(arr, 0, 0, 50, 40)
        np.testing.assert_allclose(h, ref[..., 0], atol=1e-6)
        np.testing.assert_allclose(e, ref[..., 1], atol=1e-6)


def test_api_conventions():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_conventions", Path(__file__).with_name("test_api_conventions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.convention_problems(cell_features, step=True) == []


def test_morphology_separates_cell_types(morph_session):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = morph_session.tables[K.CELLS_TABLE_KEY].obsm[K.FEATURES_KEY]
    y = _truth(morph_session)
    assert len(np.unique(y)) == 4
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    print(f"cross-validated accuracy of 4 cell types from morphology features: {acc:.3f}")
    assert acc >= 0.9


def test_morphology_tile_size_does_not_change_features(morph_session):
    ref = morph_session.tables[K.CELLS_TABLE_KEY].obsm[K.FEATURES_KEY]
    small = cell_features(morph_session, tile_size=256, key_added="small", copy=True)
    assert "small" not in morph_session.tables[K.CELLS_TABLE_KEY].obsm  # copy left the original alone
    np.testing.assert_allclose(small.tables[K.CELLS_TABLE_KEY].obsm["small"], ref, rtol=1e-5, atol=1e-6)
    assert small.tables[K.CELLS_TABLE_KEY].uns["small"]["params"]["tile_size"] == 256


@pytest.mark.parametrize("mpp", [None, 0.4], ids=["own pixels", "resampled"])
def test_worker_processes_give_the_features_of_one_process(morph_session, mpp):
    """``n_jobs=2`` measures the tiles in two worker processes: the same numbers as one process."""
    one = cell_features(morph_session, tile_size=256, mpp=mpp, n_jobs=1, key_added="one", copy=True)
    two = cell_features(morph_session, tile_size=256, mpp=mpp, n_jobs=2, key_added="two", copy=True)
    ref = one.tables[K.CELLS_TABLE_KEY].obsm["one"]
    np.testing.assert_array_equal(two.tables[K.CELLS_TABLE_KEY].obsm["two"], ref)
    assert np.isfinite(ref[:, 7:19]).mean() > 0.9  # the tiles' stain and texture columns were measured


def test_zarr_round_trip(morph_session, tmp_path):
    import spatialdata as sd

    copy.deepcopy(morph_session).write(tmp_path / "cells.zarr")
    back = sd.read_zarr(tmp_path / "cells.zarr")
    table = back.tables[K.CELLS_TABLE_KEY]
    np.testing.assert_array_equal(
        table.obsm[K.FEATURES_KEY], morph_session.tables[K.CELLS_TABLE_KEY].obsm[K.FEATURES_KEY]
    )
    assert dict(table.uns[K.FEATURES_KEY]["names"])["h_mean"] == MORPHOLOGY_FEATURES.index("h_mean")
    assert back.attrs[K.ATTRS_KEY]["features_key"] == K.FEATURES_KEY


def test_no_cells_layer(toy_st):
    with pytest.raises(ValueError, match="segment_cells"):
        cell_features(toy_st)


def test_bad_arguments(toy_cells):
    with pytest.raises(ValueError, match="`method`"):
        cell_features(toy_cells, method="cellpose")
    with pytest.raises(ValueError, match="`tile_size`"):
        cell_features(toy_cells, tile_size=0)
    with pytest.raises(ValueError, match="`mode`"):
        cell_features(toy_cells, method="encoder", mode="patch")
    with pytest.raises(ValueError, match="`crop_um`"):
        cell_features(toy_cells, method="encoder", crop_um=0)


# --- encoder -------------------------------------------------------------------------------------
ARGS = {"channels": [8, 16], "out_dim": 12}
MEAN, STD = (0.7, 0.5, 0.7), (0.2, 0.25, 0.2)


@pytest.fixture
def encoder_dir(tmp_path):
    import torch

    from bitro.pp._encoder import SmallCNN, save_encoder

    torch.manual_seed(0)
    model = SmallCNN(**ARGS)
    path = save_encoder(model, tmp_path / "enc", architecture="small_cnn", args=ARGS, input_size=24, mean=MEAN, std=STD)
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()
    return path, model


def _manual_crop(image: np.ndarray, cx: float, cy: float, side_px: float, size: int) -> np.ndarray:
    """Bilinear crop with scipy (independent of the package's torch grid_sample path)."""
    from scipy import ndimage

    offs = (np.arange(size) + 0.5 - size / 2) * side_px / size
    yy, xx = np.meshgrid(cy + offs - 0.5, cx + offs - 0.5, indexing="ij")
    return np.stack([ndimage.map_coordinates(image[c], [yy, xx], order=1, mode="nearest") for c in range(3)])


def test_encoder_features_equal_manual_forward(toy_cells, encoder_dir):
    import torch

    path, model = encoder_dir
    cell_features(toy_cells, method="encoder", encoder=path, crop_um=16.0, tile_size=256, batch_size=50, device="cpu")
    table = toy_cells.tables[K.CELLS_TABLE_KEY]
    x = table.obsm[K.FEATURES_KEY]
    assert x.shape == (table.n_obs, ARGS["out_dim"])
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    uns = table.uns[K.FEATURES_KEY]
    assert uns["method"] == "encoder"
    assert len(uns["names"]) == ARGS["out_dim"]
    assert uns["params"]["architecture"] == "small_cnn"
    assert uns["params"]["input_size"] == 24

    info = toy_cells.attrs[K.ATTRS_KEY]
    image = np.asarray(toy_cells.images[info[K.ATTR_IMAGE]]["scale0"]["image"]).astype(np.float32) / 255
    mpp = info[K.ATTR_IMAGE_MPP]
    obs = table.obs
    inner = np.flatnonzero(
        (obs[K.CENTROID_X_PX] > 40) & (obs[K.CENTROID_Y_PX] > 40)
        & (obs[K.CENTROID_X_PX] < image.shape[2] - 40) & (obs[K.CENTROID_Y_PX] < image.shape[1] - 40)
    )  # fmt: skip
    for i in inner[[0, len(inner) // 2, -1]]:
        crop = _manual_crop(image, obs[K.CENTROID_X_PX].iloc[i], obs[K.CENTROID_Y_PX].iloc[i], 16.0 / mpp, 24)
        batch = (torch.from_numpy(crop)[None] - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
            1, 3, 1, 1
        )
        with torch.no_grad():
            expected = model(batch).numpy()[0]
        np.testing.assert_allclose(x[i], expected, rtol=1e-4, atol=1e-5)

    # deterministic, and independent of tiling and batching
    again = cell_features(
        toy_cells, method="encoder", encoder=str(path), crop_um=16.0, tile_size=2048, batch_size=7, copy=True
    )
    np.testing.assert_allclose(again.tables[K.CELLS_TABLE_KEY].obsm[K.FEATURES_KEY], x, rtol=1e-5, atol=1e-6)


def test_encoder_errors(toy_cells, encoder_dir, tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        cell_features(toy_cells, method="encoder", encoder=missing)
    path, _ = encoder_dir
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        cell_features(toy_cells, method="encoder", encoder=path)


def test_encoder_hub_id_offline_is_a_clear_error(toy_cells, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="hub"):
        cell_features(toy_cells, method="encoder", encoder="bitro-test/not-a-real-encoder")


def test_bitro_import_stays_light():
    import subprocess
    import sys

    code = "import sys, bitro.pp._features; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_morphology_speed():
    import bitro as bt
    from bitro.pp._cells import write_cells

    sdata = bt.datasets.toy_st(n_spots=400, n_genes=20, seed=3)
    info = sdata.attrs[K.ATTRS_KEY]
    write_cells(sdata, sdata[info[K.ATTR_TRUE_CELLS]], image=info[K.ATTR_IMAGE], method="true")
    n = sdata.tables[K.CELLS_TABLE_KEY].n_obs
    start = time.perf_counter()
    cell_features(sdata)
    rate = n / (time.perf_counter() - start)
    print(f"morphology features: {n} cells at {rate:.0f} cells/s")
    assert rate > 500


def test_scanline_rasterisation_equals_skimage_polygon_fill():
    """The vectorised fill marks exactly the pixels skimage.draw.polygon marks, cell by cell (later cells win)."""
    import shapely
    from skimage.draw import polygon as draw_polygon

    from bitro.pp._features import _rasterise

    rng = np.random.default_rng(0)
    centres = rng.uniform(-10, 110, size=(300, 2))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=(300, 9)), axis=1)
    radii = rng.uniform(0.3, 9, size=(300, 9))  # from sub-pixel specks to concave, overlapping blobs
    polygons = shapely.polygons(centres[:, None, :] + radii[..., None] * np.stack([np.cos(angles), np.sin(angles)], -1))
    polygons = shapely.make_valid(polygons)
    polygons = np.array([max(getattr(p, "geoms", [p]), key=lambda q: q.area) for p in polygons])
    polygons = polygons[[p.geom_type == "Polygon" for p in polygons]]
    for x0, y0, shape in [(0, 0, (100, 100)), (-7, 13, (90, 120))]:
        expected = np.zeros(shape, np.int32)
        for label, poly in enumerate(polygons, start=1):
            xy = np.asarray(poly.exterior.coords)
            rr, cc = draw_polygon(xy[:, 1] - y0 - 0.5, xy[:, 0] - x0 - 0.5, shape)
            expected[rr, cc] = label
        np.testing.assert_array_equal(_rasterise(polygons, x0, y0, shape), expected)


def test_pixels_without_data_make_their_cells_texture_unknown_not_garbage(toy_st):
    import warnings

    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    import bitro as bt

    key = toy_st.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    bt.pp.segment_cells(toy_st, method="watershed")
    level0 = toy_st.images[key]["scale0"]["image"]
    rgb = level0.data.astype("float32") / np.float32(255)
    cells = toy_st[K.CELLS_TABLE_KEY].obs
    cx, cy = (int(v) for v in cells[[K.CENTROID_X_PX, K.CENTROID_Y_PX]].median())
    runs = []
    for hole in (False, True):
        pixels = rgb.copy()
        if hole:
            pixels[:, cy - 20 : cy + 20, cx - 20 : cx + 20] = np.nan  # a block without data (outside a scanned region)
        toy_st.images[key] = Image2DModel.parse(
            pixels,
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations=get_transformation(level0, get_all=True),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="invalid value encountered in cast")
            warnings.filterwarnings("ignore", message=".*non-finite")
            bt.pp.cell_features(toy_st)
        table = toy_st[K.CELLS_TABLE_KEY]
        runs.append(table.obsm[K.FEATURES_KEY].copy())
    names = table.uns[K.FEATURES_KEY]["names"]
    texture = [
        names.index(n) if isinstance(names, list) else names[n] for n in ("h_glcm_contrast", "h_glcm_homogeneity")
    ]
    x, y = table.obs[K.CENTROID_X_PX].to_numpy(), table.obs[K.CENTROID_Y_PX].to_numpy()
    inside = (np.abs(x - cx) < 16) & (np.abs(y - cy) < 16)
    far = (np.abs(x - cx) > 60) | (np.abs(y - cy) > 60)
    assert inside.any()
    assert np.isnan(runs[1][inside][:, texture]).all()
    np.testing.assert_array_equal(runs[0][far], runs[1][far])
