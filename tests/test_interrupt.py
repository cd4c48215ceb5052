"""Ctrl-C during training reaches the caller with the best weights so far; a checkpoint folder resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

FIT = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import bitro as bt
from bitro.tl._preprocess import ensure_preprocessed, preprocessing_settings
sections = [bt.datasets.toy_st(n_spots=16, n_genes=20, seed=s, sample_id=f"s{s}") for s in range(2)]
steps = preprocessing_settings({"segmentation": {"method": "watershed"}, "features": {"method": "morphology"}})
for s in sections:
    ensure_preprocessed(s, steps, kind="spot")
print("ready", flush=True)
try:
    bt.tl.fit(sections, n_genes=10, max_epochs=500, patience=500, val=["s1"], progress=False, checkpoint_dir=sys.argv[1])
except KeyboardInterrupt as err:
    model = err.model
    print(json.dumps({"type": type(err).__name__, "epochs": err.epochs, "best_epoch": model.best_epoch,
                      "history": len(model.history), "interrupted": model.config["training"].get("interrupted"),
                      "message": str(err)}), flush=True)
    model.save(sys.argv[2])
    sys.exit(0)
print("not interrupted")
sys.exit(3)
"""


def test_ctrl_c_in_fit_reaches_the_caller_with_the_best_weights(tmp_path):
    from bitro.models import BiTro

    ckpt, out = tmp_path / "ckpt", tmp_path / "model"
    env = dict(os.environ, BITRO_VERBOSITY="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FIT), str(ckpt), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (ckpt / "last.ckpt").exists():  # at least one whole epoch
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"training ended or stalled before its first epoch: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]  # the caller's `except KeyboardInterrupt` ran
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["type"] == "TrainingInterrupted"
    assert report["epochs"] >= 1
    assert report["history"] >= 1
    assert report["interrupted"] is True
    assert report["best_epoch"] is not None
    assert "checkpoint_dir" in report["message"]
    model = BiTro.load(out)  # the best weights so far, saved by the caller
    assert model.best_epoch == report["best_epoch"]

    # the same call with the same folder resumes: the earlier epochs are kept, not trained again
    import bitro as bt
    from bitro.tl._preprocess import ensure_preprocessed, preprocessing_settings

    sections = [bt.datasets.toy_st(n_spots=16, n_genes=20, seed=s, sample_id=f"s{s}") for s in range(2)]
    steps = preprocessing_settings({"segmentation": {"method": "watershed"}, "features": {"method": "morphology"}})
    for s in sections:
        ensure_preprocessed(s, steps, kind="spot")
    done = report["epochs"]
    resumed = bt.tl.fit(
        sections, n_genes=10, max_epochs=done + 2, patience=500, val=["s1"], progress=False, checkpoint_dir=ckpt
    )
    assert len(resumed.history) == done + 2
    assert resumed.history["train_loss"].iloc[:done].tolist() == pytest.approx(
        model.history["train_loss"].iloc[:done].tolist()
    )

    # another run in the same folder is refused instead of mixing states
    with pytest.raises(ValueError, match="holds a run with other data or settings"):
        bt.tl.fit(sections, n_genes=10, max_epochs=3, val=["s1"], lr=1e-3, progress=False, checkpoint_dir=ckpt)
