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


@pytest.fixture(scope="module")
def client():
    """One in-process dask client for the small runs below (a LocalCluster of processes takes longer to start)."""
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        yield client


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "slides.csv", index_col=0)


def test_a_bad_store_at_a_slides_output_path_is_redone_or_reported(tmp_path, cmu_crop, client, bitro_log):
    """Only a readable store with cell predictions counts as done; our own bad outputs are replaced, others kept."""
    import zarr

    slides, out = tmp_path / "slides", tmp_path / "out"
    for name, (y, x) in BOXES.items():
        cmu_crop(name, y, x, 384, folder=slides)
    (out / "s1.zarr").mkdir(parents=True)  # an empty folder
    zarr.open_group(out / "s2.zarr", mode="w").attrs["bitro"] = {"sample_id": "s2"}  # a store without predictions
    (out / "s3.zarr").write_text("not a store")  # a file at the store's path: not ours to delete
    table = bt.tl.predict_slides(slides, out, segmentation="watershed", scheduler=client)
    assert list(table["status"]) == ["done", "done", "failed"]
    for sample in ("s1", "s2"):
        assert (
            bt.get.predictions(bt.io.read_zarr(out / f"{sample}.zarr"), level="cells").n_obs
            == table.loc[sample, "cells"]
            > 10
        )
    assert "empty folder" in bitro_log.text
    assert "s2.zarr holds no cell predictions" in bitro_log.text
    assert "store replaced" in bitro_log.text
    assert "s3.zarr is a file" in table.loc["s3", "error"]
    assert (out / "s3.zarr").read_text() == "not a store"


def test_an_unreadable_input_store_fails_alone_and_a_rerun_keeps_the_manifest(tmp_path, cmu_crop, client, bitro_log):
    """A broken store among the inputs is one failed slide; hidden files are not slides; reruns keep earlier rows."""
    slides, out = tmp_path / "slides", tmp_path / "out"
    cmu_crop("s1", *BOXES["s1"], 384, folder=slides)
    (slides / "bad.zarr").mkdir()  # e.g. a copy that was cut short
    (slides / "._s1.svs").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # a macOS AppleDouble file
    table = bt.tl.predict_slides(slides, out, segmentation="watershed", scheduler=client)
    assert table.loc["s1", "status"] == "done"
    assert table.loc["bad", "status"] == "failed"
    assert str(slides / "bad.zarr") in table.loc["bad", "error"]
    assert "not a zarr store" in table.loc["bad", "error"]
    assert set(table.index) == {"s1", "bad"}
    assert "1 hidden files skipped" in bitro_log.text
    first = _manifest(out)
    # a rerun of one slide: it is done before, with the values of the run that did it, and the other row stays
    again = bt.tl.predict_slides([slides / "s1.svs"], out, segmentation="watershed", scheduler=client)
    assert list(again.index) == ["s1"]
    assert again.loc["s1", "status"] == "done before"
    assert again.loc["s1", "cells"] == table.loc["s1", "cells"]
    manifest = _manifest(out)
    assert list(manifest.index) == ["s1", "bad"]
    assert manifest.loc["s1", "status"] == "done before"
    assert manifest.loc["s1", ["cells", "seconds"]].tolist() == first.loc["s1", ["cells", "seconds"]].tolist()
    assert manifest.loc["bad"].equals(first.loc["bad"])


def test_a_rerun_into_the_slides_folder_skips_its_own_stores(tmp_path, cmu_crop, client):
    """`out` = the slides' folder: the rerun takes OUT/s1.zarr as s1.svs's output, done before, not a new input."""
    slides = tmp_path / "slides"
    cmu_crop("s1", *BOXES["s1"], 384, folder=slides)
    model = Path(bt.models.__file__).parent / "default"  # a model folder: loaded once, sent to the workers
    table = bt.tl.predict_slides(slides, slides, model=model, segmentation="watershed", scheduler=client)
    assert table.loc["s1", "status"] == "done"
    assert table.loc["s1", "store"] == str(slides / "s1.zarr")
    again = bt.tl.predict_slides(slides, slides, model=model, segmentation="watershed", scheduler=client)
    assert list(again.index) == ["s1"]
    assert again.loc["s1", "status"] == "done before"
    assert again.loc["s1", "cells"] == table.loc["s1", "cells"] > 10


def test_bad_arguments_are_refused_before_any_slide_runs(tmp_path, monkeypatch):
    """A missing model, a bad mpp or segmentation, an `out` that is a file: refused up front, naming the argument."""
    from typer.testing import CliRunner

    from bitro.cli import app
    from bitro.tl import _slides

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(_slides._Cluster, "__enter__", no_cluster)
    slide = tmp_path / "s1.svs"
    slide.write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"`model`: .*nope"):
        bt.tl.predict_slides([slide], out, model=tmp_path / "nope")
    with pytest.raises(ValueError, match=r"`mpp` must be"):
        bt.tl.predict_slides([slide], out, mpp=0.0)
    with pytest.raises(ValueError, match=r"`segmentation`"):
        bt.tl.predict_slides([slide], out, segmentation="watershedd")
    assert not out.exists()
    out.write_text("")
    with pytest.raises(NotADirectoryError, match=r"`out` must be a folder"):
        bt.tl.predict_slides([slide], out)
    result = CliRunner().invoke(app, ["predict-slides", str(slide), "--out", str(out)])
    assert result.exit_code == 2
    assert "--out" in result.output
    assert "is a file" in result.output
    result = CliRunner().invoke(app, ["predict-slides", str(slide), "--out", str(tmp_path / "o2"), "--model", "nope"])
    assert result.exit_code == 1, result.output
    assert "`--model`" in result.output
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "._s1.svs").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no slide files .*1 hidden files skipped"):
        bt.tl.predict_slides(tmp_path / "hidden", tmp_path / "o3")
