"""Reliability: bad input gets a clear error that names the argument or the file and what was expected.

One table of cases across io / pp / tl / models / the CLI. Each case builds what it needs, calls a
public function with one thing wrong, and checks the exception type and that the message names the
culprit (an argument as `name`, or the file's name) — never a bare TypeError / ZeroDivisionError /
JSONDecodeError from deep inside.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bitro as bt
from bitro import _constants as K

HER2ST = Path(__file__).parent / "data" / "her2st"


# --- shared inputs ----------------------------------------------------------------------------------


def _section_files(folder: Path, *, values=None, selected=(1, 1, 1, 1)):
    """A tiny legacy-ST section: 4 spots x 3 genes, a 900 px white-ish image."""
    from PIL import Image

    ids = ("1x1", "2x1", "1x2", "3x3")
    values = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]]) if values is None else values
    counts = folder / "counts.tsv"
    pd.DataFrame(values, index=list(ids), columns=["A", "B", "C"]).to_csv(counts, sep="\t")
    spots = folder / "spots.tsv"
    xy = [(1, 1), (2, 1), (1, 2), (3, 3)]
    pd.DataFrame(
        {
            "x": [p[0] for p in xy],
            "y": [p[1] for p in xy],
            "pixel_x": [100.0 + 290 * p[0] for p in xy],
            "pixel_y": [100.0 + 290 * p[1] for p in xy],
            "selected": list(selected),
        }
    ).to_csv(spots, sep="\t", index=False)
    image = folder / "he.jpg"
    Image.fromarray(np.full((1100, 1100, 3), 230, np.uint8)).save(image)
    return counts, spots, image


def _aperio_tiff(folder: Path, mpp: str) -> Path:
    import tifffile

    path = folder / "slide.svs"
    tifffile.imwrite(
        path, np.full((256, 256, 3), 200, np.uint8), description=f"Aperio Image Library v12 |AppMag = 40|MPP = {mpp}"
    )
    return path


@pytest.fixture(scope="module")
def cells():
    """A toy section with its true nuclei as the cells layer and morphology features (no spots assigned)."""
    from bitro.pp._cells import write_cells

    sdata = bt.datasets.toy_st(n_spots=9, n_genes=20, seed=4)
    info = sdata.attrs[K.ATTRS_KEY]
    write_cells(sdata, sdata[info[K.ATTR_TRUE_CELLS]], image=info[K.ATTR_IMAGE], method="true")
    bt.pp.cell_features(sdata)
    return sdata


@pytest.fixture(scope="module")
def model(_toy_sections):
    return bt.tl.fit(copy.deepcopy(_toy_sections[:2]), n_genes=8, max_epochs=1, val=None, progress=False)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    model.save(path)
    return path


def _copy_model(saved: Path, tmp: Path) -> Path:
    import shutil

    out = tmp / "copy"
    shutil.copytree(saved, out)
    return out


# --- the cases: (id, call(ctx), exception, pattern the message must match) ---------------------------

IO = [
    (
        "legacy_st counts missing",
        lambda c: bt.io.legacy_st(c.tmp / "no.tsv", *c.files[1:], sample_id="s"),
        FileNotFoundError,
        r"`counts`",
    ),
    (
        "legacy_st image missing",
        lambda c: bt.io.legacy_st(*c.files[:2], c.tmp / "no.jpg", sample_id="s"),
        FileNotFoundError,
        r"`image`",
    ),
    (
        "legacy_st fractional counts",
        lambda c: bt.io.legacy_st(*_section_files(c.tmp, values=np.full((4, 3), 3.37)), sample_id="s"),
        ValueError,
        r"counts.tsv: counts must be whole numbers.*3\.37",
    ),
    (
        "legacy_st negative counts",
        lambda c: bt.io.legacy_st(*_section_files(c.tmp, values=-np.ones((4, 3))), sample_id="s"),
        ValueError,
        r"counts.tsv: counts must be non-negative",
    ),
    (
        "legacy_st no spot selected",
        lambda c: bt.io.legacy_st(*_section_files(c.tmp, selected=(0, 0, 0, 0)), sample_id="s"),
        ValueError,
        r"spots.tsv: none of its 4 spots is selected",
    ),
    (
        "legacy_st pixel size in nm",
        lambda c: bt.io.legacy_st(*c.files, sample_id="s", pixel_size=690.0),
        ValueError,
        r"`pixel_size`.*µm per pixel",
    ),
    (
        "legacy_st pixel size 1e6",
        lambda c: bt.io.legacy_st(*c.files, sample_id="s", pixel_size=1e6),
        ValueError,
        r"`pixel_size`",
    ),
    (
        "legacy_st pixel size as text",
        lambda c: bt.io.legacy_st(*c.files, sample_id="s", pixel_size="0.69"),
        TypeError,
        r"`pixel_size` must be a number",
    ),
    ("legacy_st sample id not text", lambda c: bt.io.legacy_st(*c.files, sample_id=3), TypeError, r"`sample_id`"),
    ("wsi mpp 1e6", lambda c: bt.io.wsi(_aperio_tiff(c.tmp, "0.25"), mpp=1e6), ValueError, r"`mpp`.*µm per pixel"),
    ("wsi mpp zero", lambda c: bt.io.wsi(_aperio_tiff(c.tmp, "0.25"), mpp=0), ValueError, r"`mpp` must be > 0"),
    (
        "wsi mpp nan",
        lambda c: bt.io.wsi(_aperio_tiff(c.tmp, "0.25"), mpp=float("nan")),
        ValueError,
        r"`mpp` must be finite",
    ),
    (
        "wsi Aperio MPP 1e6",
        lambda c: bt.io.wsi(_aperio_tiff(c.tmp, "1000000")),
        ValueError,
        r"slide.svs has no pixel size.*Aperio MPP.*not a microscope pixel size.*mpp=",
    ),
    (
        "wsi Aperio MPP text",
        lambda c: bt.io.wsi(_aperio_tiff(c.tmp, "abc")),
        ValueError,
        r"slide.svs has no pixel size",
    ),
    ("wsi missing file", lambda c: bt.io.wsi(c.tmp / "none.svs"), FileNotFoundError, r"`path`"),
    ("read_zarr not a store", lambda c: bt.io.read_zarr(c.tmp), ValueError, r"`path`.*not a zarr store"),
    ("read_zarr missing", lambda c: bt.io.read_zarr(c.tmp / "none.zarr"), FileNotFoundError, r"`path`"),
    (
        "read_zarr damaged",
        lambda c: bt.io.read_zarr(_damaged_store(c.tmp)),
        ValueError,
        r"`path`: .*damaged.zarr is not a readable SpatialData store \(JSONDecodeError",
    ),
    ("bulk missing", lambda c: bt.io.bulk(c.tmp / "none.tsv"), FileNotFoundError, r"none.tsv"),
    ("hest missing sample", lambda c: bt.io.hest(c.tmp, "NCBI1"), FileNotFoundError, r"NCBI1"),
    ("visium not a folder", lambda c: bt.io.visium(c.files[0]), ValueError, r"counts.tsv"),
]

PP = [
    ("segment unknown method", lambda c: bt.pp.segment_cells(c.toy, method="otsu"), ValueError, r"`method`"),
    (
        "segment unet model object",
        lambda c: bt.pp.segment_cells(c.toy, model=object()),
        TypeError,
        r"`model` must be a weights folder .* or None, got object",
    ),
    (
        "segment unknown device",
        lambda c: bt.pp.segment_cells(c.toy, device="gpu"),
        ValueError,
        r"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'",
    ),
    (
        "segment tile too small",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", tile_size=16),
        ValueError,
        r"`tile_size`",
    ),
    (
        "segment overlap >= tile",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", tile_size=128, overlap=128),
        ValueError,
        r"`overlap`",
    ),
    (
        "segment min area > max area",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", min_area_um2=50, max_area_um2=10),
        ValueError,
        r"`min_area_um2`.*`max_area_um2`",
    ),
    (
        "segment diameter zero",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", diameter_um=0),
        ValueError,
        r"`diameter_um`",
    ),
    (
        "segment n_jobs zero",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", n_jobs=0),
        ValueError,
        r"`n_jobs`",
    ),
    (
        "segment unknown image",
        lambda c: bt.pp.segment_cells(c.toy, method="watershed", image_key="nope"),
        KeyError,
        r"`image_key`",
    ),
    (
        "segment without attrs",
        lambda c: bt.pp.segment_cells(_no_attrs(c.toy), method="watershed"),
        ValueError,
        r"attrs\['bitro'\]",
    ),
    ("import without path", lambda c: bt.pp.segment_cells(c.toy, method="import"), ValueError, r"`path="),
    (
        "import truncated npy",
        lambda c: bt.pp.segment_cells(c.toy, method="import", path=_truncated_npy(c.tmp)),
        ValueError,
        r"labels.npy: could not read it as a label image",
    ),
    (
        "import bad json",
        lambda c: bt.pp.segment_cells(c.toy, method="import", path=_write(c.tmp / "n.geojson", "{no")),
        ValueError,
        r"n.geojson: could not read JSON",
    ),
    ("features unknown method", lambda c: bt.pp.cell_features(c.cells, method="colour"), ValueError, r"`method`"),
    ("features tile size", lambda c: bt.pp.cell_features(c.cells, tile_size=8), ValueError, r"`tile_size`"),
    (
        "features encoder unknown",
        lambda c: bt.pp.cell_features(c.cells, method="encoder", encoder="no_such_encoder"),
        FileNotFoundError,
        r"`encoder`: 'no_such_encoder' is neither a named encoder",
    ),
    (
        "features crop negative",
        lambda c: bt.pp.cell_features(c.cells, method="encoder", encoder="x", crop_um=-1),
        ValueError,
        r"`crop_um`",
    ),
    (
        "features batch zero",
        lambda c: bt.pp.cell_features(c.cells, method="encoder", encoder="x", batch_size=0),
        ValueError,
        r"`batch_size`",
    ),
    (
        "features key with space",
        lambda c: bt.pp.cell_features(c.cells, key_added="my features"),
        ValueError,
        r"`key_added`",
    ),
    ("features without cells", lambda c: bt.pp.cell_features(c.toy), ValueError, r"no cells layer.*segment_cells"),
    (
        "encoder config not json",
        lambda c: bt.pp.cell_features(c.cells, method="encoder", encoder=_broken_encoder(c.tmp)),
        ValueError,
        r"config.json: not valid JSON",
    ),
    (
        "assign factor nan",
        lambda c: bt.pp.assign_cells(c.cells, factor=float("nan")),
        ValueError,
        r"`factor` must be finite",
    ),
    (
        "assign factor text",
        lambda c: bt.pp.assign_cells(c.cells, factor="1.5"),
        TypeError,
        r"`factor` must be a number",
    ),
    ("assign factor zero", lambda c: bt.pp.assign_cells(c.cells, factor=0), ValueError, r"`factor` must be > 0"),
    ("assign factor huge", lambda c: bt.pp.assign_cells(c.cells, factor=100), ValueError, r"`factor` must be <= 10"),
    ("assign unknown spots", lambda c: bt.pp.assign_cells(c.cells, spots_key="nope"), KeyError, r"`spots_key`"),
    ("graph k zero", lambda c: bt.pp.cell_graph(c.cells, k=0, within="all"), ValueError, r"`k`"),
    (
        "graph k fractional",
        lambda c: bt.pp.cell_graph(c.cells, k=1.5, within="all"),
        TypeError,
        r"`k` must be an integer",
    ),
    (
        "graph radius negative",
        lambda c: bt.pp.cell_graph(c.cells, radius_um=-1, within="all"),
        ValueError,
        r"`radius_um`",
    ),
    ("graph unknown bag", lambda c: bt.pp.cell_graph(c.cells, within="patch"), ValueError, r"`within`"),
    ("graph tile without size", lambda c: bt.pp.cell_graph(c.cells, within="tile"), ValueError, r"`tile_um`"),
    ("graph spot before assign", lambda c: bt.pp.cell_graph(c.cells, within="spot"), KeyError, r"assign_cells"),
]

TL = [
    ("fit unknown target", lambda c: bt.tl.fit(c.sections, target="cells"), ValueError, r"`target`"),
    (
        "fit damaged store",
        lambda c: bt.tl.fit([_damaged_store(c.tmp)], target="bulk"),
        ValueError,
        r"damaged.zarr is not a readable SpatialData store",
    ),
    ("fit a number", lambda c: bt.tl.fit([3], target="bulk"), TypeError, r"`sdatas\[0\]` is a int: give SpatialData"),
    ("fit n_genes zero", lambda c: bt.tl.fit(c.sections, n_genes=0), ValueError, r"`n_genes`"),
    ("fit lr zero", lambda c: bt.tl.fit(c.sections, lr=0), ValueError, r"`lr` must be > 0"),
    ("fit lr text", lambda c: bt.tl.fit(c.sections, lr="1e-3"), TypeError, r"`lr` must be a number"),
    ("fit weight decay negative", lambda c: bt.tl.fit(c.sections, weight_decay=-1), ValueError, r"`weight_decay`"),
    ("fit batch size zero", lambda c: bt.tl.fit(c.sections, batch_size=0), ValueError, r"`batch_size` must be >= 1"),
    ("fit max epochs zero", lambda c: bt.tl.fit(c.sections, max_epochs=0), ValueError, r"`max_epochs`"),
    ("fit patience negative", lambda c: bt.tl.fit(c.sections, patience=-1), ValueError, r"`patience`"),
    (
        "fit context negative",
        lambda c: bt.tl.fit(c.sections, data={"context_um": -5}),
        ValueError,
        r"`data\['context_um'\]`",
    ),
    (
        "fit unknown bag setting",
        lambda c: bt.tl.fit(c.sections, data={"context": 5}),
        ValueError,
        r"`data`: unknown bag setting 'context'",
    ),
    (
        "fit hidden zero",
        lambda c: bt.tl.fit(c.sections, n_genes=5, architecture={"hidden": 0}),
        ValueError,
        r"`architecture\['hidden'\]`",
    ),
    (
        "fit heads do not divide",
        lambda c: bt.tl.fit(c.sections, n_genes=5, architecture={"hidden": 64, "n_heads": 3}),
        ValueError,
        r"multiple of `architecture\['n_heads'\]`",
    ),
    (
        "fit dropout above 0.9",
        lambda c: bt.tl.fit(c.sections, n_genes=5, architecture={"dropout": 1.5}),
        ValueError,
        r"`architecture\['dropout'\]`",
    ),
    (
        "fit unknown architecture",
        lambda c: bt.tl.fit(c.sections, n_genes=5, architecture={"width": 32}),
        ValueError,
        r"`architecture`: unknown setting",
    ),
    ("fit validation fraction", lambda c: bt.tl.fit(c.sections, n_genes=5, val=1.5), ValueError, r"`val`"),
    ("fit unknown validation sample", lambda c: bt.tl.fit(c.sections, n_genes=5, val=["toy9"]), ValueError, r"`val`"),
    (
        "fit unknown genes",
        lambda c: bt.tl.fit(c.sections, genes=["NOPE1", "NOPE2"], val=None),
        KeyError,
        r"`genes` for sample 'toy0'.*NOPE1",
    ),
    (
        "fit all-zero counts",
        lambda c: bt.tl.fit(_zero_counts(c.sections), n_genes=5, val=None),
        ValueError,
        r"no counts",
    ),
    (
        "predict model path missing",
        lambda c: bt.tl.predict(c.sections[0], c.tmp / "none"),
        FileNotFoundError,
        r"`dir_path`.*not a saved BiTro model",
    ),
    (
        "load adapter missing",
        lambda c: bt.models.BiTro.load(bt.models.default_model_path(), adapter=c.tmp / "none"),
        FileNotFoundError,
        r"^`adapter`: .*not a saved bitro adapter",
    ),
    ("predict model wrong type", lambda c: bt.tl.predict(c.sections[0], 42), TypeError, r"`model` must be"),
    (
        "predict batch size zero",
        lambda c: bt.tl.predict(c.sections[0], c.model, batch_size=0),
        ValueError,
        r"`batch_size`",
    ),
    (
        "predict key with slash",
        lambda c: bt.tl.predict(c.sections[0], c.model, key_added="a/b"),
        ValueError,
        r"`key_added`",
    ),
    (
        "predict mpp ratio below 1",
        lambda c: bt.tl.predict(c.sections[0], c.model, max_mpp_ratio=0.5),
        ValueError,
        r"`max_mpp_ratio`",
    ),
    ("predict unknown head", lambda c: bt.tl.predict(c.sections[0], c.model, target="bulk"), ValueError, r"`target`"),
    ("transfer rank zero", lambda c: bt.tl.transfer(c.sections, c.model, r=0), ValueError, r"`r` must be >= 1"),
    (
        "transfer rank above width",
        lambda c: bt.tl.transfer(c.sections, c.model, r=1000),
        ValueError,
        r"`r` must be <= 64",
    ),
    (
        "transfer alpha negative",
        lambda c: bt.tl.transfer(c.sections, c.model, alpha=-16),
        ValueError,
        r"`alpha` must be > 0",
    ),
    (
        "transfer dropout above 0.9",
        lambda c: bt.tl.transfer(c.sections, c.model, dropout=1.5),
        ValueError,
        r"`dropout`",
    ),
    ("transfer unknown mode", lambda c: bt.tl.transfer(c.sections, c.model, mode="partial"), ValueError, r"`mode`"),
    (
        "transfer unknown modules",
        lambda c: bt.tl.transfer(c.sections, c.model, target_modules=["conv"], max_epochs=1),
        ValueError,
        r"`target_modules`",
    ),
    ("evaluate without predictions", lambda c: bt.tl.evaluate(c.sections[0]), KeyError, r"bt.tl.predict"),
]

MODELS = [
    ("load missing folder", lambda c: bt.models.BiTro.load(c.tmp / "none"), FileNotFoundError, r"`dir_path`"),
    (
        "load config not json",
        lambda c: bt.models.BiTro.load(_edit(c, "config.json", b"{nope")),
        ValueError,
        r"config.json: not valid JSON",
    ),
    (
        "load truncated weights",
        lambda c: bt.models.BiTro.load(_edit(c, "model.safetensors", lambda b: b[: len(b) // 2])),
        ValueError,
        r"model.safetensors: not a readable safetensors file",
    ),
    (
        "load renamed genes",
        lambda c: bt.models.BiTro.load(_edit(c, "config.json", _rename_gene)),
        ValueError,
        r"config.json does not belong to .*model.safetensors",
    ),
    (
        "load other format",
        lambda c: bt.models.BiTro.load(_edit(c, "config.json", _format_99)),
        ValueError,
        r"format 99",
    ),
    ("save over existing", lambda c: c.model.save(c.saved), FileExistsError, r"overwrite=True"),
    (
        "save over a foreign folder",
        lambda c: c.model.save(_foreign(c.tmp), overwrite=True),
        FileExistsError,
        r"files this writer did not make",
    ),
    (
        "architecture hidden zero",
        lambda c: bt.models.Architecture(n_features=5, hidden=0),
        ValueError,
        r"`architecture\['hidden'\]`",
    ),
    ("architecture features text", lambda c: bt.models.Architecture(n_features="5"), TypeError, r"`n_features`"),
    ("settings verbosity", lambda c: setattr(bt.settings, "verbosity", 7), ValueError, r"`verbosity`"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _damaged_store(folder: Path) -> Path:
    store = folder / "damaged.zarr"
    store.mkdir(exist_ok=True)
    (store / "zarr.json").write_text("{not json")
    return store


def _truncated_npy(folder: Path) -> Path:
    path = folder / "labels.npy"
    np.save(path, np.ones((2000, 2000), np.int32))
    path.write_bytes(path.read_bytes()[:300])
    return path


def _broken_encoder(folder: Path) -> Path:
    enc = folder / "enc"
    enc.mkdir()
    (enc / "config.json").write_text("{architecture")
    (enc / "model.safetensors").write_bytes(b"")
    return enc


def _no_attrs(sdata):
    sdata.attrs.clear()
    return sdata


def _zero_counts(sections):
    from scipy import sparse

    for s in sections:
        s["table"].X = sparse.csr_matrix(s["table"].X.shape, dtype=np.float32)
    return sections


def _edit(c, name: str, change) -> Path:
    path = _copy_model(c.saved, c.tmp)
    data = (path / name).read_bytes()
    (path / name).write_bytes(change(data) if callable(change) else change)
    return path


def _rename_gene(data: bytes) -> bytes:
    config = json.loads(data)
    config["genes"]["spot"][0] = "RENAMED"
    return json.dumps(config).encode()


def _format_99(data: bytes) -> bytes:
    return json.dumps(dict(json.loads(data), format=99)).encode()


def _foreign(folder: Path) -> Path:
    path = folder / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    return path


class _Context:
    def __init__(self, request, tmp_path):
        self._request, self.tmp = request, tmp_path

    def __getattr__(self, name):
        if name == "files":
            return _section_files(self.tmp)
        if name == "toy":
            return bt.datasets.toy_st(n_spots=4, n_genes=10, seed=0)
        if name == "cells":
            return copy.deepcopy(self._request.getfixturevalue("cells"))
        if name == "sections":
            return copy.deepcopy(self._request.getfixturevalue("_toy_sections")[:2])
        if name in ("model", "saved"):
            return self._request.getfixturevalue(name)
        raise AttributeError(name)


CASES = [
    pytest.param(*case[1:], id=f"{group}: {case[0]}")
    for group, cases in (("io", IO), ("pp", PP), ("tl", TL), ("models", MODELS))
    for case in cases
]


def test_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize(("call", "exception", "pattern"), CASES)
def test_bad_input_gets_a_clear_error(call, exception, pattern, request, tmp_path):
    settings = (bt.settings.verbosity,)
    try:
        with pytest.raises(exception) as info:
            call(_Context(request, tmp_path))
    finally:
        bt.settings.verbosity = settings[0]
    message = str(info.value)
    assert re.search(pattern, message, flags=re.S), message
    assert "Traceback" not in message


CLI = [
    (
        ["predict-her2st", str(HER2ST), "--section", "C9", "--out", "{tmp}"],
        r"^error: `data_dir`: HER2ST section 'C9' is incomplete",
    ),
    (
        ["predict-her2st", str(HER2ST), "--section", "C3", "--model", "{tmp}/none", "--out", "{tmp}"],
        r"^error: `--model`: .*not a saved BiTro model",
    ),
    (
        ["predict-her2st", str(HER2ST), "--crop", "10", "10", "5", "5", "--out", "{tmp}"],
        r"^error: `crop` must be x0 y0 x1 y1",
    ),
]


@pytest.mark.parametrize(
    ("args", "pattern"), CLI, ids=["cli: unknown section", "cli: missing model", "cli: empty crop"]
)
def test_cli_errors_are_one_line(args, pattern, tmp_path):
    from typer.testing import CliRunner

    from bitro.cli import app

    result = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output
