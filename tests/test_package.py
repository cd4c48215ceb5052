"""The package itself: light import, lazy submodules, version, settings, logger, command line."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import version

import pytest

import bitro as bt

HEAVY = ("torch", "lightning", "pytorch_lightning", "peft", "cellpose", "spatialdata_io")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_is_light():
    loaded = _modules_after("import bitro as bt; bt.io; bt.pp; bt.tl; bt.pl; bt.models")
    assert "bitro.io" in loaded
    assert "bitro.models" in loaded
    assert not loaded & set(HEAVY), f"import bitro loaded {loaded & set(HEAVY)}"
    # spatialdata and scanpy load only when a submodule needs them
    assert "spatialdata" not in _modules_after("import bitro")


def test_cli_help_imports_no_science_stack():
    code = (
        "import sys\nsys.argv = ['bitro', '--help']\nfrom bitro.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_after(code)
    assert not loaded & {*HEAVY, "spatialdata", "anndata", "numpy", "scanpy"}


def test_version_from_metadata():
    assert bt.__version__ == version("bitro")


def test_submodules_are_lazy_attributes():
    for name in ("io", "pp", "tl", "pl", "datasets", "models"):
        assert getattr(bt, name).__name__ == f"bitro.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        bt.nonexistent  # noqa: B018


def test_settings_validate_and_set_logger_level():
    old = bt.settings.verbosity
    try:
        bt.settings.verbosity = 3
        assert logging.getLogger("bitro").level == logging.DEBUG
        bt.settings.verbosity = 0
        assert logging.getLogger("bitro").level == logging.ERROR
    finally:
        bt.settings.verbosity = old
    with pytest.raises(ValueError, match="verbosity"):
        bt.settings.verbosity = 7
    with pytest.raises(ValueError, match="n_jobs"):
        bt.settings.n_jobs = 0
    with pytest.raises(ValueError, match="device"):
        bt.settings.device = "tpu"
    with pytest.raises(TypeError, match="use_dask"):
        bt.settings.use_dask = "yes"
    with pytest.raises(AttributeError, match=r"no setting 'verbose'; settings: \['verbosity', 'n_jobs'"):
        bt.settings.verbose = 3  # a typo is not a new, silently ignored setting
    assert "verbosity" in repr(bt.settings)


def test_effective_n_jobs():
    old = bt.settings.n_jobs
    try:
        bt.settings.n_jobs = -1
        assert bt.settings.effective_n_jobs >= 1
        bt.settings.n_jobs = 2
        assert bt.settings.effective_n_jobs == 2
    finally:
        bt.settings.n_jobs = old
    from bitro._settings import _cores, resolve_n_jobs

    assert resolve_n_jobs(1000) == resolve_n_jobs(-1) == _cores()  # never more processes than cores


def test_cli_demo(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "from bitro.cli import main; main()", "demo", "--out", str(tmp_path), "--n-spots", "9"],
        capture_output=True,
        text=True,
        env={"MPLBACKEND": "agg", **__import__("os").environ},
    )
    assert out.returncode == 0, out.stderr
    assert "spots                    9" in out.stdout
    assert (tmp_path / "toy.png").stat().st_size > 10_000
    assert (tmp_path / "cells.png").stat().st_size > 10_000
    f1 = float(next(line for line in out.stdout.splitlines() if "detection_f1" in line).split()[-1])
    assert f1 >= 0.9
    assert (tmp_path / "toy.zarr" / "zarr.json").exists()


def test_a_bad_verbosity_in_the_environment_does_not_break_the_import():
    import os
    import subprocess
    import sys

    env = {**os.environ, "BITRO_VERBOSITY": "debug", "BITRO_CACHE_DIR": ""}
    code = "import bitro as bt; print(bt.settings.verbosity, bt.settings.cachedir.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "bitro"]  # the defaults, not the current folder for an empty cache dir
    assert "$BITRO_VERBOSITY is 'debug'" in out.stderr
