"""Predicted expression of each cell on its outline over a crop of the H&E, in µm of the section's coordinate system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._docs import inject_docs
from bitro._logging import logger

from ._prediction import predicted_values
from ._utils import NAN_COLOR, cells_canvas, finish, frame, geometry_um, image_choice, missing_legend, norm

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

DEFAULT_CELL_CROP_UM = 300.0
"""Side (µm) of the default crop of :func:`cell_expression`, centred on the median cell."""


@inject_docs()
def cell_expression(
    sdata: SpatialData,
    gene: str,
    *,
    key: str | None = None,
    image: bool | str = True,
    crop: Sequence[float] | None = None,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot the predicted expression of each cell on its outline over a crop of the H&E.

    Cell polygons of ``attrs["bitro"]["cells_shapes_key"]`` are matched to the rows of the cells
    table by its instance key and filled with the prediction of the cells' prediction table
    (one :class:`~matplotlib.collections.PolyCollection`); cells without a prediction (NaN: outside
    every bag) are drawn hollow and grey.

    Parameters
    ----------
    sdata
        {doc_sdata} Needs a cells layer and per-cell predictions written by :func:`bitro.tl.predict`.
    gene
        A predicted gene (the ``var_names`` of the cells' prediction table).
    {doc_key}
    {doc_image}
    crop
        {doc_region} ``None`` shows a 300 µm square around the median cell with a prediction.
    {doc_cmap}
    {doc_figsize}
    {doc_plot_end}

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.tl.predict(sdata)  # the bundled default model
    >>> ax = bt.pl.cell_expression(sdata, "IGKC", crop=(1500, 800, 1800, 1100))
    """
    import matplotlib as mpl
    from matplotlib.collections import PolyCollection

    if not isinstance(gene, str):
        raise TypeError(f"`gene` must be one gene name, got {gene!r}.")
    cs = _sdata.coordinate_system(sdata)
    table_key, shapes_key, geometry = _sdata.cell_boundaries(sdata)
    values = predicted_values(sdata, [gene], level="cells", key=key, align_to=sdata.tables[table_key])[0][:, 0]
    geometry = geometry_um(sdata, shapes_key, geometry)
    finite = np.isfinite(values)

    image_key = image_choice(sdata, image, prefer=_sdata.info(sdata).get(K.ATTR_CELLS_IMAGE))
    own_figure = ax is None
    fig, ax, region, in_region, outlines = cells_canvas(
        sdata, geometry, crop, image_key, name="crop", side_um=DEFAULT_CELL_CROP_UM, ax=ax, figsize=figsize,
        size=(6.5, 5.5), focus=finite,
    )  # fmt: skip
    outline_of = dict(zip(np.flatnonzero(in_region), outlines, strict=True))
    shown = in_region & finite
    colormap = mpl.colormaps[cmap]
    scale = norm(values[shown] if shown.any() else values)
    filled = PolyCollection(
        [outline_of[i] for i in np.flatnonzero(shown)], cmap=colormap, norm=scale, edgecolors="none", alpha=0.9
    )
    filled.set_array(values[shown])
    filled.set_label(gene)
    ax.add_collection(filled)
    empty_cells = in_region & ~finite
    if empty_cells.any():
        hollow = PolyCollection(
            [outline_of[i] for i in np.flatnonzero(empty_cells)],
            facecolors="none",
            edgecolors=NAN_COLOR,
            linewidths=0.6,
        )
        hollow.set_label(f"{gene}: NaN")
        ax.add_collection(hollow)
        missing_legend(ax, int(empty_cells.sum()), "no prediction")
    fig.colorbar(filled, ax=ax, label=f"{gene}, log1p(CP10k)", shrink=0.8)
    frame(ax, region, cs, f"{gene} predicted: {int(shown.sum())} cells")
    logger.info(
        "plotted %s for %d cells of %s (%d without a prediction)",
        gene,
        int(shown.sum()),
        shapes_key,
        int(empty_cells.sum()),
    )
    return finish(fig, ax, own_figure=own_figure, show=show, save=save, return_fig=return_fig)
