"""Data the prediction plots read: predicted values (:mod:`bitro.get`), observed values and their r."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData


def predicted_values(sdata, genes: Sequence[str], *, level: str, key: str | None, align_to) -> tuple[np.ndarray, str]:
    """``(n_rows, len(genes))`` predictions (float, NaN kept) ordered like the rows of table ``align_to``, and the table's key.

    Rows are matched on the instance ids of the shapes both tables annotate.
    """
    from bitro.get import prediction_df, predictions

    table = predictions(sdata, level=level, key=key)
    name = next(k for k, v in sdata.tables.items() if v is table)
    df = prediction_df(sdata, list(genes), level=level, key=name)
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key")
    rows = pd.Index(table.obs[instance_key].to_numpy()).get_indexer(align_to.obs[instance_key].to_numpy())
    values = np.full((align_to.n_obs, len(genes)), np.nan)
    values[rows >= 0] = df.to_numpy(dtype=float)[rows[rows >= 0]]
    return values, name


def observed_values(adata: AnnData, genes: Sequence[str], *, where: str) -> dict[str, np.ndarray]:
    """log1p(CP10k) of the counts in ``X`` of those ``genes`` that are in ``var`` (NaN for spots without counts)."""
    from bitro._expression import log_cp10k

    present = [g for g in dict.fromkeys(genes) if g in adata.var_names]
    if adata.X is None or not present:
        return {}
    logged = log_cp10k(adata.X, where=where, columns=adata.var_names.get_indexer(present))
    return {g: np.asarray(logged[:, i], dtype=float) for i, g in enumerate(present)}


def pearson(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson r of one gene over the spots where both are finite (:func:`bitro.tl._metrics.pearson_per_gene`).

    NaN when fewer than two spots are left or the observed values are constant; 0.0 for a constant
    prediction of varying observed values.
    """
    from bitro.tl._metrics import pearson_per_gene

    return float(pearson_per_gene(np.asarray(observed)[:, None], np.asarray(predicted)[:, None])[0])
