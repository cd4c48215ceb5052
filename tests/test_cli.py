"""The pipeline CLI on real files: read -> segment -> features -> predict -> evaluate, `run`, one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bitro.cli import app

DATA = Path(__file__).parent / "data"
HER2ST = DATA / "her2st"
runner = CliRunner()


def _ok(args: list[str]) -> dict:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_run_on_a_whole_slide_image(tmp_path, cmu_crop):
    # a 0.5 mm crop of CMU-1 as an Aperio slide (the docs' own-data tutorial runs the whole 1.1 x 1.5 mm file)
    slide = cmu_crop("cmu", 1024, 1024, 1000, folder=tmp_path / "in")
    summary = _ok(["run", "wsi", slide, "--out", tmp_path, "--sample-id", "cmu1"])
    assert summary["cells"] > 500
    assert summary["predicted_bags"] > 5  # pseudo-spots: the default model predicts spots
    assert Path(summary["figure"]).stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["store"] == str(tmp_path / "cmu1.zarr")
    import bitro as bt

    sdata = bt.io.read_zarr(tmp_path / "cmu1.zarr")
    cells = bt.get.predictions(sdata, level="cells")
    assert cells.n_obs == summary["cells"]


def test_run_on_a_visium_folder_without_a_full_resolution_image(tmp_path):
    # the Visium folders in tests/data hold only the lowres PNG (23 µm/px here): no nucleus can be seen,
    # and `run` says so in one line instead of predicting from blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the folder has no hires image and 11 duplicated genes
        out = runner.invoke(app, ["run", "visium", str(DATA / "visium" / "sr3_mouse_placenta"), "--out", str(tmp_path)])
    assert out.exit_code == 1
    assert "23.4 µm/px, too coarse to see nuclei" in out.output
    assert out.output.count("\n") == 1
    assert not list(tmp_path.glob("*.png"))  # no figure of nothing
    assert not list(tmp_path.glob("*.zarr"))  # nor the store it read: the fixed command runs again


def test_step_by_step_on_a_her2st_store(tmp_path, her2st_crop_files):
    store = tmp_path / "C3.zarr"
    read = _ok(["read", "legacy-st", *her2st_crop_files, "--sample-id", "C3", "--out", store])
    assert read["mpp"] == pytest.approx(0.69, abs=0.01)
    _ok(["segment", store, "--method", "watershed", "--n-jobs", "2"])
    _ok(["features", store, "--n-jobs", "2"])
    predicted = _ok(["predict", store, "--no-uncertainty"])
    n_spots = len(pd.read_csv(her2st_crop_files[1], sep="\t"))
    assert 8 <= n_spots <= 25
    assert predicted["predicted_bags"] == n_spots
    scores = json.loads(runner.invoke(app, ["evaluate", str(store), "--no-spatial"]).stdout)
    assert scores["C3"]["n_obs"] == n_spots
    # a second write to the store replaces elements crash-safely; the store still reads
    _ok(["predict", store, "--no-uncertainty"])
    # deep features with the bundled offline encoder, written into the store
    _ok(["features", store, "--method", "morphology+encoder", "--mode", "tile"])
    import bitro as bt

    cells = bt.io.read_zarr(store)["bitro_cells"]
    assert cells.uns["bitro_features"]["method"] == "morphology+encoder"
    assert cells.obsm["bitro_features"].shape[1] > 21


def test_errors_are_one_line_with_exit_codes(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path)])  # a folder that is not a store
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: `path`:")
    result = runner.invoke(app, ["read", "legacy-st", str(HER2ST / "SOURCE.txt"), "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2  # a usage error: typer's message
    result = runner.invoke(app, ["segment"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["segment", str(tmp_path), "--method", "watershed", "--tta", "8"])
    assert result.exit_code == 2
    assert "--tta" in result.stderr


def _error(args: list) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    return result.stderr


def test_errors_name_the_flags_and_commands_a_user_types(tmp_path, cmu_crop):
    import bitro as bt

    slide = cmu_crop("small", 0, 0, 256)
    store = tmp_path / "small.zarr"
    _ok(["read", "wsi", slide, "--out", store])
    before = sorted(p.name for p in store.rglob("*"))
    # an existing store is refused before the input is read, in flags; the store stays as it was
    message = _error(["read", "wsi", slide, "--out", store])
    assert "pass --overwrite" in message
    assert "overwrite=True" not in message
    assert sorted(p.name for p in store.rglob("*")) == before
    message = _error(["features", store])  # no cells yet: the command to run, not the Python function
    assert "run `bitro segment` first" in message
    assert "bt.pp" not in message
    message = _error(["predict", store, "--model", tmp_path / "none"])
    assert message.startswith("error: `--model`:")
    assert "not a saved BiTro model" in message
    model = bt.models.default_model_path()
    message = _error(["predict", store, "--model", model, "--adapter", tmp_path / "none"])
    assert message.startswith("error: `--adapter`:")
    assert "not a saved bitro adapter" in message
    message = _error(["evaluate", store, "--no-spatial"])  # a KeyError's text, without its repr's quotes
    assert message.startswith("error: small: no table")
    assert '"' not in message


@pytest.mark.filterwarnings("ignore:.*duplicated gene names made unique:UserWarning")  # CD99 _PAR_Y
def test_read_a_bulk_cohort_into_one_store_per_slide(tmp_path):
    import anndata as ad

    import bitro as bt

    profile = bt.io.bulk(DATA / "bulk" / "gdc-rnaseq-tool_test_set_1.final.tsv.gz")
    expression = profile.to_df().T.rename(columns={profile.obs_names[0]: "TCGA-CR-7395-01A"})
    expression["TCGA-ZZ-0001-01A"] = expression["TCGA-CR-7395-01A"]  # a sample without a slide
    expression.to_csv(tmp_path / "counts.csv")
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "TCGA-CR-7395-01A-01-TS1.svs").symlink_to(DATA / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs")
    out = tmp_path / "cohort"
    summary = _ok(["read", "cohort", tmp_path / "counts.csv", slides, "--mpp", "0.25", "--out", out])
    assert summary["stores"] == [str(out / "TCGA-CR-7395-01A.zarr")]
    assert summary["samples"] == 1
    cohort = ad.read_h5ad(out / "cohort.h5ad")
    assert list(cohort.obs_names) == ["TCGA-CR-7395-01A"]
    sdata = bt.io.read_zarr(out / "TCGA-CR-7395-01A.zarr")
    assert sdata.tables[sdata.attrs["bitro"]["table_key"]].n_vars == profile.n_vars


def test_python_dash_m_bitro_runs_the_cli():
    import subprocess
    import sys

    import bitro as bt

    out = subprocess.run([sys.executable, "-m", "bitro", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == bt.__version__


def test_run_on_a_spaceranger_folder_with_its_full_resolution_image(tmp_path, her2st_as_spaceranger):
    outs, fullres, mpp = her2st_as_spaceranger
    out = tmp_path / "run"
    summary = _ok(["run", "visium", outs, "--fullres-image", fullres, "--mpp", f"{mpp:.4f}", "--sample-id", "C3",
                   "--segmentation", "watershed", "--out", out])  # fmt: skip
    assert summary["cells"] > 500
    assert summary["predicted_bags"] > 5
    assert summary["mpp"] == pytest.approx(mpp, rel=1e-3)  # the full-resolution image's pixels
    assert summary["pearson_mean"] is not None  # scored against the folder's counts
    assert Path(summary["figure"]).stat().st_size > 10_000
    import bitro as bt

    sdata = bt.io.read_zarr(out / "C3.zarr")
    assert bt.get.predictions(sdata).n_obs == summary["predicted_bags"]
    wrong = runner.invoke(
        app, ["read", "wsi", str(fullres), "--fullres-image", str(fullres), "--out", str(tmp_path / "x")]
    )
    assert wrong.exit_code == 2
    assert "--fullres-image is for visium" in wrong.output


def test_fit_on_slide_stores_saves_a_bulk_model(tmp_path, toy_slides):
    import bitro as bt

    stores = []
    for s in toy_slides[:3]:
        stores.append(tmp_path / f"{s.attrs['bitro']['sample_id']}.zarr")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s.write(stores[-1])
    # the folder of the stores stands for them (as `bitro read cohort` writes them)
    args = ["fit", tmp_path, "--target", "bulk", "--n-genes", "10", "--max-epochs", "2", "--out", tmp_path / "model"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)  # the JSON alone: the progress bar went to stderr
    assert summary["genes"] == 10
    # an existing --out is refused before training, not after (the trained model was lost)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1
    assert "already exists; pass --overwrite" in result.stderr
    assert "Epoch" not in result.output + result.stderr
    (tmp_path / "model" / "notes.txt").write_text("mine")  # --overwrite would delete it: refused before training too
    result = runner.invoke(app, [*map(str, args), "--overwrite"])
    assert result.exit_code == 1
    assert "holds files this command does not write (['notes.txt'])" in result.stderr
    assert "Epoch" not in result.output + result.stderr
    (tmp_path / "model" / "notes.txt").unlink()
    model = bt.models.BiTro.load(tmp_path / "model")
    assert model.head == "bulk"
    assert len(model.config["training"]["samples"]) + len(model.config["training"]["validation"]) == 3
    # and a LoRA adapter of it to the same stores, saved on its own
    args = ["transfer", tmp_path, "--model", tmp_path / "model", "--target", "bulk", "--max-epochs", "1"]
    summary = _ok([*args, "--out", tmp_path / "adapter"])
    assert summary["mode"] == "lora"
    assert summary["genes"] == 10
    base = bt.models.BiTro.load(tmp_path / "model")
    assert base.load_adapter(tmp_path / "adapter") in base.adapters
    # the adapter predicts from the command line, on top of its model
    args = ["predict", stores[0], "--model", tmp_path / "model", "--adapter", tmp_path / "adapter", "--no-uncertainty"]
    assert _ok(args)["predicted_bags"] == 1


def test_ctrl_c_in_bitro_fit_saves_the_best_weights_so_far(tmp_path, monkeypatch):
    import bitro as bt

    def interrupted(*args, **kwargs):  # what bt.tl.fit raises on Ctrl-C, with the best model so far
        err = bt.models.TrainingInterrupted("interrupted", epochs=3)
        err.model = bt.models.default_model()
        raise err

    monkeypatch.setattr(bt.tl, "fit", interrupted)
    result = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "model")])
    assert result.exit_code == 130
    assert "interrupted after 3 epochs: the best weights so far are saved in" in result.stderr
    assert json.loads(result.stdout)["interrupted"] is True
    assert bt.models.BiTro.load(tmp_path / "model").genes == bt.models.default_model().genes
