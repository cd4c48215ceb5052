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


def test_docs_build_without_warnings(tmp_path):
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
        env={**__import__("os").environ, "MPLBACKEND": "agg"},
    )
    assert out.returncode == 0, out.stderr[-5000:]
    assert (tmp_path / "html" / "generated" / "bitro.datasets.toy_st.html").exists()
    assert "true cell types" in (tmp_path / "html" / "tutorials" / "toy_data.html").read_text()
