"""Observed and predicted expression of each spot over the H&E, in µm of the section's coordinate system."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._docs import inject_docs
from bitro._logging import logger

from ._prediction import observed_values, pearson, predicted_values
from ._utils import (
    NAN_COLOR,
    axes_grid,
    background,
    check_region,
    draw_background,
    finish,
    frame,
    image_choice,
    missing_legend,
    norm,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


def _spot_circles(sdata: SpatialData, table_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n_spots, 2)`` and radii of the table's spots in µm, ordered like the table's rows."""
    table = sdata.tables[table_key]
    attrs = table.uns.get("spatialdata_attrs", {})
    spots_key = _sdata.info(sdata).get(K.ATTR_SPOTS)
    if spots_key is None:
        region = attrs.get("region")
        spots_key = region if isinstance(region, str) else None
    if spots_key is None or spots_key not in sdata.shapes:
        raise KeyError(
            f"the spot circles {spots_key!r} of table {table_key!r} are not shapes of `sdata` "
            f"(shapes: {list(sdata.shapes)}); record them as attrs['bitro']['spots_key']."
        )
    ids = table.obs[attrs.get("instance_key", K.SPOT_ID_KEY)].to_numpy()
    try:
        centres, radii = _sdata.spots_um(sdata, spots_key, ids)
    except ValueError as err:
        raise ValueError(f"table {table_key!r}: {err}") from None
    if radii is None:
        raise ValueError(f"shapes {spots_key!r} must hold spot circles (points with a `radius` column).")
    return centres, radii


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


@inject_docs()
def spatial_prediction(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    key: str | None = None,
    table_key: str | None = None,
    image: bool | str = True,
    crop: Sequence[float] | None = None,
    cmap: str = "viridis",
    size: float | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
) -> list[Axes] | Figure | None:
    """Plot observed and predicted expression of each spot over the H&E.

    For each gene, two panels side by side: the observed log1p(CP10k) of the spot counts (each spot
    scaled to 10,000 counts over all genes of ``X``) and the prediction of the spots' prediction
    table (same units; :func:`bitro.get.predictions`), as circles of the spots' real radii, over a downscaled crop of the image. Both panels
    share one colour scale (one colour bar per gene); the predicted panel's title gives the Pearson
    r over the spots with a finite prediction (0 for a constant prediction, ``n/a`` when the
    observed values are constant). Spots without a prediction (NaN, e.g. no cell in the spot) are
    drawn as hollow grey circles. Genes without counts in the table (H&E-only data, or genes not in
    ``var``) get the predicted panel only.

    Parameters
    ----------
    sdata
        {doc_sdata} Needs the spot table, its spot circles and predictions written by
        :func:`bitro.tl.predict`.
    genes
        One gene or a list of genes among the predicted ones (the prediction table's ``var_names``).
    {doc_key}
    table_key
        Spot table holding the counts in ``X`` (default: the one the reader recorded).
    {doc_image}
    crop
        {doc_region} ``None`` shows all spots.
    {doc_cmap}
    size
        Factor on the spot radii (``None``: the real radius, 1.0).
    ncols
        Genes per row of the figure (each gene takes one or two panels); ``None``: one gene per
        row when observed panels are drawn, else up to four.
    {doc_figsize}
    ax
        Axes to draw into, one per panel in the order observed, predicted for each gene (a single
        :class:`~matplotlib.axes.Axes` when there is one panel); a new figure is made when ``None``.
    {doc_show_save}

    Returns
    -------
    list[~matplotlib.axes.Axes] | ~matplotlib.figure.Figure | None
        The figure when ``return_fig``, else the panels (observed, predicted for each gene) unless
        the figure was shown (then ``None``).

    Examples
    --------
    Predict with the bundled default model (trained on real genes, so the toy section's counts
    cannot be compared: only predicted panels are drawn):

    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.tl.predict(sdata)
    >>> axes = bt.pl.spatial_prediction(sdata, ["IGKC", "CD74"], crop=(1500, 800, 2000, 1200))
    """
    import matplotlib as mpl

    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("`genes`: give at least one gene.")
    table_key = table_key if table_key is not None else _sdata.recorded(sdata, K.ATTR_TABLE)
    if table_key not in sdata.tables:
        raise KeyError(f"`table_key`: {table_key!r} is not a table of `sdata` (tables: {list(sdata.tables)}).")
    table = sdata.tables[table_key]
    predicted, pred_key = predicted_values(sdata, genes, level="spots", key=key, align_to=table)
    observed = observed_values(table, genes, where=f"table {table_key!r}")
    cs = _sdata.coordinate_system(sdata)
    centres, radii = _spot_circles(sdata, table_key)
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
    region = check_region(crop, "crop")
    image_key = image_choice(sdata, image)
    rgb, extent = background(sdata, image_key, region) if image_key is not None else (None, None)

    per_gene = 2 if observed else 1
    if ncols is None:
        ncols = 1 if per_gene == 2 else min(len(genes), 4)
    if ncols < 1:
        raise ValueError(f"`ncols` must be at least 1, got {ncols}.")
    ncols = min(ncols, len(genes))
    n_rows = math.ceil(len(genes) / ncols)
    fig, axes = axes_grid(ax, per_gene * len(genes), n_rows, per_gene * ncols, figsize, panel_in=4.0)
    colormap = mpl.colormaps[cmap]

    for g, gene in enumerate(genes):
        panels = axes[per_gene * g : per_gene * (g + 1)]
        pred = predicted[:, g]
        obs = observed.get(gene)
        scale = norm(pred) if obs is None else norm(pred, obs)
        draw_background(panels, rgb, extent)
        if per_gene == 2:
            if obs is None:
                panels[0].text(
                    0.5, 0.5, f"{gene}\nnot measured", ha="center", va="center", transform=panels[0].transAxes
                )
            else:
                n_nan = _draw_spots(panels[0], centres, radii, obs, colormap, scale, "observed")
                if n_nan:
                    missing_legend(panels[0], n_nan, "no counts")
            frame(panels[0], region, cs, f"{gene} observed")
        n_nan = _draw_spots(panels[-1], centres, radii, pred, colormap, scale, "predicted")
        title = f"{gene} predicted"
        if obs is not None:
            r = pearson(obs, pred)
            title += f" (r = {r:.2f})" if np.isfinite(r) else " (r = n/a)"
        frame(panels[-1], region, cs, title)
        if n_nan:
            missing_legend(panels[-1], n_nan, "no prediction")
        mappable = mpl.cm.ScalarMappable(norm=scale, cmap=colormap)
        fig.colorbar(mappable, ax=panels, label=f"{gene}, log1p(CP10k)", shrink=0.8)
    logger.info("plotted %d genes of %s over %d spots", len(genes), pred_key, len(centres))
    return finish(fig, axes, own_figure=ax is None, show=show, save=save, return_fig=return_fig)
