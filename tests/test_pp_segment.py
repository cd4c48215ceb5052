"""``segment_cells``: watershed accuracy on the toy tissue, tiling / de-duplication, dask, bad input, real H&E."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import shapely

import bitro as bt
from bitro import _constants as K
from bitro.pp._segment import segment_cells
from bitro.pp._watershed import watershed_tile

DATA = Path(__file__).parent / "data"


def _matches(pred, true) -> int:
    """Number of one-to-one matches with IoU >= 0.5 (IoU > 0.5 pairs are unique, so no assignment is needed)."""
    pred, true = np.asarray(pred), np.asarray(true)
    tree = shapely.STRtree(true)
    p, t = tree.query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[p], true[t]))
    iou = inter / (shapely.area(pred[p]) + shapely.area(true[t]) - inter)
    ok = iou >= 0.5
    return min(len(set(p[ok])), len(set(t[ok])))


def _f1(pred, true) -> float:
    tp = _matches(pred, true)
    return 2 * tp / (len(pred) + len(true))


def _cells(sdata, key="watershed_boundaries"):
    return np.asarray(sdata[key].geometry.values)


@pytest.fixture(scope="module")
def toy_ws():
    """The toy section (25 spots, ~1000 nuclei) segmented untiled and with 256-px tiles."""
    sdata = bt.datasets.toy_st(n_spots=25, n_genes=10, seed=3)
    segment_cells(sdata, method="watershed", tile_size=2048)
    untiled = _cells(sdata)
    segment_cells(sdata, method="watershed", tile_size=256, n_jobs=2)
    return sdata, untiled, _cells(sdata)


def test_watershed_f1_on_toy(toy_ws):
    sdata, untiled, tiled = toy_ws
    true = np.asarray(sdata[sdata.attrs[K.ATTRS_KEY][K.ATTR_TRUE_CELLS]].geometry.values)
    assert _f1(untiled, true) >= 0.9
    assert _f1(tiled, true) >= 0.9
    table = sdata[K.CELLS_TABLE_KEY]
    assert table.n_obs == len(tiled)
    assert sdata.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES] == "watershed_boundaries"
    assert np.median(table.obs[K.AREA_UM2_KEY]) == pytest.approx(37, rel=0.3)  # true median ~37 µm²


def test_tiled_equals_untiled_without_duplicates(toy_ws):
    sdata, untiled, tiled = toy_ws
    assert abs(len(tiled) - len(untiled)) <= 0.01 * len(untiled)
    # no duplicates: no two cells overlap by more than half of the smaller one
    tree = shapely.STRtree(tiled)
    a, b = tree.query(tiled, predicate="intersects")
    a, b = a[a < b], b[a < b]
    inter = shapely.area(shapely.intersection(tiled[a], tiled[b]))
    assert not np.any(inter > 0.5 * np.minimum(shapely.area(tiled[a]), shapely.area(tiled[b])))
    # every true nucleus cut by a 256-px tile border is found exactly once
    true = np.asarray(sdata[sdata.attrs[K.ATTRS_KEY][K.ATTR_TRUE_CELLS]].geometry.values)
    bounds = shapely.bounds(true)
    cut = np.zeros(len(true), bool)
    for edge in range(256, 2048, 256):
        cut |= ((bounds[:, 0] < edge) & (bounds[:, 2] > edge)) | ((bounds[:, 1] < edge) & (bounds[:, 3] > edge))
    assert cut.sum() > 50
    hits = shapely.STRtree(tiled).query(shapely.centroid(true[cut]), predicate="within")[0]
    counts = np.bincount(hits, minlength=cut.sum())
    assert np.mean(counts == 1) >= 0.97
    assert counts.max() <= 1


def test_distributed_and_lazy_give_the_same_cells(toy_ws):
    distributed = pytest.importorskip("distributed")
    _, _, tiled = toy_ws
    lazy = bt.datasets.toy_st(n_spots=25, n_genes=10, seed=3, lazy=True)
    level0 = lazy[lazy.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]]["scale0"]["image"]
    assert not isinstance(level0.data, np.ndarray)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        with distributed.Client(cluster):
            segment_cells(lazy, method="watershed", tile_size=256)
    got = _cells(lazy)
    assert len(got) == len(tiled)
    assert _matches(got, tiled) == len(tiled)


def test_worker_processes_give_the_cells_of_one_process(toy_ws):
    """``n_jobs=2`` (the fixture: tiles in two worker processes) finds exactly the cells of a serial run."""
    from bitro.pp._segment import segment_tiled

    sdata, _, in_workers = toy_ws
    serial = segment_cells(sdata, method="watershed", tile_size=256, n_jobs=1, copy=True)
    assert shapely.equals_exact(_cells(serial), in_workers, tolerance=0).all()
    # an error inside a worker reaches the caller with its message
    image = sdata[sdata.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]]["scale0"]["image"].data
    bad = functools.partial(watershed_tile, mpp=0.5, no_such_option=1)
    with pytest.raises(TypeError, match="no_such_option"):
        segment_tiled(image, bad, tile_size=256, overlap=32, n_jobs=2)


def test_worker_processes_in_a_script_without_a_main_guard(tmp_path):
    """A plain script (no ``if __name__ == "__main__":``) runs once: the workers never re-run it."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    script.write_text(
        "import bitro as bt\n"
        "print('script top level ran', flush=True)\n"
        "sdata = bt.datasets.toy_st(n_spots=9, seed=0)\n"
        "bt.pp.segment_cells(sdata, method='watershed', tile_size=256, n_jobs=2)\n"
        "bt.pp.cell_features(sdata, n_jobs=2)\n"
        "print('cells', sdata['bitro_cells'].n_obs)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script top level ran") == 1
    assert int(done.stdout.split("cells")[-1]) > 100


def test_tile_workers_use_their_share_of_the_cores():
    """Each of ``n_jobs`` workers runs torch, BLAS and OpenMP on ``cores // n_jobs`` threads, not on all cores.

    The worker server imported torch and numpy before the pool's thread count was known.
    """
    import os

    import torch
    from threadpoolctl import threadpool_info

    from bitro.pp._windows import map_tiles

    n = max(1, (os.cpu_count() or 1) // 2)
    assert list(map_tiles(torch.get_num_threads, [()] * 2, n_jobs=2)) == [n, n]
    for pools in map_tiles(threadpool_info, [()] * 2, n_jobs=2):
        assert pools
        assert {p["num_threads"] for p in pools} == {n}, pools


def test_worker_processes_exit_when_their_parent_is_killed(tmp_path):
    """A SIGKILLed caller leaves no process behind: no worker, even one busy with a tile, nor their server."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil")
    script = tmp_path / "busy.py"
    script.write_text(
        "import time\nfrom bitro.pp._windows import map_tiles\nnext(map_tiles(time.sleep, [(60,)] * 4, n_jobs=2))\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            server = [c for c in psutil.Process(proc.pid).children() if "forkserver" in " ".join(c.cmdline())]
            workers = server[0].children() if server else []
        assert len(workers) == 2
        workers = list({*workers, *server, *psutil.Process(proc.pid).children()})  # and the resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert alive == []
    finally:
        proc.kill()
        for worker in workers:  # never leave one behind, even when the test fails
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_tile_segmenter_dispatch_for_cellpose(monkeypatch, toy_st):
    """The cellpose path tiles and de-duplicates whatever the segmenter returns (a fake one here)."""
    import sys
    import types

    calls = {}

    def cellpose_segmenter(model, *, mpp, diameter_um, **kwargs):
        calls.update(model=model, mpp=mpp, diameter_um=diameter_um, **kwargs)
        return lambda rgb: watershed_tile(rgb, mpp=mpp)

    monkeypatch.setitem(sys.modules, "bitro.pp._cellpose", types.SimpleNamespace(cellpose_segmenter=cellpose_segmenter))
    segment_cells(toy_st, method="cellpose", tile_size=512, model="nuclei", flow_threshold=0.3)
    assert calls == {"model": "nuclei", "mpp": 0.5, "diameter_um": None, "flow_threshold": 0.3}
    assert toy_st[K.CELLS_TABLE_KEY].n_obs > 900
    assert "cellpose_boundaries" in toy_st.shapes


def test_no_tissue_warns_writes_nothing_and_keeps_previous_cells(toy_st, bitro_log):
    from bitro.pp._cells import write_cells

    key = toy_st.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    write_cells(toy_st, toy_st[toy_st.attrs[K.ATTRS_KEY][K.ATTR_TRUE_CELLS]], image=key, method="watershed")
    n_before = toy_st[K.CELLS_TABLE_KEY].n_obs
    image = toy_st.images[key]
    for scale in image:
        node = image[scale]["image"]
        node.data = node.data * 0 + 245  # blank white slide
    with pytest.warns(UserWarning, match="No tissue.*existing cells layer 'watershed_boundaries' is kept"):
        segment_cells(toy_st, method="watershed", tile_size=512)
    # a step that finds nothing never deletes what was there
    assert toy_st[K.CELLS_TABLE_KEY].n_obs == n_before
    assert len(toy_st["watershed_boundaries"]) == n_before
    assert toy_st.attrs[K.ATTRS_KEY][K.ATTR_CELLS_TABLE] == K.CELLS_TABLE_KEY
    assert "9 tiles of level 0 (0.5 µm/px): 9 skipped" in bitro_log.text


def test_bad_input(toy_st):
    with pytest.raises(ValueError, match="watershed"):
        segment_cells(toy_st, method="otsu")
    with pytest.raises(ValueError, match="overlap"):
        segment_cells(toy_st, method="watershed", tile_size=128, overlap=128)
    with pytest.raises(ValueError, match="tile_size"):
        segment_cells(toy_st, method="watershed", tile_size=16)
    with pytest.raises(KeyError, match="image_key"):
        segment_cells(toy_st, method="watershed", image_key="nope")
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    key = toy_st.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    level0 = toy_st.images[key]["scale0"]["image"]
    gray = Image2DModel.parse(
        level0.data[:1], dims=("c", "y", "x"), transformations=get_transformation(level0, get_all=True)
    )
    toy_st.images["gray"] = gray
    with pytest.raises(ValueError, match="RGB"):
        segment_cells(toy_st, method="watershed", image_key="gray")
    assert isinstance(toy_st, sd.SpatialData)


def test_key_added_never_takes_another_elements_name(toy_st, tmp_path):
    import bitro as bt

    toy_st.write(tmp_path / "s.zarr")
    sdata = bt.io.read_zarr(tmp_path / "s.zarr")
    info = sdata.attrs[K.ATTRS_KEY]
    taken = {
        "table": "table element 'table'",  # another element type: spatialdata would refuse it after the store had it
        info[K.ATTR_IMAGE]: "image element",
        info[K.ATTR_SPOTS]: "attrs\\['bitro'\\]\\['spots_key'\\]",  # the spots: segmenting would replace them
        info[K.ATTR_TRUE_CELLS]: "true_cells_key",
        K.CELLS_TABLE_KEY: "the cells table itself",
        info[K.ATTR_SPOTS].upper(): "already the name",  # a case variant
        "": "not a valid SpatialData element name",
        "bad/name": "not a valid SpatialData element name",
        ".hidden": "a zarr store would hide the element",  # spatialdata's read_zarr skips it
    }
    for key, reason in taken.items():
        with pytest.raises(ValueError, match=f"`key_added`: .*{reason}"):
            segment_cells(sdata, method="watershed", key_added=key)
    again = bt.io.read_zarr(tmp_path / "s.zarr")  # the store was never touched
    assert len(again[info[K.ATTR_SPOTS]]) == len(toy_st[info[K.ATTR_SPOTS]])
    assert K.CELLS_TABLE_KEY not in again.tables
    segment_cells(sdata, method="watershed", key_added="nuclei")
    assert bt.io.read_zarr(tmp_path / "s.zarr").attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES] == "nuclei"


def test_a_new_segmentation_unrecords_what_the_old_cells_gave(toy_st):
    import bitro as bt

    segment_cells(toy_st, method="watershed")
    bt.tl.predict(toy_st, uncertainty=False)
    before = bt.get.predictions(toy_st, level="cells").n_obs
    segment_cells(toy_st, method="watershed", min_area_um2=30)  # fewer cells: ids now mean other nuclei
    n_cells = toy_st[K.CELLS_TABLE_KEY].n_obs
    assert n_cells < before
    info = toy_st.attrs[K.ATTRS_KEY]
    for attr in (K.ATTR_FEATURES, K.ATTR_SPOT_ASSIGNMENT, K.ATTR_GRAPH, K.ATTR_PRED_CELLS, K.ATTR_PRED_SPOTS):
        assert attr not in info
    with pytest.raises(KeyError, match="again after a new segmentation"):
        bt.get.predictions(toy_st, level="cells")
    with pytest.raises(ValueError, match=f"another segmentation \\({before} cells"):
        bt.get.predictions(toy_st, level="cells", key=f"{K.PRED_KEY}_cells")
    bt.tl.predict(toy_st, uncertainty=False)
    assert bt.get.predictions(toy_st, level="cells").n_obs == n_cells
    # bitro's own old layer (its predictions gone stale) may be segmented into again
    segment_cells(toy_st, method="import", path="watershed_boundaries", key_added="copied")
    segment_cells(toy_st, method="watershed")
    assert toy_st.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES] == "watershed_boundaries"
    # the same number of cells under the same name, but other cells: their old predictions are refused too
    bt.tl.predict(toy_st, uncertainty=False)
    segment_cells(toy_st, method="watershed")
    assert toy_st[K.CELLS_TABLE_KEY].n_obs == toy_st.tables[f"{K.PRED_KEY}_cells"].n_obs
    with pytest.raises(ValueError, match="another segmentation"):
        bt.get.predictions(toy_st, level="cells", key=f"{K.PRED_KEY}_cells")


def test_float_images_in_0_1_and_0_255_give_the_same_cells_and_features(toy_st):
    import copy

    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    import bitro as bt

    key = toy_st.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    level0 = toy_st.images[key]["scale0"]["image"]
    features = []
    for white in (1.0, 255.0):
        sdata = copy.deepcopy(toy_st)
        del sdata.images[key]
        sdata.images[key] = Image2DModel.parse(
            level0.data.astype("float32") * np.float32(white / 255), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
            transformations=get_transformation(level0, get_all=True),
        )  # fmt: skip
        segment_cells(sdata, method="watershed")
        bt.pp.cell_features(sdata)
        features.append(sdata[K.CELLS_TABLE_KEY].obsm[K.FEATURES_KEY])
    assert features[0].shape == features[1].shape
    np.testing.assert_allclose(features[0], features[1], rtol=1e-4, atol=1e-5)
    sdata.images[key] = Image2DModel.parse(
        level0.data.astype("float32") * 4, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        transformations=get_transformation(level0, get_all=True),
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"Image '{key}' holds floats up to .*in \\[0, 1\\] or \\[0, 255\\]"):
        segment_cells(sdata, method="watershed")


def test_tile_overlap_and_value_range_messages_say_what_to_change(toy_st):
    with pytest.raises(
        ValueError, match=r"the default `overlap` \(two nuclei: 1200 px\) must be smaller than `tile_size`"
    ):
        segment_cells(toy_st, method="watershed", diameter_um=300)
    with pytest.warns(UserWarning, match=r"`overlap` \(4 px\) is under one expected nucleus diameter \(16 px\)"):
        segment_cells(toy_st, method="watershed", tile_size=256, overlap=4)
    key = toy_st.attrs[K.ATTRS_KEY][K.ATTR_IMAGE]
    for scale in toy_st.images[key]:  # 8-bit values stored as 16-bit: read as nearly black
        node = toy_st.images[key][scale]["image"]
        node.data = node.data.astype(np.uint16)
    with pytest.warns(UserWarning, match="No tissue.*uint16 pixels reach only 2.., 8-bit values"):
        segment_cells(toy_st, method="watershed")


def test_watershed_tile_zero_nuclei():
    labels = watershed_tile(np.full((100, 120, 3), 230, np.uint8), mpp=0.5)
    assert labels.shape == (100, 120)
    assert labels.dtype == np.int32
    assert labels.max() == 0


def test_watershed_on_real_he():
    sdata = bt.io.wsi(DATA / "wsi" / "CMU-1-Small-Region.svs")
    # one process: this checks the nuclei (worker processes on real H&E: tests/test_cli.py, step by step;
    # two spawned workers cost this test 6 s more CPU than they save)
    segment_cells(sdata, method="watershed", n_jobs=1)
    area = sdata[K.CELLS_TABLE_KEY].obs[K.AREA_UM2_KEY]
    # 2220 x 2967 px at 0.499 µm/px, about half of it tissue
    assert 1000 < len(area) < 8000
    assert 15 <= np.median(area) <= 80


def test_watershed_on_a_her2st_crop(tmp_path):
    """Breast cancer H&E at 0.69 µm/px (legacy ST, JPEG): a plausible nucleus count and size distribution."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the 9270 x 9936 px section
    with Image.open(DATA / "her2st" / "ST-imgs" / "C3_5714_HE_BT_D1.jpg") as im:
        # 1 mm x 1 mm in the middle of the spot array, where the tissue is
        im.crop((4000, 4500, 5450, 5950)).save(tmp_path / "crop.png")
    sdata = bt.io.wsi(tmp_path / "crop.png", mpp=0.69)
    segment_cells(sdata, method="watershed", n_jobs=1)
    area = sdata[K.CELLS_TABLE_KEY].obs[K.AREA_UM2_KEY]
    # about 1 mm² of tumour and stroma: a few thousand nuclei of 20-60 µm² median
    assert 1000 < len(area) < 8000
    assert 15 <= np.median(area) <= 80
    assert np.quantile(area, 0.9) < 200
