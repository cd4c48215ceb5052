"""What every plot of :mod:`bitro.pl` shares: the show / save / return contract, axes, colours, and the H&E underneath.

The contract (scanpy's): ``save`` writes the figure; ``show=None`` shows it only when the plot made
its own figure on an interactive backend and neither ``save`` nor ``return_fig`` was given; the plot
returns the figure when ``return_fig``, else its axes unless the figure was shown (then ``None``),
so Jupyter does not draw a figure twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

MAX_WINDOW_PX = 1200
"""The finest pyramid level whose crop is at most this many pixels across is read."""
NAN_COLOR = "grey"
"""Edge colour of spots and cells without a value (drawn hollow)."""
SAVE_DPI = 150
"""Resolution of figures written with ``save=``."""
NON_INTERACTIVE_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})
"""Matplotlib backends that cannot show a window: ``show=None`` never calls :func:`matplotlib.pyplot.show` there."""


# --- the contract --------------------------------------------------------------------------------


def new_axes(ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure and axes to draw into: those of ``ax``, or a new figure of ``figsize`` (else ``default``)."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize if figsize is not None else default, layout="constrained")


def axes_grid(
    ax: Axes | Sequence[Axes] | None,
    n_panels: int,
    n_rows: int,
    n_cols: int,
    figsize: tuple[float, float] | None,
    panel_in: float,
) -> tuple[Figure, list[Axes]]:
    """``n_panels`` axes in an ``n_rows x n_cols`` grid of a new figure, or the axes given (one per panel)."""
    import matplotlib.pyplot as plt

    if ax is not None:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != n_panels:
            raise ValueError(f"`ax`: this plot has {n_panels} panels, but {len(axes)} axes were given.")
        return axes[0].figure, axes
    figsize = figsize if figsize is not None else (panel_in * n_cols + 1.0 * n_cols, panel_in * n_rows)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=figsize, squeeze=False, layout="constrained")
    grid = list(grid.ravel())
    for extra in grid[n_panels:]:
        extra.remove()
    return fig, grid[:n_panels]


def finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    own_figure: bool,
    show: bool | None,
    save: str | Path | None,
    return_fig: bool | None,
) -> Figure | Axes | list[Axes] | None:
    """Save and show ``fig`` as the contract says and return what the plot returns."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    if save is not None:
        from bitro._store import replace_file

        if not Path(save).suffix:  # as matplotlib does: the default format's extension is appended
            save = f"{save}.{mpl.rcParams['savefig.format']}"
        with replace_file(save) as tmp:  # an interrupted save never leaves half a file in place of the last
            fig.savefig(tmp, dpi=SAVE_DPI, bbox_inches="tight")
    if show is None:
        interactive = mpl.get_backend().lower() not in NON_INTERACTIVE_BACKENDS
        show = own_figure and interactive and save is None and not return_fig
    if show:
        plt.show()
    if return_fig:
        return fig
    return None if show else axes


# --- colours and frames --------------------------------------------------------------------------


def norm(*arrays: np.ndarray) -> Normalize:
    """One linear colour scale over the finite values of all ``arrays`` (a unit range around a constant)."""
    import matplotlib as mpl

    finite = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays]) if arrays else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return mpl.colors.Normalize(vmin=lo, vmax=hi)


def missing_legend(ax: Axes, n: int, what: str) -> None:
    """A legend entry for the ``n`` hollow grey shapes without a value."""
    from matplotlib.patches import Patch

    handle = Patch(facecolor="none", edgecolor=NAN_COLOR, label=f"{what} ({n})")
    ax.legend(handles=[handle], loc="lower right", fontsize="x-small", frameon=True)


def frame(ax: Axes, region: tuple[float, float, float, float], cs: str, title: str) -> None:
    """Limit ``ax`` to ``region`` (µm, y down as in the image), equal aspect, axis labels and title."""
    ax.set_xlim(region[0], region[2])
    ax.set_ylim(region[3], region[1])  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel(f"x (µm, {cs})", fontsize="small")
    ax.set_ylabel(f"y (µm, {cs})", fontsize="small")
    ax.tick_params(labelsize="x-small")
    ax.set_title(title, fontsize="medium")


# --- regions and outlines ------------------------------------------------------------------------


def check_region(region: Sequence[float], name: str) -> tuple[float, float, float, float]:
    """``region`` as four floats ``(x0, y0, x1, y1)`` with ``x1 > x0`` and ``y1 > y0``, else a clear error."""
    region = tuple(float(v) for v in region)
    if len(region) != 4 or not (region[2] > region[0] and region[3] > region[1]):
        raise ValueError(f"`{name}` must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0 (µm), got {region!r}.")
    return region


def square(centre: np.ndarray, side: float) -> tuple[float, float, float, float]:
    """The square region of ``side`` µm centred on ``centre``."""
    half = side / 2
    return (float(centre[0] - half), float(centre[1] - half), float(centre[0] + half), float(centre[1] + half))


def geometry_um(sdata: SpatialData, shapes_key: str, geometry: np.ndarray) -> np.ndarray:
    """Shapely ``geometry`` of shapes element ``shapes_key`` mapped to µm of the recorded coordinate system."""
    import shapely

    if not len(geometry):
        return geometry
    matrix = _sdata.affine_xy(sdata.shapes[shapes_key], _sdata.coordinate_system(sdata))
    return shapely.transform(geometry, lambda xy: _sdata.apply_affine(matrix, xy))


def outlines_in(geometry: np.ndarray, region: tuple[float, float, float, float]) -> tuple[np.ndarray, list]:
    """Which polygons touch ``region``, and their outlines as ``(n, 2)`` vertices (a multipolygon's largest part)."""
    import shapely

    inside = shapely.intersects(geometry, shapely.box(*region)) if len(geometry) else np.zeros(0, bool)
    outlines = []
    for geom in geometry[inside]:
        if geom.geom_type == "MultiPolygon":
            geom = max(geom.geoms, key=lambda part: part.area)
        outlines.append(
            np.asarray(geom.exterior.coords) if geom.geom_type == "Polygon" else shapely.get_coordinates(geom)
        )
    return inside, outlines


# --- the image underneath ------------------------------------------------------------------------


def image_choice(sdata: SpatialData, image: bool | str, *, prefer: str | None = None) -> str | None:
    """The image to draw under the data: ``None`` for ``image=False`` or when ``True`` finds none."""
    if image is False or image is None:
        return None
    if isinstance(image, str):
        if image not in sdata.images:
            raise KeyError(f"`image`: {image!r} is not an image of `sdata` (images: {list(sdata.images)}).")
        return image
    info = _sdata.info(sdata)
    for candidate in (prefer, info.get(K.ATTR_IMAGE)):
        if candidate is not None and candidate in sdata.images:
            return candidate
    logger.warning("no recorded image in `sdata` (images: %s); drawing without the H&E", list(sdata.images))
    return None


def read_window(level, matrix: np.ndarray, region: tuple[float, float, float, float]):
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


def as_rgb(window: np.ndarray) -> np.ndarray:
    """``(y, x, c)`` pixels as RGB: uint8 kept, other types stretched to [0, 1] between the 0.5 and 99.5 percentiles."""
    if window.shape[-1] == 1:
        window = np.repeat(window, 3, axis=-1)
    window = window[..., :3]
    if window.dtype == np.uint8:
        return window
    window = window.astype(float)
    lo, hi = np.nanpercentile(window, [0.5, 99.5]) if window.size else (0.0, 1.0)
    return np.clip((window - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def background(sdata: SpatialData, image_key: str, region: tuple[float, float, float, float]):
    """RGB pixels of ``image_key`` over ``region`` (µm), at most ``MAX_WINDOW_PX`` across, and their extent.

    Reads the finest pyramid level that keeps the crop small enough (a single-scale image is read at
    every n-th pixel); ``(None, None)``, with a warning, for a rotated image or a region outside it.
    """
    cs = _sdata.coordinate_system(sdata)
    levels = _sdata.levels(sdata.images[image_key])
    matrices = [_sdata.affine_xy(level, cs) for level in levels]
    span = max(region[2] - region[0], region[3] - region[1])
    index = next(
        (i for i, matrix in enumerate(matrices) if span / _sdata.linear_scale(matrix) <= MAX_WINDOW_PX), len(levels) - 1
    )
    level, matrix = levels[index], matrices[index]
    if abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9:
        logger.warning("image %s is rotated or sheared in %r; drawing without it", image_key, cs)
        return None, None
    step = max(1, math.ceil(span / _sdata.linear_scale(matrix) / MAX_WINDOW_PX))
    if step > 1:  # a single-scale (or too fine) image: read every step-th pixel
        level = level.isel(x=slice(None, None, step), y=slice(None, None, step))
        matrix = matrix @ np.diag([float(step), float(step), 1.0])
    window, extent = read_window(level, matrix, region)
    if window is None:
        logger.warning("region %s lies outside image %s; drawing without it", region, image_key)
        return None, None
    logger.debug("read %s level %d (every %d px) over %s", image_key, index, step, region)
    return as_rgb(window), extent


def draw_background(axes: Axes | Sequence[Axes], rgb: np.ndarray | None, extent) -> None:
    """Show the RGB crop (if any) in each of ``axes``, in µm."""
    if rgb is None:
        return
    for ax in [axes] if not isinstance(axes, Sequence) else axes:
        ax.imshow(rgb, extent=extent, origin="upper", interpolation="nearest")


def cells_canvas(
    sdata: SpatialData,
    geometry: np.ndarray,
    region: Sequence[float] | None,
    image_key: str | None,
    *,
    name: str,
    side_um: float,
    ax: Axes | None,
    figsize: tuple[float, float] | None,
    size: tuple[float, float],
    focus: np.ndarray | None = None,
):
    """Start a plot of cell outlines (µm) over the image: the crop, the image under it, the outlines in it.

    ``region`` (``name`` in errors) defaults to a square of ``side_um`` around the median centroid of
    the cells ``focus`` selects (all cells when it selects none), or the image's centre without cells.
    Returns ``(fig, ax, region, in_region, outlines)``: ``in_region`` marks the cells drawn and
    ``outlines`` holds their vertices in that order.
    """
    import shapely

    if region is None:
        if len(geometry):
            centroids = shapely.get_coordinates(shapely.centroid(geometry))
            chosen = centroids[focus] if focus is not None and focus.any() else centroids
            centre = np.median(chosen, axis=0)
        elif image_key is not None:
            level = _sdata.level0(sdata.images[image_key])
            middle = np.array([[level.sizes["x"] / 2, level.sizes["y"] / 2]])
            centre = _sdata.apply_affine(_sdata.affine_xy(level, _sdata.coordinate_system(sdata)), middle)[0]
        else:
            centre = np.zeros(2)
        region = square(centre, side_um)
    region = check_region(region, name)
    rgb, extent = background(sdata, image_key, region) if image_key is not None else (None, None)
    in_region, outlines = outlines_in(geometry, region)
    fig, ax = new_axes(ax, figsize, default=size)
    draw_background(ax, rgb, extent)
    return fig, ax, region, in_region, outlines
