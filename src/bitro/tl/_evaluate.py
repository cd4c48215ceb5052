"""Score predictions against observed expression with the protocol of DESIGN.md §5."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._threads import torch_threads_kept
from bitro._validate import check_names

from ._metrics import bulk_metrics, pearson_per_gene, spot_metrics

if TYPE_CHECKING:
    from spatialdata import SpatialData

N_TOP_HVG = 50
"""Metrics are also reported on the first ``N_TOP_HVG`` predicted genes (the model's most variable)."""
Z_80 = 1.2815515655446004
"""The 90 % quantile of the standard normal: prediction ± Z_80 x sd is a nominal 80 % interval."""
N_NEIGHBOURS = 6
"""Spatial neighbours of each spot for Moran's I (the six of a hexagonal grid)."""


def _entry(s, key: str | None, genes: Sequence[str] | None):
    """One sample's aligned (prediction table, predicted, observed, sd) over the chosen genes."""
    from bitro._expression import gene_columns, log_cp10k
    from bitro.get import predictions

    sample = _sdata.sample_id(s)
    table_key = _sdata.recorded(s, K.ATTR_TABLE)
    if table_key not in s.tables:
        raise KeyError(f"{sample}: no table {table_key!r} with observed expression to evaluate against.")
    observed = s.tables[table_key]
    level = "cells" if key is not None and key.endswith("_cells") else "spots"
    pred = predictions(s, level=level, key=key)
    if level == "cells":
        raise ValueError("`key`: cell predictions have no measured counts to be scored against; pass the spot table.")
    use = list(pred.var_names) if genes is None else check_names(genes, "genes")
    if not use:
        raise ValueError("`genes`: give at least one gene to score (an empty list scores nothing).")
    missing = [g for g in use if g not in pred.var_names]
    if missing:
        raise KeyError(f"`genes`: {len(missing)} genes were not predicted (e.g. {missing[:5]}).")
    instance_key = pred.uns.get("spatialdata_attrs", {}).get("instance_key")
    if instance_key in pred.obs and instance_key in observed.obs:
        rows = pd.Index(pred.obs[instance_key].to_numpy()).get_indexer(observed.obs[instance_key].to_numpy())
    else:  # a slide's prediction without a tissue polygon to annotate: one row each
        rows = np.arange(observed.n_obs) if observed.n_obs == pred.n_obs == 1 else np.full(observed.n_obs, -1)
    if (rows < 0).any() or len(rows) != pred.n_obs:
        raise ValueError(
            f"{sample}: the predictions do not cover the rows of the observed table {table_key!r} one to one; "
            "predict again."
        )
    cols = pred.var_names.get_indexer(use)
    y_pred = np.asarray(pred.X[rows][:, cols], dtype=np.float64)
    sd = np.asarray(pred.layers[K.STD_LAYER][rows][:, cols], dtype=np.float64) if K.STD_LAYER in pred.layers else None
    truth = log_cp10k(observed.X, where=sample, columns=gene_columns(observed, use, where=sample)).astype(np.float64)
    no_counts = int(np.isnan(truth).all(axis=1).sum()) if truth.shape[1] else 0
    if no_counts and no_counts == len(truth):
        raise ValueError(
            f"{sample}: table {table_key!r} has no counts to score against (every row's library size is 0)."
        )
    if no_counts:
        logger.warning("%s: %d of %d spots have no counts (library size 0) and are not scored", sample, no_counts,
                       len(truth))  # fmt: skip
    xy = np.asarray(pred.obsm["spatial"])[rows] if "spatial" in pred.obsm else None
    kind = pred.uns.get(K.PRED_KEY, {}).get("params", {}).get("target", "spot")
    return {
        "sample": sample,
        "pred_table": pred,
        "use": use,
        "pred": y_pred,
        "truth": truth,
        "sd": sd,
        "xy": xy,
        "kind": kind,
    }


def _coverage(truth: np.ndarray, pred: np.ndarray, sd: np.ndarray | None) -> float:
    """Fraction of observed values inside prediction ± Z_80 x sd (over finite entries)."""
    if sd is None:
        return float("nan")
    ok = np.isfinite(truth) & np.isfinite(pred) & np.isfinite(sd)
    return float(np.mean(np.abs(truth[ok] - pred[ok]) <= Z_80 * sd[ok])) if ok.any() else float("nan")


@contextlib.contextmanager
def _quiet_squidpy():
    """Squidpy's docstring helper warns at import (docrep), and its graph builder logs at INFO (spatialdata's logger)."""
    loggers = [logging.getLogger(name) for name in ("squidpy", "spatialdata._logging")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(logging.WARNING, lg.getEffectiveLevel()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="squidpy")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def morans_i(values: np.ndarray, xy: np.ndarray, genes: Sequence[str]) -> np.ndarray:
    """Moran's I of each column of ``values`` over the spots at ``xy`` (kNN graph, squidpy), NaN rows dropped."""
    import anndata as ad

    ok = np.isfinite(values).all(axis=1) & np.isfinite(xy).all(axis=1)
    if ok.sum() <= N_NEIGHBOURS:
        return np.full(len(genes), np.nan)
    with _quiet_squidpy(), torch_threads_kept():
        import squidpy as sq

        adata = ad.AnnData(values[ok].astype(np.float32), var=pd.DataFrame(index=[str(g) for g in genes]))
        adata.obsm["spatial"] = xy[ok]
        sq.gr.spatial_neighbors_knn(adata, n_neighs=N_NEIGHBOURS)
        with warnings.catch_warnings():  # a constant gene's I is NaN, reported in the scores
            warnings.filterwarnings("ignore", message=".*variables were constant", category=UserWarning)
            result = sq.gr.spatial_autocorr(adata, mode="moran", n_perms=None, copy=True, show_progress_bar=False)
    return result["I"].reindex(adata.var_names).to_numpy(dtype=float)


def evaluate(
    sdata: SpatialData | Sequence[SpatialData],
    *,
    key: str | None = None,
    genes: Sequence[str] | None = None,
    spatial: bool = True,
    key_added: str = K.PEARSON_KEY,
) -> pd.DataFrame:
    """Score predictions against the observed expression of the same data.

    Spots: per-gene Pearson across the spots of each section, averaged over genes (mean and
    median, on all predicted genes and on the model's 50 most variable), pooled Pearson (all values
    together, labelled as such), per-spot Pearson across genes, MSE, the share of measured values
    inside the nominal 80 % prediction interval (``coverage_80``, when the predictions carry an
    uncertainty) and, with ``spatial``, the spatial autocorrelation (Moran's I on a 6-nearest-spot
    graph, squidpy) of the predicted and of the observed maps, per gene and on average (predicted
    maps are smoother than measured ones). One row per section.
    Slides (bulk predictions): per-gene Pearson across the slides of the list, the number of genes
    with r > 0.4 and FDR < 0.05, per-sample Pearson across genes (secondary), MSE; one row.
    Observed expression is log1p(CP10k) of the table's counts, the units of the predictions.

    Parameters
    ----------
    sdata
        A section, or a list of sections or of slides, with predictions from :func:`bitro.tl.predict`.
    key
        The prediction table (default: the one :func:`bitro.tl.predict` recorded).
    genes
        Score only these predicted genes (default: all).
    spatial
        Also compute Moran's I of predicted and observed maps (spots only).
    key_added
        ``var`` column of the prediction table for each gene's Pearson r (NaN for genes not scored);
        Moran's I goes to ``var["moran_pred"]`` / ``var["moran_obs"]``.

    Returns
    -------
    One row per section (spots) or one row for the cohort (slides), metrics as columns. Also writes
    the ``var`` columns above and ``uns["bitro_eval"]`` (the metrics) of each prediction table.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9)
    >>> bt.tl.predict(sdata)
    >>> bt.tl.evaluate(sdata, genes=["IGKC"], spatial=False)  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    sdatas = [sdata] if isinstance(sdata, SpatialData) else list(sdata)
    if not sdatas:
        raise ValueError("`sdata` is an empty list.")
    entries = [_entry(s, key, genes) for s in sdatas]
    ids = [e["sample"] for e in entries]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:  # one row per sample, and each sample's scores are written into its own table
        raise ValueError(f"`sdata` lists samples {twice} more than once; give each section once.")
    kinds = {e["kind"] for e in entries}
    if len(kinds) > 1:
        raise ValueError(f"`sdata` mixes spot and slide predictions ({sorted(kinds)}); evaluate them separately.")
    top = np.arange(min(N_TOP_HVG, len(entries[0]["use"])))

    rows, per_gene = [], []
    if kinds == {"bulk"}:
        if any(e["use"] != entries[0]["use"] for e in entries):
            raise ValueError("slides were predicted with different gene panels; evaluate them separately.")
        if len(entries) < 3:
            raise ValueError(f"bulk evaluation is across slides: pass a list of at least 3 slides, got {len(entries)}.")
        y_true = np.vstack([e["truth"] for e in entries])
        y_pred = np.vstack([e["pred"] for e in entries])
        r = pearson_per_gene(y_true, y_pred)
        rows.append(dict(sample="cohort", level="slide", **bulk_metrics(y_true, y_pred)))
        per_gene = [{key_added: r} for _ in entries]
    else:
        for e in entries:
            metrics = spot_metrics(e["truth"], e["pred"], hvg_index=top)
            no_prediction = int((np.isnan(e["pred"]).all(axis=1) & ~np.isnan(e["truth"]).all(axis=1)).sum())
            if no_prediction and metrics.get("n_obs") == 0:
                logger.warning(
                    "%s: no spot has a prediction (no cells assigned to spots?): nothing scored", e["sample"]
                )
            elif no_prediction:
                logger.info("%s: %d spots without a prediction are not scored", e["sample"], no_prediction)
            metrics["coverage_80"] = _coverage(e["truth"], e["pred"], e["sd"])
            columns = {key_added: pearson_per_gene(e["truth"], e["pred"])}
            if spatial and e["xy"] is not None:
                columns["moran_pred"] = morans_i(e["pred"], e["xy"], e["use"])
                columns["moran_obs"] = morans_i(e["truth"], e["xy"], e["use"])
                with warnings.catch_warnings():  # too few spots: every I is NaN, and so is the mean
                    warnings.simplefilter("ignore", RuntimeWarning)
                    metrics["moran_pred_mean"] = float(np.nanmean(columns["moran_pred"]))
                    metrics["moran_obs_mean"] = float(np.nanmean(columns["moran_obs"]))
            rows.append(dict(sample=e["sample"], level="spot", **metrics))
            per_gene.append(columns)

    for s, e, row, columns in zip(
        sdatas, entries, rows * len(entries) if kinds == {"bulk"} else rows, per_gene, strict=True
    ):
        table = e["pred_table"]
        name = next(k for k, v in s.tables.items() if v is table)
        table = _sdata.editable_table(s, name)
        idx = table.var_names.get_indexer(e["use"])
        for column, values in columns.items():
            full = np.full(table.n_vars, np.nan)
            full[idx] = values
            table.var[column] = full
        table.uns[K.EVAL_KEY] = {
            "n_top_hvg": len(top),
            **{k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in row.items()},
        }
        _sdata.write(s, {name: table})
    return pd.DataFrame(rows).set_index("sample")
