"""Score predictions against observed expression with the protocol of DESIGN.md §5."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

from ._metrics import bulk_metrics, pearson_per_gene, spot_metrics

if TYPE_CHECKING:
    from spatialdata import SpatialData

N_TOP_HVG = 50
"""Metrics are also reported on the first ``N_TOP_HVG`` predicted genes (the model's most variable)."""


def _prediction(table, key: str, where: str) -> tuple[np.ndarray, list[str]]:
    if key not in table.obsm or key not in table.uns or "var_names" not in table.uns[key]:
        raise KeyError(
            f"{where}: no predictions under {key!r} (obsm keys: {list(table.obsm)}); run bt.tl.predict first."
        )
    names = table.uns[key]["var_names"]
    genes = sorted(names, key=lambda g: int(names[g])) if isinstance(names, dict) else [str(g) for g in names]
    return np.asarray(table.obsm[key], dtype=np.float64), genes


def _truth(table, genes: list[str], where: str) -> np.ndarray:
    from bitro._expression import gene_columns, log_cp10k

    cols = gene_columns(table, genes, where=where)
    return log_cp10k(table.X, where=where, columns=cols).astype(np.float64)


def evaluate(
    sdata: SpatialData | Sequence[SpatialData],
    *,
    key: str = K.PRED_KEY,
    genes: Sequence[str] | None = None,
    key_added: str = K.PEARSON_KEY,
) -> pd.DataFrame:
    """Score predictions against the observed expression of the same data.

    Spots: per-gene Pearson across the spots of each section, averaged over genes (mean and
    median, on all predicted genes and on the model's 50 most variable), pooled Pearson (all values
    together, labelled as such), per-spot Pearson across genes, and MSE; one row per section.
    Slides (bulk predictions): per-gene Pearson across the slides of the list, the number of genes
    with r > 0.4 and FDR < 0.05, per-sample Pearson across genes (secondary), MSE; one row.
    Observed expression is log1p(CP10k) of the table's counts, the units of the predictions.

    Parameters
    ----------
    sdata
        A section, or a list of sections or of slides, with predictions from :func:`bitro.tl.predict`.
    key
        ``obsm`` / ``uns`` key of the predictions.
    genes
        Score only these predicted genes (default: all).
    key_added
        ``var`` column for each gene's Pearson r (NaN for genes not scored).

    Returns
    -------
    One row per section (spots) or one row for the cohort (slides), metrics as columns. Also
    writes ``var[key_added]`` and ``uns["bitro_eval"]`` (the metrics) of each table.

    Examples
    --------
    >>> import bitro as bt
    >>> bt.tl.predict(sdata, model)  # doctest: +SKIP
    >>> bt.tl.evaluate(sdata)  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    sdatas = [sdata] if isinstance(sdata, SpatialData) else list(sdata)
    if not sdatas:
        raise ValueError("`sdata` is an empty list.")
    entries = []
    for s in sdatas:
        sample = _sdata.sample_id(s)
        table_key = _sdata.recorded(s, K.ATTR_TABLE)
        if table_key not in s.tables:
            raise KeyError(f"{sample}: no table {table_key!r} with observed expression to evaluate against.")
        table = _sdata.editable_table(s, table_key)
        pred, pred_genes = _prediction(table, key, sample)
        use = pred_genes if genes is None else [str(g) for g in genes]
        missing = [g for g in use if g not in pred_genes]
        if missing:
            raise KeyError(f"`genes`: {len(missing)} genes were not predicted (e.g. {missing[:5]}).")
        cols = [pred_genes.index(g) for g in use]
        kind = table.uns[key].get("params", {}).get("target", "spot")
        entries.append((s, sample, table_key, table, pred[:, cols], _truth(table, use, sample), use, kind))

    kinds = {e[-1] for e in entries}
    if len(kinds) > 1:
        raise ValueError(f"`sdata` mixes spot and slide predictions ({sorted(kinds)}); evaluate them separately.")
    top = list(range(min(N_TOP_HVG, len(entries[0][6]))))

    rows = []
    if kinds == {"bulk"}:
        genes0 = entries[0][6]
        if any(e[6] != genes0 for e in entries):
            raise ValueError("slides were predicted with different gene panels; evaluate them separately.")
        y_true = np.vstack([e[5] for e in entries])
        y_pred = np.vstack([e[4] for e in entries])
        if len(entries) < 3:
            raise ValueError(f"bulk evaluation is across slides: pass a list of at least 3 slides, got {len(entries)}.")
        metrics = bulk_metrics(y_true, y_pred)
        r = pearson_per_gene(y_true, y_pred)
        rows.append(dict(sample="cohort", level="slide", **metrics))
        per_gene = {e[1]: r for e in entries}
    else:
        per_gene = {}
        for _, sample, _, _, pred, truth, _, _ in entries:
            metrics = spot_metrics(truth, pred, hvg_index=np.asarray(top))
            if metrics["n_obs_dropped"]:
                logger.info("%s: %d spots without a prediction are not scored", sample, metrics["n_obs_dropped"])
            rows.append(dict(sample=sample, level="spot", **metrics))
            per_gene[sample] = pearson_per_gene(truth, pred)

    for (s, sample, table_key, table, _, _, use, _), row in zip(
        entries, rows * len(entries) if kinds == {"bulk"} else rows, strict=True
    ):
        r = pd.Series(np.nan, index=table.var_names)
        names = pd.Index(table.var_names.astype(str))
        idx = names.get_indexer(use)
        r.iloc[idx[idx >= 0]] = per_gene[sample][idx >= 0]
        table.var[key_added] = r.to_numpy()
        table.uns[K.EVAL_KEY] = {
            "key": key,
            "n_top_hvg": len(top),
            **{k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in row.items()},
        }
        _sdata.write(s, {table_key: table})
    return pd.DataFrame(rows).set_index("sample")
