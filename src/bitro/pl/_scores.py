"""Per-gene Pearson r of the model and its baselines, as grouped horizontal bars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro._docs import inject_docs
from bitro._validate import check_int

from ._utils import finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OTHER_METRICS = frozenset({"mse", "fold", "fit_s", "seed"})
"""Numeric columns of :func:`bitro.tl.evaluate` / :func:`bitro.tl.cross_validate` that are not a Pearson r
(as are counts, ``n_*``)."""


def _score_table(scores: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """Rows x methods of Pearson r, from a Series, a DataFrame, a metrics table or a summary with ``attrs["per_gene"]``."""
    if isinstance(scores, pd.Series):
        table = scores.to_frame(name=scores.name if scores.name is not None else "r")
    elif isinstance(scores, pd.DataFrame):
        per_gene = scores.attrs.get("per_gene")
        rows = scores.attrs.get("per_gene_rows")
        if per_gene is not None and rows is not None and rows != len(scores):
            # pandas keeps attrs through a selection: the per-gene means would still be the whole table's
            raise ValueError(
                f"`scores` holds {len(scores)} of the {rows} rows its attrs['per_gene'] averages (a selection of "
                "a bt.tl.cross_validate table): pass the whole table, or per-gene scores (genes x methods)."
            )
        if isinstance(per_gene, dict):  # bt.tl.cross_validate: {method: {gene: r}}
            per_gene = pd.DataFrame(per_gene)
        table = per_gene if isinstance(per_gene, pd.DataFrame) else scores
    else:
        raise TypeError(
            f"`scores` must be a pandas DataFrame (genes x methods) or Series, got {type(scores).__name__}."
        )
    numeric = table.select_dtypes(include="number")
    names = [str(c) for c in numeric.columns]
    pearson = [c for c, name in zip(numeric.columns, names, strict=True) if "pearson" in name.lower()]
    if pearson:  # a metrics table (bt.tl.evaluate, bt.tl.cross_validate): its Pearson columns only
        numeric = numeric[pearson]
    elif any(name in OTHER_METRICS or name.startswith("n_") for name in names):
        raise ValueError(
            f"`scores` looks like a metrics table but has no Pearson column (a name containing 'pearson'); "
            f"numeric columns: {names}. Pass per-gene Pearson r (genes x methods) instead."
        )
    if numeric.shape[1] == 0 or numeric.shape[0] == 0:
        raise ValueError(
            f"`scores` has no per-gene numbers to plot (shape {table.shape}, columns {list(table.columns)})."
        )
    numeric = numeric.astype(float)
    numeric.index = numeric.index.astype(str)
    numeric.columns = numeric.columns.astype(str)
    return numeric


@inject_docs()
def gene_scores(
    scores: pd.DataFrame | pd.Series,
    *,
    n_genes: int = 30,
    sort_by: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot the per-gene Pearson r of each method as grouped horizontal bars.

    Genes are sorted by ``sort_by``, best first, and the top ``n_genes`` are shown, one group of
    bars per gene (one bar per method, e.g. the model and its ridge and mean baselines). The legend
    gives each method's mean r over *all* genes (NaN ignored), not just the ones shown. Only Pearson
    r is drawn: of a metrics table (the DataFrame :func:`bitro.tl.evaluate` returns, one row per
    section) only the columns whose name contains ``"pearson"``, never counts or MSE.

    Parameters
    ----------
    scores
        Per-gene scores: a DataFrame with genes as index and one column per method, or a Series for
        one method. A DataFrame carrying ``attrs["per_gene"]`` (a genes x methods DataFrame, or
        ``{method: {gene: r}}`` as :func:`bitro.tl.cross_validate` stores it) is replaced by it. A
        metrics table is reduced to its Pearson columns (an error if it has none).
    n_genes
        How many genes (rows) to show.
    sort_by
        Column (method) to sort genes by, descending; ``None`` uses the first column.
    {doc_figsize}
    {doc_plot_end}

    Examples
    --------
    >>> import pandas as pd
    >>> import bitro as bt
    >>> scores = pd.DataFrame({"bitro": [0.6, 0.4], "ridge": [0.5, 0.3]}, index=["ERBB2", "KRT5"])
    >>> ax = bt.pl.gene_scores(scores, n_genes=10)
    >>> [label.get_text() for label in ax.get_yticklabels()]
    ['ERBB2', 'KRT5']
    """
    import matplotlib.pyplot as plt

    table = _score_table(scores)
    n_genes = check_int(n_genes, "n_genes", min_value=1)
    sort_by = table.columns[0] if sort_by is None else str(sort_by)
    if sort_by not in table.columns:
        raise KeyError(f"`sort_by`: {sort_by!r} is not a method of `scores` (methods: {list(table.columns)}).")
    shown = table.sort_values(sort_by, ascending=False, na_position="last").head(n_genes)
    means = table.mean(axis=0, skipna=True)
    rows = "genes" if table.index.name in (None, "gene", "genes") else f"{table.index.name}s"

    n_methods = table.shape[1]
    own_figure = ax is None
    fig, ax = new_axes(ax, figsize, default=(7.5, 1.0 + 0.12 * len(shown) * max(n_methods, 2)))
    y = np.arange(len(shown), dtype=float)
    bar = 0.8 / n_methods
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for m, method in enumerate(table.columns):
        offset = (m - (n_methods - 1) / 2) * bar
        ax.barh(
            y + offset,
            shown[method].to_numpy(),
            height=bar,
            color=cycle[m % len(cycle)],
            label=f"{method} (mean r = {means[method]:.3f})",
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, shown.index, fontsize="small")
    ax.set_ylim(len(shown) - 0.5, -0.5)  # best gene on top
    ax.set_xlabel("Pearson r")
    ax.set_title(f"top {len(shown)} of {len(table)} {rows} by {sort_by}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return finish(fig, ax, own_figure=own_figure, show=show, save=save, return_fig=return_fig)
