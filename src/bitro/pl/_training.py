"""Training and validation loss per epoch of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def training_history(
    model: object,
    *,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Plot the training and validation loss of each epoch, with the best epoch marked.

    Reads ``model.history`` (a DataFrame with columns ``epoch``, ``train_loss`` and ``val_loss``;
    the validation loss may be NaN, e.g. without a validation split) and ``model.best_epoch``
    (the epoch whose weights were kept, or ``None``), drawn as a dashed vertical line.

    Parameters
    ----------
    model
        A trained model with a ``history`` DataFrame.
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
    >>> model = bt.tl.fit([bt.datasets.toy_st(seed=s) for s in range(3)], max_epochs=10)  # doctest: +SKIP
    >>> bt.pl.training_history(model)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
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

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize if figsize is not None else (6.0, 4.0), layout="constrained")
    else:
        fig = ax.figure
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
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    return fig
