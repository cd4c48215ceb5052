"""Sphinx configuration of the bitro documentation (built with -W: warnings are errors)."""

from __future__ import annotations

import os
from datetime import date
from importlib.metadata import version as _version

project = "bitro"
author = "bitro developers"
copyright = f"{date.today():%Y}, {author}"
release = version = _version("bitro")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]

# API pages
templates_path = ["_templates"]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = True

# notebooks: tutorials run on bundled or synthetic data at build time
nb_execution_mode = "cache" if os.environ.get("READTHEDOCS") else "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
# tutorials built without running them (comma-separated globs; tests/test_docs.py sets it)
nb_execution_excludepatterns = [p for p in os.environ.get("BITRO_DOCS_NOT_RUN", "").split(",") if p]
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "bitro"
html_theme_options = {
    "repository_url": "https://github.com/bitro-dev/bitro",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}

# Cross-references. Inventories are fetched on Read the Docs (or with BITRO_DOCS_INTERSPHINX=1);
# offline builds (CI here has no internet) skip them and do not check references into other
# projects, but every reference into bitro itself is still checked (nitpicky).
nitpicky = True
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "dask": ("https://docs.dask.org/en/stable/", None),
    "distributed": ("https://distributed.dask.org/en/stable/", None),
    "xarray": ("https://docs.xarray.dev/en/stable/", None),
    "geopandas": ("https://geopandas.org/en/stable/", None),
    "shapely": ("https://shapely.readthedocs.io/en/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "skimage": ("https://scikit-image.org/docs/stable/", None),
    "sklearn": ("https://scikit-learn.org/stable/", None),
    "PIL": ("https://pillow.readthedocs.io/en/stable/", None),
    "tifffile": ("https://tifffile.readthedocs.io/en/latest/", None),
}
_ONLINE = bool(os.environ.get("READTHEDOCS") or os.environ.get("BITRO_DOCS_INTERSPHINX"))
if not _ONLINE:
    intersphinx_mapping = {}
    _EXTERNAL = r"(numpy|np|pandas|pd|anndata|ad|spatialdata|sd|scanpy|sc|squidpy|geopandas|shapely|torch|lightning|dask|distributed|xarray|matplotlib|pathlib|os|collections|typing|skimage|scipy|sklearn|tifffile|PIL)\b.*"
    nitpick_ignore_regex = [
        (r"py:.*", _EXTERNAL),
        (r"py:class", r"(AnnData|SpatialData|DataFrame|ndarray|Path|PathLike)"),
    ]
else:
    nitpick_ignore_regex = []
# names of standard types written in numpydoc prose ("array-like", "optional")
nitpick_ignore = [
    ("py:class", "optional"),
    ("py:class", "array-like"),
    ("py:class", "bitro.models._data.Bags"),  # private bag container in a type hint
    ("py:class", "bitro.models._module.BagHead"),  # a head module, in type hints of the adapter methods
    ("py:class", "bitro.models._adapters.Head"),
    ("py:class", "bitro.models._model.Prediction"),  # what BiTro.predict_bags returns (a NamedTuple)
    ("py:data", "Ellipsis"),  # tuple[str, ...] in type hints
    ("py:class", "distributed.client.Client"),  # a type hint; distributed documents it as distributed.Client
]


def _public_bases(app, name, obj, options, bases):
    """Hide bitro's private mixins from "Bases:" (their methods are documented on the class itself)."""
    bases[:] = [b for b in bases if not (b.__module__.startswith("bitro.") and b.__name__.endswith("Mixin"))]


def _skip_foreign(app, what, name, obj, skip, options):
    """Document a class's members that bitro defines (its mixins' too), not those of torch, Lightning or Python."""
    if what != "class":
        return None
    module = getattr(getattr(obj, "fget", obj), "__module__", None)
    return True if module is not None and not module.startswith("bitro") else None


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-skip-member", _skip_foreign)
