"""Legacy ST reader and the HER2ST dataset, on a real HER2ST section (C3)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from PIL import Image
from spatialdata.transformations import get_transformation

import bitro as bt
from bitro import _constants as K
from bitro.io._legacy_st import estimate_mpp

HER2ST = Path(__file__).parent / "data" / "her2st"
COUNTS = HER2ST / "ST-cnts" / "C3.tsv.gz"
SPOTS = HER2ST / "ST-spotfiles" / "C3_selection.tsv"
IMAGE = HER2ST / "ST-imgs" / "C3_5714_HE_BT_D1.jpg"


@pytest.fixture(scope="module")
def c3():
    return bt.io.legacy_st(COUNTS, SPOTS, IMAGE, sample_id="C3")


def test_her2st_section_reads_with_every_spot_matched(c3):
    table = c3[K.TABLE_KEY]
    counts = pd.read_csv(COUNTS, sep="\t", index_col=0)
    spots = pd.read_csv(SPOTS, sep="\t")
    assert table.n_obs == 180  # 182 selected spots, 2 without counts
    assert table.n_vars == counts.shape[1]
    # every kept spot is the counts file's row of the same id, with the same counts
    assert set(table.obs_names) <= set(counts.index)
    assert np.array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())
    assert table.X.sum() == counts.to_numpy().sum()
    # and sits where the spot file puts it
    by_id = spots.set_index(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    assert np.allclose(table.obsm["spatial"], by_id.loc[table.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    assert np.array_equal(table.obs["array_col"], by_id.loc[table.obs_names, "x"])


def test_her2st_geometry_and_pixel_size(c3):
    info = c3.attrs[K.ATTRS_KEY]
    assert info[K.ATTR_IMAGE] == "C3_full_image"
    assert info[K.ATTR_SPOTS] == "C3"
    assert info[K.ATTR_COORDINATE_SYSTEM] == "C3"
    assert set(c3.coordinate_systems) == {"C3"}
    # 290 px per 200 µm pitch (SOURCE.txt): ~0.69 µm/px
    assert info[K.ATTR_MPP] == pytest.approx(0.69, abs=0.01)
    image = c3["C3_full_image"]["scale0"]["image"]
    assert image.shape == (3, 9936, 9270)  # the JPEG's height and width
    xy = c3[K.TABLE_KEY].obsm["spatial"]
    assert (xy >= 0).all()
    assert (xy[:, 0] < 9270).all()
    assert (xy[:, 1] < 9936).all()
    assert np.allclose(c3["C3"]["radius"], 50 / info[K.ATTR_MPP])
    t = get_transformation(c3["C3"], to_coordinate_system="C3").to_affine_matrix(("x", "y"), ("x", "y"))
    assert np.allclose(np.diag(t)[:2], info[K.ATTR_MPP])


def test_estimated_pixel_size_matches_the_spot_pitch():
    spots = pd.read_csv(SPOTS, sep="\t")
    mpp = estimate_mpp(spots)
    # spots one array step apart (same row, neighbouring columns) are 200 µm apart
    by_xy = spots.set_index(["x", "y"])[["pixel_x", "pixel_y"]]
    steps = [
        np.hypot(*(by_xy.loc[(x + 1, y)] - by_xy.loc[(x, y)])) for x, y in by_xy.index if (x + 1, y) in by_xy.index
    ]
    assert len(steps) > 100
    assert np.median(steps) * mpp == pytest.approx(200, rel=0.01)


def test_unmatched_spots_are_logged(bitro_log):
    bt.io.legacy_st(COUNTS, SPOTS, IMAGE, sample_id="C3", pixel_size=0.7)
    assert "2 selected spots have no counts" in bitro_log.text


def test_her2st_dataset_from_local_folder(c3):
    sdata = bt.datasets.her2st("C3", data_dir=HER2ST)
    assert sdata[K.TABLE_KEY].obs_names.equals(c3[K.TABLE_KEY].obs_names)
    with pytest.raises(FileNotFoundError, match="C4"):
        bt.datasets.her2st("C4", data_dir=HER2ST)


def test_her2st_download_fails_clearly_offline(monkeypatch, tmp_path):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.setattr(bt.settings, "_cachedir", tmp_path)
    with pytest.raises(OSError, match="data_dir"):
        bt.datasets.her2st("C3")
    with pytest.raises(ValueError, match="registered checksums"):
        bt.datasets.her2st("A1")


def test_zarr_round_trip(c3, tmp_path):
    c3.write(tmp_path / "c3.zarr")
    back = sd.read_zarr(tmp_path / "c3.zarr")
    assert back.attrs[K.ATTRS_KEY] == c3.attrs[K.ATTRS_KEY]
    assert np.array_equal(back[K.TABLE_KEY].X.toarray(), c3[K.TABLE_KEY].X.toarray())
    assert back[K.TABLE_KEY].obs_names.equals(c3[K.TABLE_KEY].obs_names)
    assert back["C3"].geometry.geom_equals_exact(c3["C3"].geometry, tolerance=1e-9).all()
    window = (slice(None), slice(5000, 5100), slice(4000, 4100))
    assert np.array_equal(
        back["C3_full_image"]["scale0"]["image"].data[window].compute(),
        c3["C3_full_image"]["scale0"]["image"].data[window].compute(),
    )
    back[K.TABLE_KEY].copy()


# --- bad input, on small files written here ----------------------------------------------------


def _write_section(folder: Path, *, ids=("1x1", "2x1", "1x2", "3x3"), genes=("A", "B", "C"), values=None, size=900):
    folder.mkdir(exist_ok=True)
    values = np.arange(len(ids) * len(genes)).reshape(len(ids), len(genes)) if values is None else values
    counts = folder / "counts.tsv.gz"
    with gzip.open(counts, "wt") as fh:
        pd.DataFrame(values, index=list(ids), columns=list(genes)).to_csv(fh, sep="\t")
    spots = folder / "spots.tsv"
    xy = [tuple(map(int, i.split("x"))) for i in ("1x1", "2x1", "1x2", "3x3")]
    pd.DataFrame(
        {
            "x": [x for x, _ in xy],
            "y": [y for _, y in xy],
            "pixel_x": [100 + 200 * x for x, _ in xy],
            "pixel_y": [100 + 200 * y for _, y in xy],
            "selected": [1, 1, 1, 1],
        }
    ).to_csv(spots, sep="\t", index=False)
    image = folder / "he.png"
    Image.new("RGB", (size, size), (230, 180, 220)).save(image)
    return counts, spots, image


def test_small_section_reads(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    sdata = bt.io.legacy_st(counts, spots, image, sample_id="s1")
    assert sdata[K.TABLE_KEY].shape == (4, 3)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_MPP] == pytest.approx(1.0)  # 200 px per 200 µm


def test_counts_that_match_no_spot(tmp_path):
    files = _write_section(tmp_path, ids=("9x9", "8x8", "7x7", "6x6"))
    with pytest.raises(ValueError, match=r"counts\.tsv\.gz.*none of its spot ids"):
        bt.io.legacy_st(*files, sample_id="s1")


def test_duplicated_genes_made_unique_with_warning(tmp_path):
    files = _write_section(tmp_path, genes=("A", "A", "B"))
    with pytest.warns(UserWarning, match="1 duplicated gene names"):
        sdata = bt.io.legacy_st(*files, sample_id="s1")
    assert list(sdata[K.TABLE_KEY].var_names) == ["A", "A-1", "B"]


def test_non_numeric_counts(tmp_path):
    values = np.array([[1, 2, 3], [4, "x", 6], [7, 8, 9], [1, 1, 1]], dtype=object)
    files = _write_section(tmp_path, values=values)
    with pytest.raises(ValueError, match=r"non-numeric.*'x'.*spot '2x1'"):
        bt.io.legacy_st(*files, sample_id="s1")


def test_image_smaller_than_the_spots(tmp_path):
    files = _write_section(tmp_path, size=500)
    with pytest.raises(ValueError, match=r"he\.png.*smaller than the spot coordinates"):
        bt.io.legacy_st(*files, sample_id="s1")


def test_missing_files_and_columns(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    with pytest.raises(FileNotFoundError, match="`image`"):
        bt.io.legacy_st(counts, spots, tmp_path / "nope.jpg", sample_id="s1")
    pd.read_csv(spots, sep="\t").drop(columns="pixel_x").to_csv(spots, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lacks the columns \['pixel_x'\]"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")


def test_empty_counts(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    with gzip.open(counts, "wt") as fh:
        fh.write("\tA\tB\n")
    with pytest.raises(ValueError, match="empty"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")


def test_spots_without_positions_and_cut_files(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    table.loc[1, "pixel_x"] = np.nan  # an empty cell in the selection file
    table.to_csv(spots, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"spots\.tsv: 1 spots have missing or non-numeric positions"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")
    table.dropna().to_csv(spots, sep=",", index=False)  # comma-separated
    with pytest.raises(ValueError, match="lacks the columns.*Is it tab-separated"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")
    counts, spots, image = _write_section(tmp_path)
    counts.write_bytes(counts.read_bytes()[:-20])  # a download cut short
    with pytest.raises(ValueError, match=r"counts\.tsv\.gz: could not read it .*ends early"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")


def test_a_cut_short_image_is_named(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    jpeg = tmp_path / "he.jpg"
    Image.open(image).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"`path`: .*he\.jpg could not be decoded .*is the file complete"):
        bt.io.legacy_st(counts, spots, jpeg, sample_id="s1")


def test_counts_written_by_r_and_comma_separated(tmp_path):
    counts, spots, image = _write_section(tmp_path)
    table = pd.read_csv(counts, sep="\t", index_col=0)
    with gzip.open(counts, "wt") as fh:  # R's write.table: the header has no field for the row names
        fh.write("\t".join(table.columns) + "\n")
        fh.writelines(
            f"{spot}\t" + "\t".join(map(str, row)) + "\n"
            for spot, row in zip(table.index, table.to_numpy(), strict=True)
        )
    sdata = bt.io.legacy_st(counts, spots, image, sample_id="s1")
    assert list(sdata[K.TABLE_KEY].var_names) == ["A", "B", "C"]
    np.testing.assert_array_equal(
        np.asarray(
            sdata[K.TABLE_KEY].X.todense() if hasattr(sdata[K.TABLE_KEY].X, "todense") else sdata[K.TABLE_KEY].X
        ),
        table.to_numpy(),
    )
    with gzip.open(counts, "wt") as fh:
        table.to_csv(fh, sep=",")
    with pytest.raises(ValueError, match=r"counts table is empty \(4 spots x 0 genes\)\. Is it tab-separated"):
        bt.io.legacy_st(counts, spots, image, sample_id="s1")
