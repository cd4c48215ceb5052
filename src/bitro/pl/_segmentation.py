"""Cell outlines over a crop of the H&E image, in µm of the section's coordinate system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._docs import inject_docs
from bitro._logging import logger

from ._utils import cells_canvas, finish, frame, geometry_um, norm

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

DEFAULT_CROP_UM = 150.0
"""Side (µm) of the default crop, centred on the median cell."""
NO_VALUE_COLOR = "lightgrey"
"""Outline colour of cells without a value in the ``color`` column."""


def _edge_colors(values: pd.Series, ax: Axes, column: str):
    """Edge colour of each outline, and a colour bar or legend for ``column``."""
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype(float).to_numpy()
        scale = norm(numbers)
        cmap = mpl.colormaps["viridis"]
        colors = cmap(scale(np.nan_to_num(numbers, nan=0.0)))
        colors[~np.isfinite(numbers)] = mpl.colors.to_rgba(NO_VALUE_COLOR)
        ax.figure.colorbar(mpl.cm.ScalarMappable(norm=scale, cmap=cmap), ax=ax, label=column, shrink=0.8)
        return colors
    categories = values.astype("category")
    palette = mpl.colormaps["tab20" if len(categories.cat.categories) > 10 else "tab10"]
    lookup = {cat: palette(i % palette.N) for i, cat in enumerate(categories.cat.categories)}
    colors = np.array([lookup.get(v, mpl.colors.to_rgba(NO_VALUE_COLOR)) for v in categories], dtype=float)
    handles = [Line2D([], [], color=c, lw=2, label=str(cat)) for cat, c in lookup.items()]
    ax.legend(
        handles=handles, title=column, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small"
    )
    return colors.reshape(-1, 4)


@inject_docs()
def segmentation(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    shapes_key: str | None = None,
    region: Sequence[float] | None = None,
    color: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot cell outlines over a crop of the H&E image.

    Image and outlines are each mapped with their own transformation; one outline per cell that
    touches the crop, as a single :class:`~matplotlib.collections.PolyCollection`.

    Parameters
    ----------
    sdata
        {doc_sdata} Needs an image and cell boundaries.
    image_key
        Image to show; defaults to the image the cells were segmented on, else ``attrs["bitro"]["image_key"]``.
    shapes_key
        Shapes element of the cell boundaries; defaults to ``attrs["bitro"]["cells_shapes_key"]``.
    region
        {doc_region} ``None`` shows a 150 µm square around the median cell (or the image centre
        when there are no cells).
    color
        ``obs`` column of the cells table to colour outlines by (numbers with a colour bar,
        categories with a legend); ``None`` draws all outlines in one colour.
    {doc_plot_end}

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.pp.segment_cells(sdata, method="watershed")
    >>> ax = bt.pl.segmentation(sdata, region=(1500, 800, 1650, 950))
    """
    from matplotlib.collections import PolyCollection

    info = _sdata.info(sdata)
    cs = _sdata.coordinate_system(sdata)
    shapes_key = shapes_key if shapes_key is not None else info.get(K.ATTR_CELLS_SHAPES)
    if shapes_key is None or shapes_key not in sdata.shapes:
        raise KeyError(
            f"`shapes_key`: {shapes_key!r} is not a shapes element of `sdata` (shapes: {list(sdata.shapes)}); "
            "run a segmentation first or pass the cell boundaries' key."
        )
    if image_key is None and info.get(K.ATTR_CELLS_IMAGE) in sdata.images:
        image_key = info[K.ATTR_CELLS_IMAGE]
    image_key = _sdata.image_key(sdata, image_key)
    shapes = sdata.shapes[shapes_key]
    geometry = geometry_um(sdata, shapes_key, shapes.geometry.to_numpy())

    own_figure = ax is None
    fig, ax, region, in_region, outlines = cells_canvas(
        sdata, geometry, region, image_key, name="region", side_um=DEFAULT_CROP_UM, ax=ax, figsize=None, size=(6, 6)
    )
    edgecolors: object = "yellow"
    if color is not None:
        table_key = _sdata.recorded(sdata, K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY)
        if table_key not in sdata.tables:
            raise KeyError(f"`color` needs the cells table {table_key!r}, which `sdata` lacks.")
        table = sdata.tables[table_key]
        if color not in table.obs:
            raise KeyError(
                f"`color`: {color!r} is not a column of {table_key}.obs (columns: {list(table.obs.columns)})."
            )
        instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.CELL_ID_KEY)
        by_cell = pd.Series(table.obs[color].to_numpy(), index=table.obs[instance_key].to_numpy())
        edgecolors = _edge_colors(by_cell.reindex(shapes.index[in_region]), ax, color)

    collection = PolyCollection(outlines, facecolors="none", edgecolors=edgecolors, linewidths=0.8)
    collection.set_label(shapes_key)
    ax.add_collection(collection)
    frame(ax, region, cs, f"{shapes_key}: {len(outlines)} cells")
    logger.info("plotted %d outlines of %s over %s", len(outlines), shapes_key, image_key)
    return finish(fig, ax, own_figure=own_figure, show=show, save=save, return_fig=return_fig)
