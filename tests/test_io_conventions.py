"""What every reader records, so that later steps find their inputs without being told."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from spatialdata.transformations import get_transformation

import bitro as bt
from bitro import _constants as K

DATA = Path(__file__).parent / "data"


def _readers():
    yield "toy_st", lambda: bt.datasets.toy_st(n_spots=4, n_genes=5)
    yield "visium", lambda: bt.io.visium(DATA / "visium" / "sr3_mouse_placenta")
    yield "legacy_st", lambda: bt.datasets.her2st("C3", data_dir=DATA / "her2st")
    yield "wsi", lambda: bt.io.wsi(DATA / "wsi" / "CMU-1-Small-Region.svs")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Visium SR3: missing hires image, duplicated genes
@pytest.mark.parametrize(("name", "read"), list(_readers()), ids=[n for n, _ in _readers()])
def test_readers_record_keys_and_map_to_um(name, read):
    sdata = read()
    info = sdata.attrs[K.ATTRS_KEY]
    for key in (K.ATTR_SAMPLE_ID, K.ATTR_IMAGE, K.ATTR_MPP, K.ATTR_IMAGE_MPP, K.ATTR_COORDINATE_SYSTEM, K.ATTR_VERSION):
        assert key in info, (name, key)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    assert cs in sdata.coordinate_systems
    assert "global" not in sdata.coordinate_systems
    image = sdata[info[K.ATTR_IMAGE]]
    level0 = image["scale0"]["image"] if hasattr(image, "keys") else image
    assert level0.coords["c"].values.tolist() == ["r", "g", "b"]
    # the coordinate system is in µm: one level-0 pixel of the image spans image_mpp µm
    matrix = get_transformation(level0, to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
    assert np.isclose(abs(matrix[0, 0]), info[K.ATTR_IMAGE_MPP])
    if K.ATTR_SPOTS in info:
        spots = sdata[info[K.ATTR_SPOTS]]
        t = get_transformation(spots, to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
        assert np.isclose(abs(t[0, 0]), info[K.ATTR_MPP])  # spot coordinates are full-resolution pixels
        table = sdata[info[K.ATTR_TABLE]]
        assert table.uns["spatialdata_attrs"]["region"] == info[K.ATTR_SPOTS]
        assert table.uns["spatialdata_attrs"]["instance_key"] == K.SPOT_ID_KEY
