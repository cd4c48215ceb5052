"""Visium reader on real Space Ranger outputs (SR 1.0 layout, SR 2.1 probe h5, SR 3.0) and on written edge cases."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from PIL import Image
from scipy import io as spio
from scipy import sparse
from spatialdata.transformations import get_transformation

from bitro import _constants as K
from bitro.io._visium import visium

DATA = Path(__file__).parent / "data" / "visium"
SR3 = DATA / "sr3_mouse_placenta"  # Space Ranger 3.0, CytAssist; h5 + mtx; no hires image
SR1 = DATA / "sr1_human_heart_subset"  # Space Ranger 1.0 layout: headerless tissue_positions_list.csv
SR2_PROBE = DATA / "sr2_probe_subset" / "raw_probe_bc_matrix.h5"  # Space Ranger 2.1 probe-level raw h5

SR3_SPOTS, SR3_GENES, SR3_COUNTS = 2898, 19465, 3_085_005  # SOURCE.txt


def _read(path, **kwargs):
    """Read, returning the SpatialData and the messages of every warning raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata = visium(path, **kwargs)
    return sdata, [str(w.message) for w in caught]


def _h5_strings(file, key):
    with h5py.File(file, "r") as f:
        return [v.decode() for v in f[key][:]]


def _h5_total(file):
    with h5py.File(file, "r") as f:
        return float(f["matrix/data"][:].sum())


def _scalefactors(folder):
    return json.loads((folder / "spatial" / "scalefactors_json.json").read_text())


def _pitch_mpp(positions_file, header):
    """100 µm / the median distance (full-res px) of spots two array columns apart on one row, computed here."""
    pos = pd.read_csv(positions_file, header=header)
    pos.columns = ["barcode", "in_tissue", "row", "col", "y", "x"]
    dists = []
    for _, row in pos.sort_values(["row", "col"]).groupby("row"):
        step = np.diff(row["col"].to_numpy())
        d = np.hypot(np.diff(row["x"].to_numpy()), np.diff(row["y"].to_numpy()))
        dists.extend(d[step == 2])
    return 100.0 / float(np.median(dists))


def _positions(folder):
    file = folder / "spatial" / "tissue_positions.csv"
    if file.exists():
        return pd.read_csv(file, index_col=0)
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    pos.columns = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    return pos


@pytest.fixture(scope="module")
def sr3():
    return _read(SR3, dataset_id="placenta")


@pytest.fixture(scope="module")
def sr3_mtx():
    return _read(SR3, dataset_id="placenta", counts_file="filtered_feature_bc_matrix")


@pytest.fixture(scope="module")
def sr1():
    return _read(SR1, dataset_id="heart")


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory):
    """The SR 2.1 probe h5 with a spatial/ folder whose positions cover its barcodes (the SR 3.0 slide's)."""
    folder = tmp_path_factory.mktemp("probe") / "probe_run"
    (folder / "spatial").mkdir(parents=True)
    shutil.copy(SR2_PROBE, folder)
    for name in ("tissue_positions.csv", "scalefactors_json.json", "tissue_lowres_image.png"):
        shutil.copy(SR3 / "spatial" / name, folder / "spatial")
    return folder


# --- real data: counts ------------------------------------------------------------------------------


def test_sr3_h5_reads_every_spot_gene_and_count(sr3):
    sdata, _ = sr3
    table = sdata[K.TABLE_KEY]
    h5 = SR3 / "filtered_feature_bc_matrix.h5"
    assert table.shape == (SR3_SPOTS, SR3_GENES)
    assert sparse.issparse(table.X)
    assert table.X.format == "csr"
    assert table.X.sum(dtype=np.float64) == SR3_COUNTS
    assert list(table.obs_names) == _h5_strings(h5, "matrix/barcodes")
    # gene ids kept, in file order
    assert list(table.var["gene_ids"]) == _h5_strings(h5, "matrix/features/id")
    assert (table.obs[K.IN_TISSUE_KEY] == 1).all()


def test_sr3_mtx_is_the_same_matrix_as_the_h5(sr3, sr3_mtx):
    h5, mtx = sr3[0][K.TABLE_KEY], sr3_mtx[0][K.TABLE_KEY]
    assert mtx.shape == (SR3_SPOTS, SR3_GENES)
    assert mtx.X.format == "csr"
    assert mtx.X.sum(dtype=np.float64) == SR3_COUNTS
    assert mtx.obs_names.equals(h5.obs_names)
    assert mtx.var_names.equals(h5.var_names)
    assert list(mtx.var["gene_ids"]) == list(h5.var["gene_ids"])
    assert (mtx.X != h5.X).nnz == 0
    np.testing.assert_array_equal(mtx.obsm["spatial"], h5.obsm["spatial"])


def test_mtx_file_and_library_prefixed_h5_are_found(tmp_path):
    # counts_file may name the matrix.mtx.gz itself
    table = visium_quiet(SR3, dataset_id="x", counts_file="filtered_feature_bc_matrix/matrix.mtx.gz")[K.TABLE_KEY]
    assert table.shape == (SR3_SPOTS, SR3_GENES)
    # Space Ranger's "{library_id}_filtered_feature_bc_matrix.h5" naming gives the dataset id
    folder = tmp_path / "outs"
    shutil.copytree(SR3 / "spatial", folder / "spatial")
    shutil.copy(SR3 / "filtered_feature_bc_matrix.h5", folder / "S3x_filtered_feature_bc_matrix.h5")
    sdata = visium_quiet(folder)
    assert set(sdata.shapes) == {"S3x"}
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_SAMPLE_ID] == "S3x"


def test_dataset_id_defaults_to_the_h5_library_id():
    sdata = visium_quiet(SR3)
    # library_ids attribute of the h5 (Space Ranger's sample name)
    assert set(sdata.shapes) == {"Placenta_S3"}
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_COORDINATE_SYSTEM] == "Placenta_S3"


def test_duplicated_gene_names_are_made_unique_with_a_warning_naming_the_file(sr3, sr3_mtx):
    names = pd.Index(_h5_strings(SR3 / "filtered_feature_bc_matrix.h5", "matrix/features/name"))
    dup = names[names.duplicated()]
    assert len(dup) == 11
    for (sdata, messages), source in ((sr3, "filtered_feature_bc_matrix.h5"), (sr3_mtx, "filtered_feature_bc_matrix")):
        var_names = sdata[K.TABLE_KEY].var_names
        assert var_names.is_unique
        assert all(f"{name}-1" in var_names for name in dup)
        assert sum(f"{source}: 11 duplicated feature names" in m for m in messages) == 1


def test_missing_hires_image_warns_and_loads_lowres(sr3):
    sdata, messages = sr3
    assert not (SR3 / "spatial" / "tissue_hires_image.png").exists()
    hires_warnings = [m for m in messages if "tissue_hires_image.png does not exist" in m]
    assert len(hires_warnings) == 1
    assert "placenta_lowres_image" in hires_warnings[0]
    # nothing else warned: the duplicated gene names and the missing image only
    assert len(messages) == 2
    assert set(sdata.images) == {"placenta_lowres_image"}
    assert sdata["placenta_lowres_image"].shape == (3, 600, 600)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE] == "placenta_lowres_image"


# --- real data: names, coordinate systems, geometry -----------------------------------------------------


def test_element_names_and_table_annotation(sr3):
    sdata, _ = sr3
    assert set(sdata.shapes) == {"placenta"}
    assert set(sdata.tables) == {K.TABLE_KEY}
    attrs = sdata[K.TABLE_KEY].uns["spatialdata_attrs"]
    assert attrs == {"region": "placenta", "region_key": K.REGION_KEY, "instance_key": K.SPOT_ID_KEY}
    table = sdata[K.TABLE_KEY]
    assert (table.obs[K.REGION_KEY] == "placenta").all()
    # each spot of the table is the shape with its spot_id
    assert np.array_equal(table.obs[K.SPOT_ID_KEY].to_numpy(), sdata["placenta"].index.to_numpy())
    info = sdata.attrs[K.ATTRS_KEY]
    assert info[K.ATTR_SPOTS] == "placenta"
    assert info[K.ATTR_TABLE] == K.TABLE_KEY
    assert info[K.ATTR_SAMPLE_ID] == "placenta"
    assert info[K.ATTR_COORDINATE_SYSTEM] == "placenta"


def test_coordinate_systems_are_named_after_the_dataset(sr3, sr1):
    for (sdata, _), sid in ((sr3, "placenta"), (sr1, "heart")):
        # sid in µm (full-resolution pixels scaled by mpp); spatialdata-io's hires / lowres pixel systems
        assert set(sdata.coordinate_systems) == {sid, f"{sid}_downscaled_hires", f"{sid}_downscaled_lowres"}
        for _, name, element in sdata.gen_spatial_elements():
            systems = set(get_transformation(element, get_all=True))
            assert "global" not in systems, name
            assert sid in systems, name
        mpp = sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP]
        matrix = get_transformation(sdata[sid], to_coordinate_system=sid).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(matrix, np.diag([mpp, mpp, 1.0]))


def test_spots_sit_at_the_positions_of_the_positions_file(sr3, sr1):
    for (sdata, _), folder, sid in ((sr3, SR3, "placenta"), (sr1, SR1, "heart")):
        table = sdata[K.TABLE_KEY]
        pos = _positions(folder).loc[table.obs_names]
        xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
        np.testing.assert_allclose(table.obsm["spatial"], xy)
        shapes = sdata[sid]
        np.testing.assert_allclose(np.c_[shapes.geometry.x, shapes.geometry.y], xy)
        assert np.array_equal(table.obs[K.ARRAY_ROW_KEY], pos["array_row"])
        assert np.array_equal(table.obs[K.ARRAY_COL_KEY], pos["array_col"])


def test_lowres_image_maps_onto_full_resolution_pixels(sr3):
    sdata, _ = sr3
    scale = get_transformation(sdata["placenta_lowres_image"], to_coordinate_system="placenta")
    lowres = _scalefactors(SR3)["tissue_lowres_scalef"]
    mpp = sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP]
    # lowres pixel -> full-resolution pixel -> µm
    np.testing.assert_allclose(scale.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2], np.eye(2) / lowres * mpp)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE_MPP] == pytest.approx(mpp / lowres)


@pytest.mark.parametrize(
    ("which", "folder", "header", "sr_spot_um"),
    [("sr3", SR3, 0, 70.0), ("sr1", SR1, None, 65.0)],
)
def test_pixel_size_from_spot_pitch_and_spot_radius(request, which, folder, header, sr_spot_um):
    sdata, _ = request.getfixturevalue(which)
    sid = "placenta" if which == "sr3" else "heart"
    positions = folder / "spatial" / ("tissue_positions.csv" if header == 0 else "tissue_positions_list.csv")
    expected = _pitch_mpp(positions, header)
    mpp = sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP]
    assert mpp == pytest.approx(expected, rel=1e-9)
    # Space Ranger's spot_diameter_fullres is a larger "theoretical" spot (10x: 65 µm; SR 3.0 CytAssist: 70 µm),
    # not the 55 µm capture spot: 55 / spot_diameter_fullres would be 15-21 % off
    diameter_px = _scalefactors(folder)["spot_diameter_fullres"]
    assert mpp * diameter_px == pytest.approx(sr_spot_um, abs=0.5)
    # circles of the 55 µm capture spot, in full-res pixels
    assert np.allclose(sdata[sid]["radius"], 27.5 / expected)


def test_pixel_sizes_of_the_real_datasets(sr3, sr1):
    assert sr3[0].attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(4.6776, abs=1e-4)  # CytAssist image
    assert sr1[0].attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(0.7246, abs=1e-4)  # 138 px per 100 µm


def test_spot_radius_options():
    diameter = _scalefactors(SR3)["spot_diameter_fullres"]
    sdata = visium_quiet(SR3, dataset_id="a", spot_diameter_um=None)
    assert np.allclose(sdata["a"]["radius"], diameter / 2)  # spatialdata-io's radius
    sdata = visium_quiet(SR3, dataset_id="b", mpp=0.5)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.5
    assert np.allclose(sdata["b"]["radius"], 55.0)


# --- real data: Space Ranger 1.0 layout and probe-level h5 ----------------------------------------------------


def test_sr1_layout_with_headerless_positions(sr1):
    sdata, messages = sr1
    table = sdata[K.TABLE_KEY]
    h5 = SR1 / "filtered_feature_bc_matrix.h5"
    assert not (SR1 / "spatial" / "tissue_positions.csv").exists()
    assert table.shape == (100, 100)
    assert list(table.obs_names) == _h5_strings(h5, "matrix/barcodes")
    assert table.X.sum(dtype=np.float64) == pytest.approx(_h5_total(h5))
    assert (table.obs[K.IN_TISSUE_KEY] == 1).all()
    assert set(sdata.shapes) == {"heart"}
    assert len(sdata["heart"]) == 100
    # hires present (a blank RGBA placeholder in this subset) and lowres; no image warning
    assert set(sdata.images) == {"heart_hires_image", "heart_lowres_image"}
    assert sdata["heart_hires_image"].shape == (3, 2000, 2000)  # RGBA placeholder, alpha dropped
    assert sdata["heart_hires_image"].coords["c"].values.tolist() == ["r", "g", "b"]
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE] == "heart_hires_image"
    assert messages == []


def test_in_tissue_spots_without_counts_are_logged(caplog):
    logger = logging.getLogger("bitro")
    logger.addHandler(caplog.handler)  # the bitro logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.INFO, logger="bitro"):
            visium_quiet(SR1, dataset_id="heart")
    finally:
        logger.removeHandler(caplog.handler)
    # 4235 in-tissue spots in tissue_positions_list.csv, 100 in this subset's counts
    assert "4135 in-tissue spots" in caplog.text
    assert "pixel size 0.7246 µm/px from the 100 µm spot pitch" in caplog.text


def test_probe_level_h5_reads(probe_folder):
    sdata, messages = _read(probe_folder, counts_file="raw_probe_bc_matrix.h5")
    table = sdata[K.TABLE_KEY]
    assert table.shape == (4987, 1000)
    assert table.X.sum(dtype=np.float64) == _h5_total(SR2_PROBE) == 3372
    # features are probes; their genes are kept
    assert list(table.var_names) == _h5_strings(SR2_PROBE, "matrix/features/name")
    assert list(table.var["gene_ids"]) == _h5_strings(SR2_PROBE, "matrix/features/gene_id")
    assert "gene_name" in table.var
    assert int(table.obs["filtered_barcodes"].sum()) == 2348
    # no library id in the file: the folder names the dataset
    assert set(sdata.shapes) == {"probe_run"}
    assert len(sdata["probe_run"]) == 4987
    assert len(messages) == 1
    assert "tissue_hires_image.png does not exist" in messages[0]


def test_probe_h5_without_spatial_folder_is_refused_clearly(tmp_path):
    shutil.copy(SR2_PROBE, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"`tissue_positions_file`.*spatial.*scanpy\.read_10x_h5"):
        visium(tmp_path, counts_file="raw_probe_bc_matrix.h5")


# --- zarr round trip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sr3", "sr1"])
def test_zarr_round_trip_keeps_table_shapes_images_and_attrs(request, tmp_path, which):
    sdata, _ = request.getfixturevalue(which)
    sid = sdata.attrs[K.ATTRS_KEY][K.ATTR_SPOTS]
    sdata.write(tmp_path / "v.zarr")
    back = sd.read_zarr(tmp_path / "v.zarr")
    assert back.attrs[K.ATTRS_KEY] == sdata.attrs[K.ATTRS_KEY]
    assert set(back.images) == set(sdata.images)
    assert set(back.shapes) == set(sdata.shapes) == {sid}
    assert set(back.coordinate_systems) == set(sdata.coordinate_systems)
    t0, t1 = sdata[K.TABLE_KEY], back[K.TABLE_KEY]
    assert t1.obs_names.equals(t0.obs_names)
    assert t1.var_names.equals(t0.var_names)
    assert list(t1.var["gene_ids"]) == list(t0.var["gene_ids"])
    assert (t1.X != t0.X).nnz == 0
    pd.testing.assert_frame_equal(t1.obs, t0.obs)
    assert t1.uns["spatialdata_attrs"] == t0.uns["spatialdata_attrs"]
    pd.testing.assert_series_equal(back[sid]["radius"], sdata[sid]["radius"])
    assert back[sid].geometry.geom_equals(sdata[sid].geometry).all()
    for name in sdata.images:
        np.testing.assert_array_equal(np.asarray(back[name]), np.asarray(sdata[name]))
        assert set(get_transformation(back[name], get_all=True)) == set(get_transformation(sdata[name], get_all=True))


# --- written Space Ranger folders: edge cases and bad inputs -------------------------------------------------


def visium_quiet(path, **kwargs):
    """Read, ignoring the warnings that the tests above check (duplicated gene names, missing images)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*duplicated feature names", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*tissue_hires_image.png does not exist", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*no image was read", category=UserWarning)
        return visium(path, **kwargs)


def _write_spaceranger(
    folder: Path,
    *,
    n_spots: int = 12,
    counts: np.ndarray | None = None,
    barcodes: list[str] | None = None,
    position_barcodes: list[str] | None = None,
    col_step: int = 2,
    header: bool = True,
    scalefactors: dict | None = None,
    lowres: bool = True,
) -> Path:
    """A Space Ranger >= 2.0 folder: mtx counts, spots on a hex grid 20 px apart (5 µm/px), optional lowres image."""
    rng = np.random.default_rng(0)
    n_genes = 5
    codes = [f"SPOT{i:04d}-1" for i in range(n_spots)]
    barcodes = codes if barcodes is None else barcodes
    position_barcodes = codes if position_barcodes is None else position_barcodes
    counts = rng.poisson(3, size=(len(barcodes), n_genes)) + 1 if counts is None else counts
    mtx = folder / "filtered_feature_bc_matrix"
    mtx.mkdir(parents=True)
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as f:
        spio.mmwrite(f, sparse.coo_matrix(np.asarray(counts).T.reshape(n_genes, len(barcodes))))
    with gzip.open(mtx / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{j:05d}\tGENE{j}\tGene Expression\n" for j in range(n_genes))
    with gzip.open(mtx / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)
    spatial = folder / "spatial"
    spatial.mkdir()
    n_cols = 4
    rows = [(b, 1, i // n_cols, (i // n_cols) % 2 + col_step * (i % n_cols)) for i, b in enumerate(position_barcodes)]
    lines = ["barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"] if header else []
    lines += [f"{b},{t},{r},{c},{100 + 17.32 * r},{100 + 10.0 * c}" for b, t, r, c in rows]
    (spatial / "tissue_positions.csv").write_text("\n".join(lines) + "\n")
    default = {"spot_diameter_fullres": 13.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}
    (spatial / "scalefactors_json.json").write_text(json.dumps(default if scalefactors is None else scalefactors))
    if lowres:
        Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(spatial / "tissue_lowres_image.png")
    return folder


def test_written_folder_reads(tmp_path):
    folder = _write_spaceranger(tmp_path / "ok")
    with pytest.warns(UserWarning, match="tissue_hires_image.png does not exist; using ok_lowres_image"):
        sdata = visium(folder, counts_file="filtered_feature_bc_matrix")
    assert sdata[K.TABLE_KEY].shape == (12, 5)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(5.0)  # 20 px per 100 µm
    assert np.allclose(sdata["ok"]["radius"], 5.5)


def test_pixel_size_falls_back_to_spot_diameter_with_a_warning(tmp_path):
    folder = _write_spaceranger(tmp_path / "sparse", col_step=4)  # no two spots two columns apart
    with pytest.warns(UserWarning, match="spot pitch cannot be measured"):
        sdata = visium_quiet(folder, counts_file="filtered_feature_bc_matrix")
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(65.0 / 13.0)
    # without spot_diameter_fullres either, the pixel size must be given
    folder = _write_spaceranger(
        tmp_path / "none", col_step=4, scalefactors={"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}
    )
    with pytest.raises(ValueError, match=r"Cannot tell the pixel size.*pass `mpp`"):
        visium(folder, counts_file="filtered_feature_bc_matrix")
    sdata = visium_quiet(folder, counts_file="filtered_feature_bc_matrix", mpp=2.0)
    assert np.allclose(sdata["none"]["radius"], 27.5 / 2.0)


def test_missing_spot_diameter_uses_the_pitch(tmp_path):
    folder = _write_spaceranger(
        tmp_path / "nodiam", scalefactors={"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}
    )
    sdata = visium_quiet(folder, counts_file="filtered_feature_bc_matrix")
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(5.0)
    assert np.allclose(sdata["nodiam"]["radius"], 5.5)
    with pytest.raises(ValueError, match=r"no 'spot_diameter_fullres'.*spot_diameter_um"):
        visium_quiet(folder, counts_file="filtered_feature_bc_matrix", spot_diameter_um=None)


def test_missing_files_name_the_argument_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`path`: .*nowhere does not exist"):
        visium(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"`counts_file`: .*raw_feature_bc_matrix\.h5 does not exist"):
        visium(SR3, counts_file="raw_feature_bc_matrix.h5")
    with pytest.raises(FileNotFoundError, match=r"`fullres_image_file`: .*image\.tif does not exist"):
        visium(SR3, fullres_image_file="image.tif")
    with pytest.raises(FileNotFoundError, match=r"`scalefactors_file`: .*other\.json does not exist"):
        visium(SR3, scalefactors_file="spatial/other.json")
    folder = _write_spaceranger(tmp_path / "noscale")
    (folder / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"`scalefactors_file`: .*scalefactors_json\.json does not exist"):
        visium(folder, counts_file="filtered_feature_bc_matrix")
    folder = _write_spaceranger(tmp_path / "nobarcodes")
    (folder / "filtered_feature_bc_matrix" / "barcodes.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"`counts_file`: .*barcodes\.tsv\.gz does not exist"):
        visium(folder, counts_file="filtered_feature_bc_matrix")


def test_wrong_kinds_of_input_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`counts_file`: .*scalefactors_json\.json is neither a 10x \.h5"):
        visium(SR3, counts_file="spatial/scalefactors_json.json")
    with pytest.raises(ValueError, match=r"`tissue_positions_file`: .* must be named tissue_positions\.csv"):
        visium(SR3, tissue_positions_file="spatial/scalefactors_json.json")
    shutil.copy(SR3 / "spatial" / "tissue_positions.csv", tmp_path / "fake.h5")
    with pytest.raises(ValueError, match=r"`counts_file`: .*fake\.h5 is not a readable HDF5 file"):
        visium(SR3, counts_file=tmp_path / "fake.h5")
    with pytest.raises(TypeError, match="`dataset_id`"):
        visium(SR3, dataset_id=3)
    with pytest.raises(ValueError, match="`mpp` must be > 0"):
        visium(SR3, mpp=0.0)


def test_barcodes_without_positions_are_an_error(tmp_path):
    codes = [f"SPOT{i:04d}-1" for i in range(12)]
    folder = _write_spaceranger(tmp_path / "unmatched", position_barcodes=codes[:10] + ["X-1", "Y-1"])
    with pytest.raises(
        ValueError,
        match=r"2 of 12 barcodes of .*filtered_feature_bc_matrix have no position in .*tissue_positions\.csv",
    ):
        visium(folder, counts_file="filtered_feature_bc_matrix")


def test_duplicated_barcodes_are_an_error(tmp_path):
    codes = [f"SPOT{i:04d}-1" for i in range(12)]
    folder = _write_spaceranger(tmp_path / "dupcounts", barcodes=codes[:11] + codes[:1])
    with pytest.raises(
        ValueError, match=r"`counts_file`: .*filtered_feature_bc_matrix lists 1 barcodes more than once.*SPOT0000-1"
    ):
        visium(folder, counts_file="filtered_feature_bc_matrix")
    folder = _write_spaceranger(tmp_path / "duppos", position_barcodes=codes + codes[3:4])
    with pytest.raises(ValueError, match=r"tissue_positions\.csv: 1 barcodes are listed more than once.*SPOT0003-1"):
        visium(folder, counts_file="filtered_feature_bc_matrix")


def test_empty_matrices_are_an_error(tmp_path):
    folder = _write_spaceranger(tmp_path / "nospots", barcodes=[], counts=np.zeros((0, 5)))
    with pytest.raises(ValueError, match=r"`counts_file`: .*filtered_feature_bc_matrix holds no barcodes"):
        visium(folder, counts_file="filtered_feature_bc_matrix")
    folder = _write_spaceranger(tmp_path / "zeros", counts=np.zeros((12, 5), dtype=int))
    with pytest.raises(ValueError, match=r"`counts_file`: .*filtered_feature_bc_matrix holds no counts"):
        visium_quiet(folder, counts_file="filtered_feature_bc_matrix")


def test_bad_positions_and_scalefactors_name_the_file(tmp_path):
    folder = _write_spaceranger(tmp_path / "noheader", header=False)
    with pytest.raises(
        ValueError, match=r"tissue_positions\.csv: a Space Ranger >= 2\.0 positions file needs its header"
    ):
        visium(folder, counts_file="filtered_feature_bc_matrix")
    folder = _write_spaceranger(
        tmp_path / "nolowres", scalefactors={"spot_diameter_fullres": 13.0, "tissue_hires_scalef": 0.5}
    )
    with pytest.raises(ValueError, match=r"scalefactors_json\.json: 'tissue_lowres_scalef' must be a positive number"):
        visium(folder, counts_file="filtered_feature_bc_matrix")


def test_no_image_at_all_warns(tmp_path):
    folder = _write_spaceranger(tmp_path / "noimage", lowres=False)
    with pytest.warns(UserWarning, match="tissue_hires_image.png does not exist; no image was read"):
        sdata = visium(folder, counts_file="filtered_feature_bc_matrix")
    assert len(sdata.images) == 0
    assert K.ATTR_IMAGE not in sdata.attrs[K.ATTRS_KEY]


def test_dataset_id_is_sanitised(tmp_path):
    folder = _write_spaceranger(tmp_path / "san")
    sdata = visium_quiet(folder, counts_file="filtered_feature_bc_matrix", dataset_id="slide 1/A")
    assert set(sdata.shapes) == {"slide_1_A"}
    assert "slide_1_A" in sdata.coordinate_systems


def test_fullres_image_is_read_and_becomes_the_image_key(tmp_path):
    folder = _write_spaceranger(tmp_path / "full")
    rgb = np.random.default_rng(1).integers(0, 255, size=(200, 240, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "he.png")
    # no warning: the full-resolution image stands in for the missing hires image
    sdata = visium(folder, counts_file="filtered_feature_bc_matrix", fullres_image_file="he.png")
    assert set(sdata.images) == {"full_full_image", "full_lowres_image"}
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE] == "full_full_image"
    full = sdata["full_full_image"]["scale0"]["image"]
    np.testing.assert_array_equal(np.asarray(full), rgb.transpose(2, 0, 1))
    matrix = get_transformation(sdata["full_full_image"], to_coordinate_system="full").to_affine_matrix(
        ("x", "y"), ("x", "y")
    )
    mpp = sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP]
    np.testing.assert_allclose(matrix, np.diag([mpp, mpp, 1.0]))
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE_MPP] == pytest.approx(mpp)


def test_counts_file_outside_path_with_regex_characters_in_its_name(tmp_path):
    # spatialdata-io turns `counts_file` into a regular expression; "(" must not break the read
    other = tmp_path / "run (copy"  # unbalanced: an invalid regular expression
    other.mkdir()
    shutil.copy(SR3 / "filtered_feature_bc_matrix.h5", other / "counts[1].h5")
    sdata = visium_quiet(SR3, dataset_id="elsewhere", counts_file=other / "counts[1].h5")
    assert sdata[K.TABLE_KEY].shape == (SR3_SPOTS, SR3_GENES)
    assert sdata[K.TABLE_KEY].X.sum(dtype=np.float64) == SR3_COUNTS


def test_a_cut_short_matrix_folder_is_named(tmp_path):
    folder = tmp_path / "outs"
    shutil.copytree(SR3 / "spatial", folder / "spatial")
    shutil.copytree(SR3 / "filtered_feature_bc_matrix", folder / "filtered_feature_bc_matrix")
    barcodes = folder / "filtered_feature_bc_matrix" / "barcodes.tsv.gz"
    barcodes.write_bytes(barcodes.read_bytes()[:-30])  # a download cut short
    with pytest.raises(ValueError, match=r"`counts_file`: a file of .*filtered_feature_bc_matrix could not be read"):
        visium_quiet(folder, counts_file="filtered_feature_bc_matrix")


def test_a_cut_short_image_is_named(tmp_path):
    folder = tmp_path / "outs"
    shutil.copytree(SR3, folder)
    image = folder / "spatial" / "tissue_lowres_image.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ValueError, match=r"tissue_lowres_image\.png: not a readable image .*Copy it again"):
        visium_quiet(folder)
