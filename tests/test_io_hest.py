"""HEST-1k reader, on a small HEST-layout folder built here from the documented format.

Layout (HEST-1k on Hugging Face, MahmoodLab/hest): ``st/{id}.h5ad`` (spots x genes, spot centres in
full-resolution pixels in ``obsm["spatial"]``), ``wsis/{id}.tif`` (pyramidal TIFF),
``metadata/{id}.json`` (``pixel_size_um_estimated``, ``spot_diameter``, ``patient``, ...),
``cellvit_seg/{id}_cellvit_seg.parquet`` (or ``.geojson``), ``tissue_seg/{id}_contours.geojson``.
The content is the synthetic toy section, so every value has a known truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pytest
import spatialdata as sd
import tifffile

import bitro as bt
from bitro import _constants as K
from bitro.io._hest import CELLVIT_KEY

SID = "TOY01"
MPP = 0.5


def _make_hest(root: Path, toy, *, nuclei: str | None = "parquet", meta_extra: dict | None = None) -> Path:
    for sub in ("st", "wsis", "metadata", "cellvit_seg", "tissue_seg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image = np.moveaxis(toy["toy_full_image"]["scale0"]["image"].values, 0, -1)
    with tifffile.TiffWriter(root / "wsis" / f"{SID}.tif") as tif:
        tif.write(image, tile=(256, 256), subifds=1, photometric="rgb", compression="zlib")
        tif.write(image[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib")
    table = toy[K.TABLE_KEY]
    adata = ad.AnnData(
        X=table.X.copy(),
        obs=table.obs[["array_row", "array_col"]].assign(in_tissue=1),
        var=table.var[[]].copy(),
        obsm={"spatial": np.asarray(table.obsm["spatial"])},
    )
    adata.obs_names = [f"bc{i}" for i in range(adata.n_obs)]
    adata.write_h5ad(root / "st" / f"{SID}.h5ad")
    meta = {
        "pixel_size_um_estimated": MPP,
        "pixel_size_um_embedded": None,
        "spot_diameter": 55.0,
        "inter_spot_dist": 100.0,
        "st_technology": "Visium",
        "patient": "P7",
        **(meta_extra or {}),
    }
    (root / "metadata" / f"{SID}.json").write_text(json.dumps(meta))
    cells = gpd.GeoDataFrame(  # plain polygons, without spatialdata's transformation attrs
        {"class": toy[K.TRUE_CELLS_TABLE_KEY].obs["cell_type"].astype(str).to_numpy()},
        geometry=toy["toy_true_cells"].geometry.to_numpy(),
    )
    if nuclei == "parquet":
        cells.to_parquet(root / "cellvit_seg" / f"{SID}_cellvit_seg.parquet")
    elif nuclei == "geojson":  # CellViT writes a bare list of features with a classification dict
        features = json.loads(cells.to_json())["features"]
        for feature in features:
            feature["properties"] = {"classification": {"name": feature["properties"].pop("class"), "color": [1, 2, 3]}}
        (root / "cellvit_seg" / f"{SID}_cellvit_seg.geojson").write_text(json.dumps(features))
    tissue = gpd.GeoDataFrame({"tissue_id": [0]}, geometry=[cells.union_all().convex_hull])
    (root / "tissue_seg" / f"{SID}_contours.geojson").write_text(tissue.to_json())
    return root


@pytest.fixture(scope="module")
def toy():
    return bt.datasets.toy_st(n_spots=16, n_genes=30, seed=4)


def test_hest_sample_reads(toy, tmp_path):
    sdata = bt.io.hest(_make_hest(tmp_path, toy), SID)
    info = sdata.attrs[K.ATTRS_KEY]
    assert info[K.ATTR_MPP] == MPP
    assert info[K.ATTR_COORDINATE_SYSTEM] == SID
    assert info[K.PATIENT_ID_KEY] == "P7"
    assert info["technology"] == "Visium"
    assert set(sdata.coordinate_systems) == {SID}
    table = sdata[K.TABLE_KEY]
    assert np.array_equal(table.X.toarray(), toy[K.TABLE_KEY].X.toarray())
    assert table.uns["spatialdata_attrs"]["region"] == SID
    # spots where the h5ad puts them, as 55 µm circles
    spots = sdata[SID]
    assert np.allclose(np.c_[spots.geometry.x, spots.geometry.y], toy[K.TABLE_KEY].obsm["spatial"])
    assert np.allclose(spots["radius"], 27.5 / MPP)
    image = sdata[f"{SID}_full_image"]
    assert image["scale0"]["image"].shape == toy["toy_full_image"]["scale0"]["image"].shape
    assert np.array_equal(
        image["scale0"]["image"].data[:, 100:200, 300:400].compute(),
        toy["toy_full_image"]["scale0"]["image"].values[:, 100:200, 300:400],
    )
    # nuclei and tissue outline
    assert info[K.ATTR_CELLS_SHAPES] == CELLVIT_KEY
    assert len(sdata[CELLVIT_KEY]) == len(toy["toy_true_cells"])
    assert set(sdata[CELLVIT_KEY]["cell_type"]) == {"tumor", "stroma", "lymphocyte", "myeloid"}
    assert sdata[f"{SID}_tissue"].geometry.iloc[0].contains(sdata[CELLVIT_KEY].geometry.iloc[0])


def test_cellvit_geojson_list_of_features(toy, tmp_path):
    sdata = bt.io.hest(_make_hest(tmp_path, toy, nuclei="geojson"), SID)
    assert len(sdata[CELLVIT_KEY]) == len(toy["toy_true_cells"])
    truth = toy[K.TRUE_CELLS_TABLE_KEY].obs["cell_type"].astype(str).to_numpy()
    assert np.array_equal(sdata[CELLVIT_KEY]["cell_type"].astype(str).to_numpy(), truth)


def test_optional_parts_can_be_skipped(toy, tmp_path):
    root = _make_hest(tmp_path, toy, nuclei=None)
    sdata = bt.io.hest(root, SID, tissue=False)
    assert set(sdata.shapes) == {SID}
    assert K.ATTR_CELLS_SHAPES not in sdata.attrs[K.ATTRS_KEY]


def test_pixel_size_falls_back_to_embedded(toy, tmp_path):
    root = _make_hest(tmp_path, toy, meta_extra={"pixel_size_um_estimated": None, "pixel_size_um_embedded": 0.25})
    assert bt.io.hest(root, SID).attrs[K.ATTRS_KEY][K.ATTR_MPP] == 0.25


def test_zarr_round_trip(toy, tmp_path):
    sdata = bt.io.hest(_make_hest(tmp_path / "hest", toy), SID)
    sdata.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    assert back.attrs[K.ATTRS_KEY] == sdata.attrs[K.ATTRS_KEY]
    assert np.array_equal(back[K.TABLE_KEY].X.toarray(), sdata[K.TABLE_KEY].X.toarray())
    assert back[CELLVIT_KEY].geometry.geom_equals_exact(sdata[CELLVIT_KEY].geometry, tolerance=1e-9).all()
    back[K.TABLE_KEY].copy()


def test_missing_files(toy, tmp_path):
    root = _make_hest(tmp_path, toy)
    with pytest.raises(FileNotFoundError, match=r"OTHER.*st/OTHER\.h5ad"):
        bt.io.hest(root, "OTHER")
    (root / "wsis" / f"{SID}.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"wsis/TOY01\.tif"):
        bt.io.hest(root, SID)
    with pytest.raises(FileNotFoundError, match="`root`"):
        bt.io.hest(tmp_path / "nowhere", SID)


def test_metadata_without_pixel_size(toy, tmp_path):
    root = _make_hest(tmp_path, toy, meta_extra={"pixel_size_um_estimated": None})
    with pytest.raises(ValueError, match=r"metadata/TOY01\.json.*pixel_size_um"):
        bt.io.hest(root, SID)


def test_spots_outside_the_image(toy, tmp_path):
    root = _make_hest(tmp_path, toy)
    adata = ad.read_h5ad(root / "st" / f"{SID}.h5ad")
    adata.obsm["spatial"] = adata.obsm["spatial"] + 1e6
    adata.write_h5ad(root / "st" / f"{SID}.h5ad")
    with pytest.raises(ValueError, match=r"TOY01\.tif.*smaller than the spot coordinates.*16 of 16"):
        bt.io.hest(root, SID)
