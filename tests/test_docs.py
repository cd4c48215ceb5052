"""The documentation lists every public function and builds with warnings as errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bitro as bt

DOCS = Path(__file__).parents[1] / "docs"


def test_api_page_lists_every_public_function():
    listed = set(re.findall(r"^\s+(\w+\.\w+)\s*$", (DOCS / "api.md").read_text(), flags=re.M))
    public = {
        f"{m}.{name}" for m in ("datasets", "io", "pp", "tl", "pl", "get", "models") for name in getattr(bt, m).__all__
    }
    assert public - listed == set(), "add these to docs/api.md"
    assert listed - public == set(), "docs/api.md lists names that are not public"


EXECUTED_ELSEWHERE = ("tutorials/own_data.md", "tutorials/predictions.md", "tutorials/training.md")
"""Tutorials the test builds without running (~230 of its ~310 s): ``make docs`` and Read the Docs run
them, and their steps run in tests/test_cli.py (``bitro run wsi``), tests/test_default_model.py (the
bundled model on HER2ST C3) and tests/test_tl_*.py (fit, cross_validate, transfer)."""


def test_docs_build_without_warnings(tmp_path):
    """Warnings are errors; the toy-data tutorial runs."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "MPLBACKEND": "agg", "BITRO_DOCS_NOT_RUN": ",".join(EXECUTED_ELSEWHERE)},
    )
    assert out.returncode == 0, out.stderr[-5000:]
    assert (tmp_path / "html" / "generated" / "bitro.datasets.toy_st.html").exists()
    toy = (tmp_path / "html" / "tutorials" / "toy_data.html").read_text()
    assert "true cell types" in toy
    assert "cell_output" in toy  # it ran: its outputs are in the page
    for page in EXECUTED_ELSEWHERE:
        assert (tmp_path / "html" / page.replace(".md", ".html")).is_file()
