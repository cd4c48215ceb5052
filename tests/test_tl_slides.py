"""predict_slides: many slides on a dask LocalCluster; a corrupt slide is isolated; a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bitro as bt

BOXES = {"s1": (512, 1024), "s2": (1024, 1024), "s3": (1536, 1024)}  # tissue-rich 640 px crops (y, x) of CMU-1


def _slides(folder: Path, cmu_crop) -> Path:
    """Three small Aperio slides cut from CMU-1 (0.499 µm/px) and one corrupt file."""
    for name, (y, x) in BOXES.items():
        cmu_crop(name, y, x, 640, folder=folder)
    (folder / "broken.svs").write_bytes(b"II*\x00" + os.urandom(4000))  # a TIFF header, then noise
    return folder


def test_a_killed_run_resumes_and_a_corrupt_slide_is_isolated(tmp_path, cmu_crop):
    slides, out = _slides(tmp_path / "slides", cmu_crop), tmp_path / "out"
    # 1. the CLI on one worker, killed (the whole process group, like a lost node) once a slide is done
    cmd = [sys.executable, "-m", "bitro", "predict-slides", str(slides), "--out", str(out)]
    cmd += ["--workers", "1", "--segmentation", "watershed"]
    log = tmp_path / "cli.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=sink, start_new_session=True)
    manifest = out / "slides.csv"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and (pd.read_csv(manifest, index_col=0)["status"] == "done").any():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no slide finished: {log.read_text()[-2000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = pd.read_csv(manifest, index_col=0)
    done = list(before.index[before["status"] == "done"])
    assert len(done) < len(BOXES)  # killed before the end
    stamps = {s: (out / f"{s}.zarr" / "zarr.json").stat().st_mtime_ns for s in done}
    for sample in set(BOXES) - set(done):  # nothing half-written: a store exists only when its slide finished
        assert not (out / f"{sample}.zarr").exists()

    # 2. the same call from Python on two worker processes: finished slides are skipped, the rest done,
    #    the corrupt file recorded with its error while the others go on
    table = bt.tl.predict_slides(slides, out, segmentation="watershed", n_workers=2)
    assert set(table.index) == {*BOXES, "broken"}
    for sample in done:
        assert table.loc[sample, "status"] == "done before"
        assert (out / f"{sample}.zarr" / "zarr.json").stat().st_mtime_ns == stamps[sample]
    for sample in set(BOXES) - set(done):
        assert table.loc[sample, "status"] == "done"
        assert table.loc[sample, "cells"] > 50
    assert table.loc["broken", "status"] == "failed"
    assert "broken.svs" in table.loc["broken", "error"]
    assert not (out / "broken.zarr").exists()
    pd.testing.assert_frame_equal(
        pd.read_csv(manifest, index_col=0)[["status"]], table[["status"]].astype(str), check_names=False
    )
    for sample in BOXES:  # every finished store holds predictions for all of its cells
        sdata = bt.io.read_zarr(out / f"{sample}.zarr")
        cells = bt.get.predictions(sdata, level="cells")
        assert cells.n_obs > 50
        assert np.isfinite(cells.X).all()


def test_slides_that_would_share_a_store_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "x.svs").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x\.zarr"):
        bt.tl.predict_slides([tmp_path / "a" / "x.svs", tmp_path / "b" / "x.svs"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="slides.*no slide files"):
        bt.tl.predict_slides(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(TypeError, match="scheduler"):
        bt.tl.predict_slides([tmp_path / "a" / "x.svs"], tmp_path / "out", scheduler=3)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_stores_are_predicted_in_place_on_a_given_client(tmp_path, cmu_crop):
    """Stores (as `bitro read` writes them) are predicted where they are; a caller's Client is used and kept."""
    from distributed import Client

    from bitro._store import write_store

    folder = tmp_path / "stores"
    for name, (y, x) in list(BOXES.items())[:2]:
        write_store(bt.io.wsi(cmu_crop(name, y, x, 512)), folder / f"{name}.zarr")
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        table = bt.tl.predict_slides(folder, tmp_path / "out", segmentation="watershed", scheduler=client)
        assert list(table["status"]) == ["done", "done"]
        assert list(table["store"]) == [str(folder / "s1.zarr"), str(folder / "s2.zarr")]
        for sample in ("s1", "s2"):
            cells = bt.get.predictions(bt.io.read_zarr(folder / f"{sample}.zarr"), level="cells")
            assert cells.n_obs == table.loc[sample, "cells"] > 20
        again = bt.tl.predict_slides(folder, tmp_path / "out", scheduler=client)
        assert list(again["status"]) == ["done before", "done before"]
        assert client.status == "running"  # the caller's client is not closed
    assert not list((tmp_path / "out").glob("*.zarr"))  # stores given as input are their own output
