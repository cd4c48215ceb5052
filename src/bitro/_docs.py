"""Shared numpydoc text of parameters that several public functions take (scanpy's ``_docs.py`` pattern).

A docstring names a block by a placeholder, ``{doc_show_save}``, and :func:`inject_docs` puts the
text in. A placeholder alone on its line is replaced by whole parameter entries, every line at the
placeholder's indentation; a placeholder inside a description is replaced by a description,
continuation lines at that line's indentation. Only the named placeholders are touched, so other
braces in a docstring (``{gene: column}``) stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# --- descriptions (used inside a parameter's text) --------------------------------------------------

doc_sdata = """\
A :class:`~spatialdata.SpatialData` read by :mod:`bitro.io` or made by :mod:`bitro.datasets`; every
element is drawn in µm of the coordinate system recorded in ``sdata.attrs["bitro"]``."""

doc_region = """\
Region ``(x0, y0, x1, y1)`` in µm of the recorded coordinate system; only this crop of the image
is read, from the finest pyramid level that keeps it at most 1200 pixels across."""

# --- whole parameter entries -----------------------------------------------------------------------

doc_y_pair = """\
y_true
    Measured values, ``(n_obs, n_genes)``.
y_pred
    Predicted values, same shape."""

doc_key = """\
key
    The prediction table :func:`bitro.tl.predict` wrote (default: the one it recorded in
    ``sdata.attrs["bitro"]``; see :func:`bitro.get.predictions`)."""

doc_image = """\
image
    Image under the data: ``True`` draws the recorded H&E (for cells, the image they were
    segmented on), a string the image of that key, ``False`` none."""

doc_cmap = """\
cmap
    Matplotlib colour map of the values (predicted and observed share one scale)."""

doc_figsize = """\
figsize
    Size (inches) of a new figure; ``None`` sizes it from the content."""

doc_ax = """\
ax
    Axes to draw into; a new figure is made when ``None``."""

doc_show_save = """\
show
    Show the figure. ``None`` shows it only when the plot made its own figure, matplotlib's
    backend is interactive and neither ``save`` nor ``return_fig`` is given.
save
    Write the figure to this path (format from the suffix, 150 dpi, tight bounding box).
return_fig
    Return the :class:`~matplotlib.figure.Figure` instead of the axes."""

doc_show_save_ax = f"{doc_ax}\n{doc_show_save}"

# --- Returns sections --------------------------------------------------------------------------------

doc_returns_ax = """\
~matplotlib.axes.Axes | ~matplotlib.figure.Figure | None
    The figure when ``return_fig``, else the axes unless the figure was shown (then ``None``)."""

doc_plot_end = f"{doc_show_save_ax}\n\nReturns\n-------\n{doc_returns_ax}"
"""The last parameters of a one-axes plot (``ax``, ``show``, ``save``, ``return_fig``) and its Returns section."""


def inject_docs(**blocks: str) -> Callable[[F], F]:
    """Replace the placeholders ``{name}`` of exactly the given names in the decorated function's docstring.

    Without arguments, every ``{doc_*}`` placeholder is filled with the block of that name in this
    module. Lines after the first of a block get the indentation of the line holding the
    placeholder. A name whose placeholder is not in the docstring, or a ``{doc_*}`` placeholder
    without a block, is an error (a typo would otherwise go unseen).
    """

    def decorate(func: F) -> F:
        doc = func.__doc__
        if doc is None:  # python -OO strips docstrings
            return func
        named = blocks
        if not named:
            names = sorted(set(re.findall(r"\{(doc_\w+)\}", doc)))
            unknown = [n for n in names if not isinstance(globals().get(n), str)]
            if unknown:
                raise ValueError(f"{func.__qualname__}: no shared docs for {unknown}.")
            named = {n: globals()[n] for n in names}
        for name, block in named.items():
            placeholder = "{" + name + "}"
            if placeholder not in doc:
                raise ValueError(f"{func.__qualname__}: the docstring has no placeholder {placeholder}.")
            lines = []
            for line in doc.split("\n"):
                if placeholder in line:
                    indent = re.match(r"[ \t]*", line).group(0)
                    line = line.replace(placeholder, block.replace("\n", "\n" + indent))
                lines.append(line)
            doc = "\n".join(lines)
        func.__doc__ = doc
        return func

    return decorate
