"""Kill tests: a process SIGKILLed while it writes a store, a model or an adapter loses nothing.

Each case runs a real bitro step in a subprocess that kills itself (SIGKILL, no clean-up runs) at a
named point of the write (``bitro._store._checkpoint``) or after a delay; afterwards the previous
content must read back complete and consistent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from bitro import _constants as K

KILLER = """
import os, signal, sys, warnings
warnings.filterwarnings("ignore")
from bitro import _store
STAGE = {stage!r}
def _checkpoint(stage):
    if stage == STAGE:
        os.kill(os.getpid(), signal.SIGKILL)
_store._checkpoint = _checkpoint
"""


def _run(script: str, stage: str | None = None, *, timeout: float = 120) -> subprocess.CompletedProcess:
    code = KILLER.format(stage=stage) + textwrap.dedent(script)
    env = dict(os.environ, BITRO_VERBOSITY="0", MPLBACKEND="agg")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """A backed toy section with a cells layer (the true nuclei), written once."""
    import bitro as bt
    from bitro.pp._cells import write_cells

    sdata = bt.datasets.toy_st(n_spots=9, n_genes=20, seed=1)
    info = sdata.attrs[K.ATTRS_KEY]
    write_cells(sdata, sdata[info[K.ATTR_TRUE_CELLS]], image=info[K.ATTR_IMAGE], method="watershed")
    path = tmp_path_factory.mktemp("kill") / "toy.zarr"
    sdata.write(path)
    return path


@pytest.fixture
def store(store_template, tmp_path):
    import shutil

    path = tmp_path / "toy.zarr"
    shutil.copytree(store_template, path)
    return path


def _state(path) -> dict:
    """What a reader sees: the cells layer's sizes, its columns and the keys recorded in attrs."""
    import spatialdata as sd

    import bitro as bt

    sdata = bt.io.read_zarr(path)
    info = sdata.attrs[K.ATTRS_KEY]
    cells = sdata[info[K.ATTR_CELLS_TABLE]]
    shapes = sdata[info[K.ATTR_CELLS_SHAPES]]
    assert set(cells.obs[K.CELL_ID_KEY]) == set(shapes.index)  # table and boundaries belong together
    again = sd.read_zarr(path)  # after recovery, spatialdata alone reads the same store
    assert again[info[K.ATTR_CELLS_TABLE]].n_obs == cells.n_obs
    features = info.get(K.ATTR_FEATURES)
    if features is not None:
        assert features in cells.obsm  # attrs never name something that is not there
    return {
        "n_cells": cells.n_obs,
        "shapes": info[K.ATTR_CELLS_SHAPES],
        "obsm": sorted(cells.obsm),
        "features_key": features,
        "journal": (path / ".bitro-journal.json").exists(),
        "staging": (path / ".bitro-staging").exists(),
    }


FEATURES = """
import bitro as bt
sdata = bt.io.read_zarr({path!r})
bt.pp.cell_features(sdata)
print("done")
"""


@pytest.mark.parametrize("stage", ["staged", "journal", "swapped:tables/bitro_cells", "attrs"])
def test_killed_feature_write_leaves_the_previous_table(store, stage):
    before = _state(store)
    result = _run(FEATURES.format(path=str(store)), stage)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    after = _state(store)
    assert after == before  # no features, same cells; the journal was undone and staging removed
    assert not after["journal"]
    assert not after["staging"]


def test_write_that_finishes_replaces_and_cleans_up(store):
    result = _run(FEATURES.format(path=str(store)), None)
    assert result.returncode == 0, result.stderr[-2000:]
    after = _state(store)
    assert after["obsm"] == [K.FEATURES_KEY]
    assert after["features_key"] == K.FEATURES_KEY
    assert not after["journal"]
    assert not after["staging"]


SEGMENT = """
import bitro as bt
sdata = bt.io.read_zarr({path!r})
bt.pp.segment_cells(sdata, method="watershed", tile_size=256, n_jobs=1)
print("done")
"""


@pytest.mark.parametrize("stage", ["swapped:shapes/watershed_boundaries", "swapped:tables/bitro_cells"])
def test_killed_between_two_elements_keeps_them_together(store, stage):
    """A segmentation replaces boundaries and table: killed between the two swaps, both old ones come back."""
    before = _state(store)
    result = _run(SEGMENT.format(path=str(store)), stage)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert _state(store) == before


def test_killed_at_random_times_old_or_new_never_half(store):
    """SIGKILL after a delay, wherever the write is: the store reads as before or as after, never half."""
    before = _state(store)
    code = KILLER.format(stage=None) + textwrap.dedent(SEGMENT.format(path=str(store)))
    env = dict(os.environ, BITRO_VERBOSITY="0")
    for delay in (4.5, 7.0):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        after = _state(store)  # asserts that table, boundaries and attrs belong together
        assert after["n_cells"] > 0
        assert not after["journal"]
        assert not after["staging"]
        assert after["shapes"] == before["shapes"]


MODEL = """
import numpy as np, torch
from bitro.models import BiTro
model = BiTro.load({path!r})
with torch.no_grad():
    for p in model.module.parameters():
        p.add_(1.0)
model.config["genes"]["spot"] = [g + "_new" for g in model.config["genes"]["spot"]]
model.save({path!r}, overwrite=True)
print("done")
"""


@pytest.fixture(scope="module")
def trained(_toy_sections):
    import bitro as bt

    return bt.tl.fit(_toy_sections[:2], n_genes=12, max_epochs=2, val=None, progress=False, seed=0)


@pytest.mark.parametrize("stage", ["folder-written", "folder-swapped"])
def test_killed_model_save_keeps_a_whole_model(trained, tmp_path, stage):
    from bitro.models import BiTro

    path = tmp_path / "model"
    trained.save(path)
    result = _run(MODEL.format(path=str(path)), stage)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    loaded = BiTro.load(path)  # never new weights under old gene names, or the reverse
    new = stage == "folder-swapped"
    assert loaded.genes == [g + "_new" if new else g for g in trained.genes]
    w_old = next(trained.module.parameters()).detach()
    w = next(loaded.module.parameters()).detach()
    np.testing.assert_allclose(w.numpy(), (w_old + (1.0 if new else 0.0)).numpy(), rtol=1e-6)
    # the killed writer's temporary folder is removed by the next write; live or other machines' writers' stay
    import os
    import socket

    def left():
        return sorted(p.name for p in tmp_path.iterdir() if ".bitro-tmp-" in p.name)

    assert len(left()) == 1
    live = tmp_path / f".model.bitro-tmp-0000~{os.getpid()}@{socket.gethostname()}"
    elsewhere = tmp_path / ".model.bitro-tmp-0001~1@another-machine"
    live.mkdir()
    elsewhere.mkdir()
    loaded.save(path, overwrite=True)
    assert left() == sorted([live.name, elsewhere.name])


ADAPTER = """
import torch
from bitro.models import BiTro
model = BiTro.load({base!r}, adapter={adapter!r})
with torch.no_grad():
    for name, p in model.module.named_parameters():
        if ".lora_" in name:
            p.add_(1.0)
model.save_adapter({adapter!r}, overwrite=True)
print("done")
"""


def test_killed_adapter_save_keeps_the_previous_adapter(trained, toy_sections, tmp_path):
    import bitro as bt
    from bitro.models import BiTro

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    trained.save(base)
    lora = bt.tl.transfer(toy_sections[2:3], trained, mode="lora", max_epochs=1, val=None, progress=False)
    lora.save_adapter(adapter)
    expected = json.loads((adapter / "bitro_adapter.json").read_text())
    result = _run(ADAPTER.format(base=str(base), adapter=str(adapter)), "folder-written")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert json.loads((adapter / "bitro_adapter.json").read_text()) == expected
    reloaded = BiTro.load(base, adapter=adapter)
    a, b = dict(lora.module.named_parameters()), dict(reloaded.module.named_parameters())
    for name in a:
        if ".lora_" in name:
            np.testing.assert_array_equal(a[name].detach().numpy(), b[name].detach().numpy())
