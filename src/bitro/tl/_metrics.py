"""Accuracy metrics of the evaluation protocol (DESIGN.md §5): plain numpy/scipy on dense arrays.

Conventions shared by every function here:

- ``y_true`` and ``y_pred`` are ``(n_obs, n_genes)`` arrays of the same shape (spots or samples by genes).
- A row with a NaN in ``y_true`` or ``y_pred`` (e.g. a spot without cells, for which an aggregate
  predictor has nothing to say) is dropped from every metric; ``spot_metrics`` reports how many.
- A Pearson r whose *truth* is constant is undefined: NaN, left out of means and medians and counted
  (``n_genes_undefined``). A Pearson r whose *prediction* is constant while the truth varies is 0.0:
  a constant predictor carries no ranking (this is how the mean-expression baseline scores).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from bitro._docs import inject_docs


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"`y_true` and `y_pred` must be 2-d arrays of the same shape, got {y_true.shape} and {y_pred.shape}."
        )
    return y_true, y_pred


def _complete_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows without a NaN in either array."""
    return ~(np.isnan(y_true).any(axis=1) | np.isnan(y_pred).any(axis=1))


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column of two NaN-free 2-d arrays, with the constant-truth/-prediction rules."""
    n_cols = a.shape[1]
    if a.shape[0] == 0:
        return np.full(n_cols, np.nan)
    # constancy is tested exactly (max == min): centring a constant column can leave rounding noise
    truth_varies = np.ptp(a, axis=0) > 0
    pred_varies = np.ptp(b, axis=0) > 0
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    denom = np.sqrt((ac * ac).sum(axis=0) * (bc * bc).sum(axis=0))
    ok = truth_varies & pred_varies & (denom > 0)
    r = np.zeros(n_cols)
    np.divide((ac * bc).sum(axis=0), denom, out=r, where=ok)
    r = np.clip(r, -1.0, 1.0)
    r[~truth_varies] = np.nan
    return r


@inject_docs()
def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation across rows (spots or samples), one per gene.

    Parameters
    ----------
    {doc_y_pair}

    Returns
    -------
    ``(n_genes,)`` float array. Rows with a NaN in ``y_true`` or ``y_pred`` are dropped first (for every
    gene alike). A gene whose truth is constant over the remaining rows gets NaN (undefined; callers
    leave it out of means and count it); a gene whose prediction is constant while the truth varies
    gets ``0.0``.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    keep = _complete_rows(y_true, y_pred)
    return _pearson_columns(y_true[keep], y_pred[keep])


def pearson_per_row(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation across genes, one per row (spot or sample), of two ``(n_obs, n_genes)`` arrays.

    A row with a NaN in either array gets NaN, as does a row whose truth is constant across genes;
    a row whose prediction is constant while the truth varies gets ``0.0``.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    keep = _complete_rows(y_true, y_pred)
    r = np.full(y_true.shape[0], np.nan)
    r[keep] = _pearson_columns(y_true[keep].T, y_pred[keep].T)
    return r


def pearson_pvalues(r: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p-values of Pearson correlations under the null of no correlation.

    Uses ``t = r * sqrt((n - 2) / (1 - r**2))`` with ``n - 2`` degrees of freedom (as
    :func:`scipy.stats.pearsonr` for normal data).

    Parameters
    ----------
    r
        Correlation coefficients, any shape; NaN allowed.
    n
        Number of samples each ``r`` was computed from.

    Returns
    -------
    p-values of the shape of ``r``; NaN where ``r`` is NaN, and everywhere when ``n < 3``.
    ``|r| == 1`` gives ``0.0``.
    """
    r = np.asarray(r, dtype=np.float64)
    p = np.full(r.shape, np.nan)
    if n < 3:
        return p
    finite = np.isfinite(r)
    a = np.clip(np.abs(r[finite]), 0.0, 1.0)
    out = np.zeros(a.shape)
    inner = a < 1.0
    t = a[inner] * np.sqrt((n - 2) / (1.0 - a[inner] ** 2))
    out[inner] = 2.0 * stats.t.sf(t, df=n - 2)
    p[finite] = np.clip(out, 0.0, 1.0)
    return p


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values).

    Parameters
    ----------
    p
        p-values, 1-d; NaN entries are not tests (they do not count towards the number of tests).

    Returns
    -------
    Adjusted p-values of the shape of ``p``, NaN where ``p`` is NaN.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def _finite_stat(x: np.ndarray, fn) -> float:
    """``fn`` over the non-NaN values of ``x``; NaN when there are none (no empty-slice warning)."""
    x = x[~np.isnan(x)]
    return float(fn(x)) if x.size else float("nan")


def _mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((y_true - y_pred) ** 2)) if y_true.size else float("nan")


def spot_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, hvg_index: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one spatial-transcriptomics test slide (DESIGN.md §5).

    Parameters
    ----------
    y_true
        Measured expression of the slide, ``(n_spots, n_genes)``.
    y_pred
        Predicted expression, same shape; rows with NaN (spots without cells) are dropped and counted.
    hvg_index
        Integer column indices of the highly variable genes (e.g. the top 50); ``None`` leaves the
        ``pearson_hvg_*`` entries NaN.

    Returns
    -------
    ``pearson_mean``, ``pearson_median``
        Per-gene Pearson across spots, mean and median over the genes with a defined r.
    ``pearson_hvg_mean``, ``pearson_hvg_median``
        The same restricted to ``hvg_index``.
    ``pooled_pearson``
        One Pearson over all (spot, gene) values flattened; pooled, so dominated by between-gene level.
    ``spot_pearson_mean``
        Per-spot Pearson across genes, mean over spots with a defined r.
    ``mse``
        Mean squared error over all kept values.
    ``n_obs``
        Number of spots used (after dropping).
    ``n_genes_undefined``
        Genes whose truth is constant over the kept spots (r undefined).
    ``n_obs_dropped``
        Spots dropped for NaN.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    keep = _complete_rows(y_true, y_pred)
    t, p = y_true[keep], y_pred[keep]
    r = _pearson_columns(t, p)
    if hvg_index is None:
        r_hvg = np.full(0, np.nan)
    else:
        r_hvg = r[np.asarray(hvg_index, dtype=np.intp)]
    pooled = _pearson_columns(t.reshape(-1, 1), p.reshape(-1, 1))[0]
    r_spot = _pearson_columns(t.T, p.T)
    return {
        "pearson_mean": _finite_stat(r, np.mean),
        "pearson_median": _finite_stat(r, np.median),
        "pearson_hvg_mean": _finite_stat(r_hvg, np.mean),
        "pearson_hvg_median": _finite_stat(r_hvg, np.median),
        "pooled_pearson": float(pooled),
        "spot_pearson_mean": _finite_stat(r_spot, np.mean),
        "mse": _mse(t, p),
        "n_obs": int(keep.sum()),
        "n_genes_undefined": int(np.isnan(r).sum()),
        "n_obs_dropped": int((~keep).sum()),
    }


def bulk_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, r_threshold: float = 0.4, fdr: float = 0.05
) -> dict[str, float]:
    """Metrics of a bulk (one row per sample) test set (DESIGN.md §5).

    Parameters
    ----------
    y_true
        Measured expression, ``(n_samples, n_genes)``.
    y_pred
        Predicted expression, same shape; rows with NaN are dropped and counted.
    r_threshold
        A gene is significant when its r exceeds this ...
    fdr
        ... and its Benjamini–Hochberg adjusted p-value (over the genes with a defined r) is below this.

    Returns
    -------
    ``pearson_mean``, ``pearson_median``
        Per-gene Pearson across samples, over the genes with a defined r.
    ``n_genes_significant``
        Genes with ``r > r_threshold`` and BH-FDR ``< fdr``.
    ``sample_pearson_mean``
        Secondary figure: per-sample Pearson across genes, mean over samples.
    ``mse``
        Mean squared error over all kept values.
    ``n_obs``
        Number of samples used (after dropping).
    ``n_genes_undefined``
        Genes whose truth is constant over the kept samples.
    ``n_obs_dropped``
        Samples dropped for NaN.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    keep = _complete_rows(y_true, y_pred)
    t, p = y_true[keep], y_pred[keep]
    n = int(keep.sum())
    r = _pearson_columns(t, p)
    q = bh_fdr(pearson_pvalues(r, n))
    significant = (np.nan_to_num(r, nan=-np.inf) > r_threshold) & (np.nan_to_num(q, nan=np.inf) < fdr)
    r_sample = _pearson_columns(t.T, p.T)
    return {
        "pearson_mean": _finite_stat(r, np.mean),
        "pearson_median": _finite_stat(r, np.median),
        "n_genes_significant": int(significant.sum()),
        "sample_pearson_mean": _finite_stat(r_sample, np.mean),
        "mse": _mse(t, p),
        "n_obs": n,
        "n_genes_undefined": int(np.isnan(r).sum()),
        "n_obs_dropped": int((~keep).sum()),
    }
