"""Cell outlines over a crop of the H&E image, in µm of the section's coordinate system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

MAX_WINDOW_PX = 1200
"""The finest pyramid level whose crop is at most this many pixels across is read."""
DEFAULT_CROP_UM = 150.0
"""Side (µm) of the default crop, centred on the median cell."""


def _read_window(level, matrix: np.ndarray, region: tuple[float, float, float, float]):
    """Pixels of ``level`` covering ``region`` (µm) as ``(y, x, c)`` and their extent (left, right, bottom, top) in µm."""
    inverse = np.linalg.inv(matrix)
    x0, y0, x1, y1 = region
    corners = _sdata.apply_affine(inverse, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
    ny, nx = level.sizes["y"], level.sizes["x"]
    c0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [nx, ny])
    c1 = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, [nx, ny])
    if (c1 <= c0).any():
        return None, None
    window = level.isel(x=slice(c0[0], c1[0]), y=slice(c0[1], c1[1])).transpose("y", "x", "c").values
    (left, top), (right, bottom) = _sdata.apply_affine(matrix, np.array([c0, c1], dtype=float))
    return window, (left, right, bottom, top)


def _as_rgb(window: np.ndarray) -> np.ndarray:
    if window.shape[-1] == 1:
        window = np.repeat(window, 3, axis=-1)
    window = window[..., :3]
    if window.dtype == np.uint8:
        return window
    window = window.astype(float)
    lo, hi = np.nanpercentile(window, [0.5, 99.5]) if window.size else (0.0, 1.0)
    return np.clip((window - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def _edge_colors(values: pd.Series, ax: Axes, column: str):
    """Edge colour of each outline, and a colour bar or legend for ``column``."""
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype(float).to_numpy()
        finite = numbers[np.isfinite(numbers)]
        norm = mpl.colors.Normalize(*(finite.min(), finite.max()) if len(finite) else (0, 1))
        cmap = mpl.colormaps["viridis"]
        colors = cmap(norm(np.nan_to_num(numbers, nan=0.0)))
        colors[~np.isfinite(numbers)] = mpl.colors.to_rgba("lightgrey")
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        ax.figure.colorbar(mappable, ax=ax, label=column, shrink=0.8)
        return colors
    categories = values.astype("category")
    palette = mpl.colormaps["tab20" if len(categories.cat.categories) > 10 else "tab10"]
    lookup = {cat: palette(i % palette.N) for i, cat in enumerate(categories.cat.categories)}
    colors = np.array([lookup.get(v, mpl.colors.to_rgba("lightgrey")) for v in categories], dtype=float).reshape(-1, 4)
    handles = [Line2D([], [], color=c, lw=2, label=str(cat)) for cat, c in lookup.items()]
    ax.legend(
        handles=handles, title=column, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small"
    )
    return colors


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

    Only the crop is read, from the finest pyramid level that keeps it at most
    1200 pixels across. Image and outlines are drawn in µm of the coordinate system recorded in
    ``sdata.attrs["bitro"]`` (each mapped with its own transformation); one outline per cell that
    touches the crop, as a single :class:`~matplotlib.collections.PolyCollection`.

    Parameters
    ----------
    sdata
        Spatial data with an image and cell boundaries.
    image_key
        Image to show; defaults to the image the cells were segmented on, else ``attrs["bitro"]["image_key"]``.
    shapes_key
        Shapes element of the cell boundaries; defaults to ``attrs["bitro"]["cells_shapes_key"]``.
    region
        Crop ``(x0, y0, x1, y1)`` in µm of the coordinate system; ``None`` shows a 150 µm square
        around the median cell (or the image centre when there are no cells).
    color
        ``obs`` column of the cells table to colour outlines by (numbers with a colour bar,
        categories with a legend); ``None`` draws all outlines in one colour.
    ax
        Axes to draw into; a new figure is made when ``None``.
    show
        Show the figure; ``None`` shows it when neither ``ax``, ``save`` nor ``return_fig`` is
        given and matplotlib's backend is interactive.
    save
        Write the figure to this path (format from the suffix).
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` when ``return_fig``, else the
    :class:`~matplotlib.axes.Axes` unless the figure was shown (then ``None``).

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.pp.segment_cells(sdata)  # doctest: +SKIP
    >>> bt.pl.segmentation(sdata, color="area_um2", region=(1500, 800, 1650, 950))  # doctest: +SKIP
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    import shapely
    from matplotlib.collections import PolyCollection

    info = _sdata.info(sdata)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
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

    geometry = shapes.geometry.to_numpy()
    shape_matrix = _sdata.affine_xy(shapes, cs)
    geometry_um = (
        shapely.transform(geometry, lambda xy: _sdata.apply_affine(shape_matrix, xy)) if len(geometry) else geometry
    )
    levels = _sdata.levels(sdata.images[image_key])
    matrices = [_sdata.affine_xy(level, cs) for level in levels]

    if region is None:
        if len(geometry_um):
            centre = np.median(shapely.get_coordinates(shapely.centroid(geometry_um)), axis=0)
        else:
            ny, nx = levels[0].sizes["y"], levels[0].sizes["x"]
            centre = _sdata.apply_affine(matrices[0], np.array([[nx / 2, ny / 2]]))[0]
        half = DEFAULT_CROP_UM / 2
        region = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    region = tuple(float(v) for v in region)
    if len(region) != 4 or not (region[2] > region[0] and region[3] > region[1]):
        raise ValueError(f"`region` must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0 (µm), got {region!r}.")

    level_index = len(levels) - 1
    for i, (_level, matrix) in enumerate(zip(levels, matrices, strict=True)):
        um_per_px = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        if max(region[2] - region[0], region[3] - region[1]) / um_per_px <= MAX_WINDOW_PX:
            level_index = i
            break
    if abs(matrices[level_index][0, 1]) > 1e-9 or abs(matrices[level_index][1, 0]) > 1e-9:
        raise NotImplementedError(
            f"image {image_key!r} is rotated or sheared in {cs!r}; only axis-aligned images are supported."
        )
    window, extent = _read_window(levels[level_index], matrices[level_index], region)

    in_region = shapely.intersects(geometry_um, shapely.box(*region)) if len(geometry_um) else np.zeros(0, bool)
    outlines = []
    for geom in geometry_um[in_region]:
        if geom.geom_type == "MultiPolygon":
            geom = max(geom.geoms, key=lambda g: g.area)
        outlines.append(
            np.asarray(geom.exterior.coords) if geom.geom_type == "Polygon" else shapely.get_coordinates(geom)
        )

    own_axes = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    if window is not None:
        ax.imshow(_as_rgb(window), extent=extent, origin="upper", interpolation="nearest")
    else:
        logger.warning("region %s lies outside image %s; drawing outlines only", region, image_key)

    edgecolors: object = "yellow"
    if color is not None:
        table_key = info.get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY)
        if table_key not in sdata.tables:
            raise KeyError(f"`color` needs the cells table {table_key!r}, which `sdata` lacks.")
        table = sdata.tables[table_key]
        if color not in table.obs:
            raise KeyError(
                f"`color`: {color!r} is not a column of {table_key}.obs (columns: {list(table.obs.columns)})."
            )
        instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.CELL_ID_KEY)
        by_cell = pd.Series(table.obs[color].to_numpy(), index=table.obs[instance_key].to_numpy())
        values = by_cell.reindex(shapes.index[in_region])
        edgecolors = _edge_colors(values, ax, color)

    collection = PolyCollection(outlines, facecolors="none", edgecolors=edgecolors, linewidths=0.8)
    collection.set_label(shapes_key)
    ax.add_collection(collection)
    ax.set_xlim(region[0], region[2])
    ax.set_ylim(region[3], region[1])  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel(f"x (µm, {cs})")
    ax.set_ylabel(f"y (µm, {cs})")
    ax.set_title(f"{shapes_key}: {len(outlines)} cells")
    logger.info("plotted %d outlines of %s over %s (level %d)", len(outlines), shapes_key, image_key, level_index)

    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        interactive = mpl.get_backend().lower() not in {"agg", "pdf", "ps", "svg", "cairo", "template"}
        show = own_axes and interactive and save is None and not return_fig
    if show:
        plt.show()
        return None
    return fig if return_fig else ax
