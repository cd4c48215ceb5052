"""The bundled default model (trained on HER2ST) and the real-data command behind ``make predict``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HER2ST = Path(__file__).parent / "data" / "her2st"
CROP_UM = (2000.0, 1800.0, 3200.0, 3000.0)  # 1.2 mm square of C3: 35 spots, ~10 000 nuclei


def test_bundled_model_is_small_attributed_and_safe():
    import bitro as bt

    path = bt.models.default_model_path()
    files = sorted(p.name for p in path.iterdir())
    assert files == ["ATTRIBUTION.txt", "config.json", "model.safetensors"]
    assert sum((path / f).stat().st_size for f in files) < 5e6
    assert "CC BY 4.0" in (path / "ATTRIBUTION.txt").read_text()
    config = json.loads((path / "config.json").read_text())
    assert config["features"]["method"] == "morphology"
    assert config["preprocessing"]["segmentation"]["method"] == "unet"
    model = bt.models.default_model()
    assert model.head == "spot"
    assert len(model.genes) == 50
    assert set(model.config["training"]["samples"]) | {"C5"} == {"C2", "C3", "C4", "C5"}


def test_bundled_model_predicts_on_a_her2st_crop(her2st_crop):
    import bitro as bt

    sdata = her2st_crop(CROP_UM)
    # no model: the bundled one; segmentation etc. run with its settings (uncertainty: tests/test_predictions.py)
    bt.tl.predict(sdata, uncertainty=False)
    table, cells = sdata["table"], sdata["bitro_cells"]
    pred = bt.get.predictions(sdata).X
    assert pred.shape == (table.n_obs, 50)
    assert table.n_obs == 35
    assert np.isfinite(pred).all()
    assert (pred.std(axis=0) > 0).all()
    assert bt.get.predictions(sdata, level="cells").shape == (cells.n_obs, 50)
    assert cells.n_obs > 1000
    scores = bt.tl.evaluate(sdata)
    # C3 is one of the training sections: this checks the pipeline end to end, not held-out accuracy
    assert scores.loc["C3", "pearson_mean"] > 0.2


def test_predict_her2st_command(tmp_path, her2st_crop_files):
    import pandas as pd
    from typer.testing import CliRunner

    from bitro.cli import app

    # a 0.76 mm box of C3 written as the her2st repository lays it out (the command's plumbing, not accuracy)
    data = her2st_crop_files[0].parents[1]
    result = CliRunner().invoke(app, ["predict-her2st", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout is the JSON summary alone (the note on C3 goes to stderr)
    assert "note: the model was trained on C3" in result.stderr
    n_spots = len(pd.read_csv(her2st_crop_files[1], sep="\t"))
    assert summary["spots"] == n_spots
    assert summary["genes"] == 50
    assert (tmp_path / "C3.zarr").is_dir()
    assert (tmp_path / "C3_predicted_vs_observed.png").stat().st_size > 10_000
    import spatialdata as sd

    back = sd.read_zarr(tmp_path / "C3.zarr")
    assert back["bitro_pred_spots"].shape == (n_spots, 50)
