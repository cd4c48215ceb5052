"""What ``pip install .`` installs is what the code imports, and the docs build as Read the Docs builds them."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "bitro"
OPTIONAL = {
    "cellpose": "the cellpose backend, extra `bitro[cellpose]`",
    "distributed": "used only when a dask.distributed client is already active",
    "timm": "foundation encoders in the timm format, extra `bitro[timm]`",
}
"""Modules imported only where an optional feature runs (each behind a clear error or a check)."""
NOT_IMPORTED = {
    "imagecodecs": "tifffile decodes the JPEG / JPEG 2000 tiles of SVS slides with it",
    "pyarrow": "geopandas reads HEST's CellViT GeoParquet with it",
}
"""Declared dependencies that no module imports by name, and why they are needed."""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, list[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return [_normalise(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in reqs]

    return {"": names(project["dependencies"]), **{k: names(v) for k, v in project["optional-dependencies"].items()}}


def _imported() -> set[str]:
    modules = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("bitro", "__future__")}


def test_every_imported_package_is_declared():
    declared = _declared()
    to_dist = packages_distributions()
    missing = []
    for module in sorted(_imported()):
        dists = {_normalise(d) for d in to_dist.get(module, [module])}
        if module in OPTIONAL:
            continue
        if not dists & set(declared[""]):
            missing.append(f"{module} ({', '.join(sorted(dists))})")
    assert not missing, f"imported but not declared in [project.dependencies]: {missing}"
    assert "cellpose" in declared["cellpose"]


def test_every_declared_dependency_is_used():
    to_dist = packages_distributions()
    used = {_normalise(d) for m in _imported() for d in to_dist.get(m, [m])}
    unused = [d for d in _declared()[""] if d not in used and d not in NOT_IMPORTED]
    assert not unused, f"declared but never imported (drop them, or say why in NOT_IMPORTED): {unused}"


def test_read_the_docs_builds_like_ci():
    """Read the Docs resolves references into other projects: each must be in the intersphinx mapping."""
    conf = (ROOT / "docs" / "conf.py").read_text()
    mapping = ast.literal_eval(re.search(r"intersphinx_mapping = (\{.*?\n\})", conf, re.S).group(1))
    ignored_offline = re.search(r'_EXTERNAL = r"\((.*?)\)', conf).group(1).split("|")
    aliases = {"np": "numpy", "pd": "pandas", "ad": "anndata", "sd": "spatialdata", "sc": "scanpy", "sq": "squidpy"}
    stdlib = {"pathlib", "os", "collections", "typing"}
    needed = {aliases.get(p, p) for p in ignored_offline} - set(aliases) - stdlib
    assert not needed - set(mapping) - {"python"}, (
        f"referenced offline-ignored projects without intersphinx: {needed - set(mapping)}"
    )
    rtd = (ROOT / ".readthedocs.yaml").read_text()
    assert re.search(r"pip install \"torch[^\"]*\" --index-url https://download.pytorch.org/whl/cpu", rtd)
    assert "fail_on_warning: true" in rtd


@pytest.mark.internet
def test_docs_build_with_the_intersphinx_inventories(tmp_path):
    """The nitpicky build Read the Docs runs, with the real inventories (needs the network)."""
    import os
    import subprocess

    env = {**os.environ, "BITRO_DOCS_INTERSPHINX": "1", "MPLBACKEND": "agg"}
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-5000:]
