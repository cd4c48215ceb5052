"""Predicted expression over the H&E: spots (observed vs predicted) and cells, in µm of the section's coordinate system."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro.pl._segmentation import MAX_WINDOW_PX, _as_rgb, _read_window

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

DEFAULT_CELL_CROP_UM = 300.0
"""Side (µm) of the default crop of :func:`cell_expression`, centred on the median cell."""
NAN_COLOR = "grey"
"""Edge colour of spots and cells without a prediction (drawn hollow)."""
N_LISTED = 10
"""How many available genes / keys an error message lists."""


# --- data access ---------------------------------------------------------------------------------


def prediction_genes(adata: AnnData, key: str = K.PRED_KEY) -> list[str]:
    """Gene names of the columns of ``adata.obsm[key]``, in column order.

    ``uns[key]["var_names"]`` maps each gene to its column (a dict survives a zarr round trip where a
    list of strings does not); a plain list or array is accepted too.
    """
    if key not in adata.obsm:
        raise KeyError(
            f"`key`: {key!r} is not in obsm (obsm keys: {list(adata.obsm)}); run bt.tl.predict first or pass its key."
        )
    meta = adata.uns.get(key)
    names = meta.get("var_names") if hasattr(meta, "get") else None
    if names is None:
        raise KeyError(
            f"`key`: uns[{key!r}]['var_names'] is missing, so the columns of obsm[{key!r}] have no gene names; "
            "was it written by bt.tl.predict?"
        )
    if hasattr(names, "items"):
        genes = [str(g) for g, _ in sorted(names.items(), key=lambda item: int(np.asarray(item[1])))]
        index = sorted(int(np.asarray(i)) for i in names.values())
        if index != list(range(len(genes))):
            raise ValueError(f"uns[{key!r}]['var_names'] must map genes to the columns 0..{len(genes) - 1}.")
    else:
        genes = [str(g) for g in np.asarray(names).ravel()]
    n_cols = np.asarray(adata.obsm[key]).shape[1]
    if len(genes) != n_cols:
        raise ValueError(f"uns[{key!r}]['var_names'] names {len(genes)} genes but obsm[{key!r}] has {n_cols} columns.")
    return genes


def _predicted(adata: AnnData, key: str, genes: Sequence[str]) -> np.ndarray:
    """``(n_obs, len(genes))`` predictions of ``genes`` (float, NaN kept)."""
    names = prediction_genes(adata, key)
    lookup = {g: i for i, g in enumerate(names)}
    unknown = [g for g in genes if g not in lookup]
    if unknown:
        listed = ", ".join(names[:N_LISTED]) + (", ..." if len(names) > N_LISTED else "")
        raise KeyError(
            f"gene(s) {unknown} were not predicted in obsm[{key!r}] ({len(names)} predicted genes: {listed})."
        )
    values = np.asarray(adata.obsm[key])
    return np.asarray(values[:, [lookup[g] for g in genes]], dtype=float)


def _observed(adata: AnnData, genes: Sequence[str]) -> dict[str, np.ndarray]:
    """log1p(CP10k) of the counts in ``X`` for those ``genes`` that are in ``var`` (each spot scaled to 1e4 over all genes)."""
    import scipy.sparse as sp

    present = [g for g in dict.fromkeys(genes) if g in adata.var_names]
    if adata.X is None or not present:
        return {}
    X = adata.X
    totals = np.asarray(X.sum(axis=1), dtype=float).ravel()
    columns = X[:, adata.var_names.get_indexer(present)]
    columns = columns.toarray() if sp.issparse(columns) else np.asarray(columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(totals[:, None] > 0, columns / totals[:, None] * 1e4, np.nan)
    logged = np.log1p(scaled)
    return {g: logged[:, i] for i, g in enumerate(present)}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _spots_um(sdata: SpatialData, table_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n_spots, 2)`` and radii of the table's spots in µm, ordered like the table's rows."""
    import shapely

    info = _sdata.info(sdata)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    table = sdata.tables[table_key]
    attrs = table.uns.get("spatialdata_attrs", {})
    spots_key = info.get(K.ATTR_SPOTS)
    if spots_key is None:
        region = attrs.get("region")
        spots_key = region if isinstance(region, str) else None
    if spots_key is None or spots_key not in sdata.shapes:
        raise KeyError(
            f"the spot circles {spots_key!r} of table {table_key!r} are not shapes of `sdata` "
            f"(shapes: {list(sdata.shapes)}); record them as attrs['bitro']['spots_key']."
        )
    spots = sdata.shapes[spots_key]
    if "radius" not in spots.columns:
        raise ValueError(f"shapes {spots_key!r} must hold spot circles (points with a `radius` column).")
    instance_key = attrs.get("instance_key", K.SPOT_ID_KEY)
    ids = table.obs[instance_key].to_numpy()
    missing = ~pd.Index(ids).isin(spots.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} spots of table {table_key!r} have no circle in {spots_key!r}.")
    matrix = _sdata.affine_xy(spots, cs)
    centres = _sdata.apply_affine(matrix, shapely.get_coordinates(spots.geometry.loc[ids].to_numpy()))
    radii = spots["radius"].loc[ids].to_numpy(dtype=float) * _sdata.linear_scale(matrix)
    return centres, radii


def _check_region(region, name: str) -> tuple[float, float, float, float]:
    region = tuple(float(v) for v in region)
    if len(region) != 4 or not (region[2] > region[0] and region[3] > region[1]):
        raise ValueError(f"`{name}` must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0 (µm), got {region!r}.")
    return region


def _image_choice(sdata: SpatialData, image: bool | str, *, prefer: str | None = None) -> str | None:
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


def _background(sdata: SpatialData, image_key: str, region: tuple[float, float, float, float]):
    """RGB pixels of ``image_key`` over ``region`` (µm), at most ``MAX_WINDOW_PX`` across, and their extent."""
    cs = _sdata.info(sdata)[K.ATTR_COORDINATE_SYSTEM]
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
    window, extent = _read_window(level, matrix, region)
    if window is None:
        logger.warning("region %s lies outside image %s; drawing without it", region, image_key)
        return None, None
    return _as_rgb(window), extent


def _norm(*arrays: np.ndarray):
    import matplotlib as mpl

    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return mpl.colors.Normalize(vmin=lo, vmax=hi)


def _finish(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    return fig


def _axes_grid(ax, n_panels: int, n_rows: int, n_cols: int, figsize, panel_in: float):
    """``n_panels`` axes in an ``n_rows x n_cols`` grid of a new figure, or the axes given."""
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


def _frame(ax: Axes, region, cs: str, title: str) -> None:
    ax.set_xlim(region[0], region[2])
    ax.set_ylim(region[3], region[1])  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel(f"x (µm, {cs})", fontsize="small")
    ax.set_ylabel(f"y (µm, {cs})", fontsize="small")
    ax.tick_params(labelsize="x-small")
    ax.set_title(title, fontsize="medium")


def _missing_legend(ax: Axes, n: int, what: str) -> None:
    from matplotlib.patches import Patch

    handle = Patch(facecolor="none", edgecolor=NAN_COLOR, label=f"{what} ({n})")
    ax.legend(handles=[handle], loc="lower right", fontsize="x-small", frameon=True)


# --- spots ---------------------------------------------------------------------------------------


def _draw_spots(ax: Axes, centres: np.ndarray, radii: np.ndarray, values: np.ndarray, cmap, norm, label: str) -> int:
    """Coloured circles for finite ``values``, hollow grey circles for NaN ones; returns the number of NaN spots."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    finite = np.isfinite(values)
    circles = [Circle(tuple(c), r) for c, r in zip(centres[finite], radii[finite], strict=True)]
    coloured = PatchCollection(circles, cmap=cmap, norm=norm, edgecolors="none")
    coloured.set_array(values[finite])
    coloured.set_label(label)
    ax.add_collection(coloured)
    n_nan = int((~finite).sum())
    if n_nan:
        hollow = [Circle(tuple(c), r) for c, r in zip(centres[~finite], radii[~finite], strict=True)]
        empty = PatchCollection(hollow, facecolors="none", edgecolors=NAN_COLOR, linewidths=0.8)
        empty.set_label(f"{label}: NaN")
        ax.add_collection(empty)
    return n_nan


def spatial_prediction(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    key: str = K.PRED_KEY,
    table_key: str = K.TABLE_KEY,
    image: bool | str = True,
    crop: Sequence[float] | None = None,
    cmap: str = "viridis",
    size: float | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Plot observed and predicted expression of each spot over the H&E.

    For each gene, two panels side by side: the observed log1p(CP10k) of the spot counts (each spot
    scaled to 10,000 counts over all genes of ``X``) and the prediction in ``obsm[key]`` (same
    units), as circles of the spots' real radii in µm of the coordinate system recorded in
    ``sdata.attrs["bitro"]``, over a downscaled crop of the image. Both panels share one colour
    scale (one colour bar per gene); the predicted panel's title gives the Pearson r over the spots
    with a finite prediction. Spots without a prediction (NaN, e.g. no cell in the spot) are drawn
    as hollow grey circles. Genes without counts in the table (H&E-only data, or genes not in
    ``var``) get the predicted panel only.

    Parameters
    ----------
    sdata
        Spatial data with the spot table, its spot circles and predictions written by ``bt.tl.predict``.
    genes
        One gene or a list of genes among the predicted ones (``uns[key]["var_names"]``).
    key
        ``obsm`` key of the predictions (``uns[key]["var_names"]`` names their columns).
    table_key
        Spot table holding the counts in ``X`` and the predictions.
    image
        Draw the image recorded in ``attrs["bitro"]["image_key"]`` (``True``), the image of that
        key (a string), or no image (``False``).
    crop
        Region ``(x0, y0, x1, y1)`` in µm of the coordinate system; ``None`` shows all spots.
    cmap
        Matplotlib colour map of the values.
    size
        Factor on the spot radii (``None``: the real radius, 1.0).
    ncols
        Genes per row of the figure (each gene takes one or two panels); ``None``: one gene per
        row when observed panels are drawn, else up to four.
    figsize
        Size of a new figure (inches); ``None`` sizes it from the number of panels.
    ax
        Axes to draw into, one per panel in the order observed, predicted for each gene (a single
        :class:`~matplotlib.axes.Axes` when there is one panel); a new figure is made when ``None``.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.tl.predict(sdata, model)  # model from bt.tl.fit  # doctest: +SKIP
    >>> bt.pl.spatial_prediction(sdata, ["gene0001", "gene0002"])  # doctest: +SKIP
    """
    import matplotlib as mpl

    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("`genes`: give at least one gene.")
    if table_key not in sdata.tables:
        raise KeyError(f"`table_key`: {table_key!r} is not a table of `sdata` (tables: {list(sdata.tables)}).")
    table = sdata.tables[table_key]
    predicted = _predicted(table, key, genes)
    observed = _observed(table, genes)
    info = _sdata.info(sdata)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    centres, radii = _spots_um(sdata, table_key)
    if size is not None:
        if size <= 0:
            raise ValueError(f"`size` must be positive, got {size}.")
        radii = radii * float(size)

    if crop is None:
        if len(centres):
            reach = float(radii.max())
            lo, hi = centres.min(axis=0) - reach, centres.max(axis=0) + reach
            crop = (lo[0], lo[1], hi[0], hi[1])
        else:
            crop = (0.0, 0.0, 1.0, 1.0)
    region = _check_region(crop, "crop")
    image_key = _image_choice(sdata, image)
    rgb, extent = _background(sdata, image_key, region) if image_key is not None else (None, None)

    per_gene = 2 if observed else 1
    if ncols is None:
        ncols = 1 if per_gene == 2 else min(len(genes), 4)
    if ncols < 1:
        raise ValueError(f"`ncols` must be at least 1, got {ncols}.")
    ncols = min(ncols, len(genes))
    n_rows = math.ceil(len(genes) / ncols)
    fig, axes = _axes_grid(ax, per_gene * len(genes), n_rows, per_gene * ncols, figsize, panel_in=4.0)
    colormap = mpl.colormaps[cmap]

    for g, gene in enumerate(genes):
        panels = axes[per_gene * g : per_gene * (g + 1)]
        pred = predicted[:, g]
        obs = observed.get(gene)
        norm = _norm(pred) if obs is None else _norm(pred, obs)
        for panel in panels:
            if rgb is not None:
                panel.imshow(rgb, extent=extent, origin="upper", interpolation="nearest")
        if per_gene == 2:
            if obs is None:
                panels[0].text(
                    0.5, 0.5, f"{gene}\nnot measured", ha="center", va="center", transform=panels[0].transAxes
                )
                _frame(panels[0], region, cs, f"{gene} observed")
            else:
                n_nan = _draw_spots(panels[0], centres, radii, obs, colormap, norm, "observed")
                _frame(panels[0], region, cs, f"{gene} observed")
                if n_nan:
                    _missing_legend(panels[0], n_nan, "no counts")
        n_nan = _draw_spots(panels[-1], centres, radii, pred, colormap, norm, "predicted")
        title = f"{gene} predicted"
        if obs is not None:
            r = _pearson(obs, pred)
            title += f" (r = {r:.2f})" if np.isfinite(r) else " (r = n/a)"
        _frame(panels[-1], region, cs, title)
        if n_nan:
            _missing_legend(panels[-1], n_nan, "no prediction")
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=colormap)
        fig.colorbar(mappable, ax=panels, label=f"{gene}, log1p(CP10k)", shrink=0.8)
    logger.info("plotted %d genes of %s.obsm[%r] over %d spots", len(genes), table_key, key, len(centres))
    return _finish(fig, save)


# --- cells ---------------------------------------------------------------------------------------


def cell_expression(
    sdata: SpatialData,
    gene: str,
    *,
    key: str = K.PRED_KEY,
    image: bool | str = True,
    crop: Sequence[float] | None = None,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Plot the predicted expression of each cell on its outline over a crop of the H&E.

    Cell polygons of ``attrs["bitro"]["cells_shapes_key"]`` are matched to the rows of the cells
    table by its instance key, mapped to µm of the recorded coordinate system, and filled with the
    prediction in ``obsm[key]`` of the cells table (one :class:`~matplotlib.collections.PolyCollection`);
    cells without a prediction (NaN: outside every bag) are drawn hollow and grey.

    Parameters
    ----------
    sdata
        Spatial data with a cells layer and per-cell predictions written by ``bt.tl.predict``.
    gene
        A predicted gene (``uns[key]["var_names"]`` of the cells table).
    key
        ``obsm`` key of the predictions in the cells table.
    image
        Draw the image the cells were segmented on (``True``), the image of that key (a string), or
        no image (``False``).
    crop
        Region ``(x0, y0, x1, y1)`` in µm of the coordinate system; ``None`` shows a 300 µm square
        around the median cell with a prediction.
    cmap
        Matplotlib colour map of the values.
    figsize
        Size of a new figure (inches).
    ax
        Axes to draw into; a new figure is made when ``None``.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.tl.predict(sdata, model)  # model from bt.tl.fit  # doctest: +SKIP
    >>> bt.pl.cell_expression(sdata, "gene0001", crop=(1500, 800, 1800, 1100))  # doctest: +SKIP
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    import shapely
    from matplotlib.collections import PolyCollection

    if not isinstance(gene, str):
        raise TypeError(f"`gene` must be one gene name, got {gene!r}.")
    info = _sdata.info(sdata)
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    table_key, shapes_key, geometry = _sdata.cell_boundaries(sdata)
    table, shapes = sdata.tables[table_key], sdata.shapes[shapes_key]
    values = _predicted(table, key, [gene])[:, 0]
    matrix = _sdata.affine_xy(shapes, cs)
    geometry_um = shapely.transform(geometry, lambda xy: _sdata.apply_affine(matrix, xy)) if len(geometry) else geometry
    finite = np.isfinite(values)

    if crop is None:
        if len(geometry_um):
            centroids = shapely.get_coordinates(shapely.centroid(geometry_um))
            centre = np.median(centroids[finite] if finite.any() else centroids, axis=0)
        else:
            centre = np.zeros(2)
        half = DEFAULT_CELL_CROP_UM / 2
        crop = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    region = _check_region(crop, "crop")
    image_key = _image_choice(sdata, image, prefer=info.get(K.ATTR_CELLS_IMAGE))
    rgb, extent = _background(sdata, image_key, region) if image_key is not None else (None, None)

    in_region = shapely.intersects(geometry_um, shapely.box(*region)) if len(geometry_um) else np.zeros(0, bool)
    outlines = {}
    for i in np.flatnonzero(in_region):
        geom = geometry_um[i]
        if geom.geom_type == "MultiPolygon":
            geom = max(geom.geoms, key=lambda part: part.area)
        outlines[i] = np.asarray(geom.exterior.coords) if geom.geom_type == "Polygon" else shapely.get_coordinates(geom)

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize if figsize is not None else (6.5, 5.5), layout="constrained")
    else:
        fig = ax.figure
    if rgb is not None:
        ax.imshow(rgb, extent=extent, origin="upper", interpolation="nearest")
    shown = in_region & finite
    colormap = mpl.colormaps[cmap]
    norm = _norm(values[shown] if shown.any() else values)
    filled = PolyCollection(
        [outlines[i] for i in np.flatnonzero(shown)], cmap=colormap, norm=norm, edgecolors="none", alpha=0.9
    )
    filled.set_array(values[shown])
    filled.set_label(gene)
    ax.add_collection(filled)
    empty_cells = in_region & ~finite
    if empty_cells.any():
        hollow = PolyCollection(
            [outlines[i] for i in np.flatnonzero(empty_cells)],
            facecolors="none",
            edgecolors=NAN_COLOR,
            linewidths=0.6,
        )
        hollow.set_label(f"{gene}: NaN")
        ax.add_collection(hollow)
        _missing_legend(ax, int(empty_cells.sum()), "no prediction")
    fig.colorbar(filled, ax=ax, label=f"{gene}, log1p(CP10k)", shrink=0.8)
    _frame(ax, region, cs, f"{gene} predicted: {int(shown.sum())} cells")
    logger.info(
        "plotted %s for %d cells of %s (%d without a prediction)",
        gene,
        int(shown.sum()),
        shapes_key,
        int(empty_cells.sum()),
    )
    return _finish(fig, save)
