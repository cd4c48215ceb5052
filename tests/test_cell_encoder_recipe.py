"""The cell-encoder recipe (scripts/train_cell_encoder.py) runs, and the bundled encoder it made loads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
BUNDLED = ROOT / "src" / "bitro" / "pp" / "cell_encoder"


@pytest.fixture(scope="module")
def recipe():
    """The recipe script as a module (registered while the tests run: its dataclass needs that)."""
    name = "_bitro_train_cell_encoder"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "train_cell_encoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def _run(recipe, out: Path, *extra: str) -> None:
    import torch

    threads = torch.get_num_threads()  # the recipe sets torch's threads; keep the session's
    recipe.main(["--quick", "--out", str(out), "--nuclei", str(DATA / "nuclei"), "--threads", str(threads), *extra])


def _features(recipe, folder: Path) -> tuple[np.ndarray, dict]:
    """Features of nucleus-centred crops of a held-out TNBC tile, by the encoder in ``folder``."""
    import torch

    from bitro.pp._encoder import load_encoder
    from bitro.pp._unet_train import load_tiles

    model, config = load_encoder(folder)
    tile = load_tiles(DATA / "nuclei", mpp=0.25)[0]
    centroids = recipe.label_cells(tile.labels)[0][:20]
    size = config["input_size"]
    crops = recipe.to_tensor(recipe.cell_patches(tile.rgb, tile.mpp, centroids, mpp=config["mpp"], size=size))
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        values = model((crops - mean) / std).numpy()
    return values, config


def test_quick_recipe_writes_a_loadable_encoder(recipe, tmp_path):
    out = tmp_path / "enc"
    _run(recipe, out, "--wsi", str(DATA / "wsi" / "CMU-1-Small-Region.svs"))
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "ATTRIBUTION.txt"}
    values, config = _features(recipe, out)
    assert values.shape == (20, 64)
    assert np.isfinite(values).all()
    assert config["architecture"] == "small_cnn"
    assert config["input_size"] == 32
    assert config["mpp"] * config["input_size"] == pytest.approx(config["crop_um"])
    training = config["training"]
    assert set(training["sources"]) == {"nuclei", "CMU-1-Small-Region"}
    assert np.isfinite([row["loss"] for row in training["history"]]).all()
    assert training["history"][-1]["iteration"] == training["iterations"]


def test_quick_recipe_is_reproducible(recipe, tmp_path, training_noise):
    from safetensors.numpy import load_file

    for name in ("a", "b"):
        _run(recipe, tmp_path / name, "--wsi", "--seed", "3")  # labelled tiles only: fast
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("a", "b")]
    assert configs[0]["mean"] == configs[1]["mean"]


def test_bundled_encoder_loads(recipe):
    values, config = _features(recipe, BUNDLED)
    assert values.shape == (20, config["args"]["out_dim"])
    assert np.isfinite(values).all()
    assert config["mpp"] == pytest.approx(0.75)
    assert config["crop_um"] == pytest.approx(24.0)
    assert (BUNDLED / "model.safetensors").stat().st_size < 2 * 1024**2
    assert "--quick" not in config["training"]["recipe"]
    attribution = (BUNDLED / "ATTRIBUTION.txt").read_text()
    for text in ("Naylor", "CC BY 4.0", "CC0", "TCGA"):
        assert text in attribution
