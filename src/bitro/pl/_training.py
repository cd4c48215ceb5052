"""Training and validation loss per epoch of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro._docs import inject_docs

from ._utils import finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@inject_docs()
def training_history(
    model: object,
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
) -> Axes | Figure | None:
    """Plot the training and validation loss of each epoch, with the best epoch marked.

    Reads ``model.history`` (a DataFrame with columns ``epoch``, ``train_loss`` and ``val_loss``;
    the validation loss may be NaN, e.g. without a validation split) and ``model.best_epoch``
    (the epoch whose weights were kept, or ``None``), drawn as a dashed vertical line. A new figure
    is 6 x 4 inches; for another size pass ``ax`` from ``plt.subplots(figsize=...)``.

    Parameters
    ----------
    model
        A trained model with a ``history`` DataFrame, e.g. from :func:`bitro.tl.fit`.
    {doc_plot_end}

    Examples
    --------
    >>> import bitro as bt
    >>> ax = bt.pl.training_history(bt.models.default_model())
    >>> [line.get_label() for line in ax.get_lines()][:2]
    ['train', 'validation']
    """
    from matplotlib.ticker import MaxNLocator

    history = getattr(model, "history", None)
    if history is None or len(history) == 0:
        raise ValueError(f"`model` ({type(model).__name__}) has no training history: train it first.")
    if not isinstance(history, pd.DataFrame):
        history = pd.DataFrame(history)
    missing = [c for c in ("epoch", "train_loss") if c not in history.columns]
    if missing:
        raise ValueError(
            f"`model.history` lacks the column(s) {missing} (columns: {list(history.columns)}); "
            "expected epoch, train_loss and val_loss."
        )
    epochs = history["epoch"].to_numpy(dtype=float)
    marker = "o" if len(history) <= 30 else None

    own_figure = ax is None
    fig, ax = new_axes(ax, None, default=(6.0, 4.0))
    ax.plot(epochs, history["train_loss"].to_numpy(dtype=float), marker=marker, markersize=3, label="train")
    if "val_loss" in history.columns:
        val = history["val_loss"].to_numpy(dtype=float)
        if np.isfinite(val).any():
            ax.plot(epochs, val, marker=marker, markersize=3, label="validation")
    best = getattr(model, "best_epoch", None)
    if best is not None:
        ax.axvline(float(best), color="grey", linestyle="--", linewidth=1.0, label=f"best epoch ({best})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"training history: {len(history)} epochs")
    ax.legend(fontsize="small")
    return finish(fig, ax, own_figure=own_figure, show=show, save=save, return_fig=return_fig)
