"""Baselines of the evaluation protocol (DESIGN.md §5), fitted on the same split as the model.

- mean expression: the training mean of each gene, for every test row;
- ridge on spot-aggregated cell features, HEST-Benchmark style: standard scaler -> PCA -> ridge
  (regularisation chosen by efficient leave-one-out over a grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitro._logging import logger


def aggregate_features(features: np.ndarray, bag: np.ndarray, n_bags: int) -> np.ndarray:
    """Per-bag (spot) summary of cell features: mean, standard deviation and log cell count.

    Parameters
    ----------
    features
        Cell features, ``(n_cells, n_features)``.
    bag
        Integer bag (spot) code of each cell, ``(n_cells,)``; cells with a negative code belong to no
        bag and are ignored.
    n_bags
        Number of bags; codes must be ``< n_bags``.

    Returns
    -------
    ``(n_bags, 2 * n_features + 1)`` float array: the features' mean, their population standard
    deviation (``ddof=0``; 0 for a bag of one cell) and ``log1p(number of cells)``. Bags without cells get
    a row of NaN, which callers report and drop.
    """
    features = np.asarray(features, dtype=np.float64)
    bag = np.asarray(bag)
    if features.ndim != 2 or bag.shape != (features.shape[0],):
        raise ValueError(
            f"`features` must be (n_cells, n_features) and `bag` (n_cells,), got {features.shape} and {bag.shape}."
        )
    if not np.issubdtype(bag.dtype, np.integer):
        raise TypeError(f"`bag` must hold integer codes, got dtype {bag.dtype}.")
    if bag.size and bag.max() >= n_bags:
        raise ValueError(f"`bag` holds code {bag.max()} but `n_bags` is {n_bags}.")
    inside = bag >= 0
    x, b = features[inside], bag[inside].astype(np.intp)
    n_feat = features.shape[1]
    counts = np.bincount(b, minlength=n_bags).astype(np.float64)
    sums = np.zeros((n_bags, n_feat))
    np.add.at(sums, b, x)
    filled = counts > 0
    mean = np.full((n_bags, n_feat), np.nan)
    mean[filled] = sums[filled] / counts[filled, None]
    # two passes (centre, then square) rather than E[x^2] - E[x]^2, which cancels badly
    sq = np.zeros((n_bags, n_feat))
    np.add.at(sq, b, (x - mean[b]) ** 2)
    std = np.full((n_bags, n_feat), np.nan)
    std[filled] = np.sqrt(sq[filled] / counts[filled, None])
    log_n = np.where(filled, np.log1p(counts), np.nan)
    return np.concatenate([mean, std, log_n[:, None]], axis=1)


def mean_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """Mean-expression baseline: the training mean of each gene, repeated for every test row.

    Parameters
    ----------
    y_train
        Training expression, ``(n_train, n_genes)``.
    n_test
        Number of test rows to predict.

    Returns
    -------
    ``(n_test, n_genes)`` float array; its per-gene Pearson is 0 by the convention of
    :func:`bitro.tl._metrics.pearson_per_gene`.
    """
    y_train = np.asarray(y_train, dtype=np.float64)
    if y_train.ndim != 2 or y_train.shape[0] == 0:
        raise ValueError(f"`y_train` must be a non-empty (n_train, n_genes) array, got shape {y_train.shape}.")
    return np.tile(y_train.mean(axis=0), (int(n_test), 1))


def ridge_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    n_components: int = 50,
    alphas: Sequence[float] = (0.1, 1, 10, 100, 1000),
    seed: int = 0,
) -> np.ndarray:
    """Ridge baseline on (spot-aggregated) features: ``StandardScaler -> PCA -> RidgeCV``.

    Fitted on the training rows only; one regularisation strength for all genes, chosen from
    ``alphas`` by efficient leave-one-out cross-validation.

    Parameters
    ----------
    x_train
        Training features, ``(n_train, n_features)``; rows with a NaN (e.g. spots without cells), or with
        a NaN in ``y_train``, are dropped before fitting and the count is logged.
    y_train
        Training expression, ``(n_train, n_genes)``.
    x_test
        Test features, ``(n_test, n_features)``.
    n_components
        Upper bound on the PCA components; ``min(n_components, n_fit_rows - 1, n_features)`` are used.
    alphas
        Candidate ridge penalties.
    seed
        Random state of the PCA solver.

    Returns
    -------
    ``(n_test, n_genes)`` predictions; rows of ``x_test`` with a NaN get a row of NaN.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = np.asarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    if x_train.ndim != 2 or y_train.ndim != 2 or x_test.ndim != 2:
        raise ValueError("`x_train`, `y_train` and `x_test` must be 2-d arrays.")
    if x_train.shape[0] != y_train.shape[0] or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"Shapes do not match: x_train {x_train.shape}, y_train {y_train.shape}, x_test {x_test.shape}."
        )
    fit_rows = ~(np.isnan(x_train).any(axis=1) | np.isnan(y_train).any(axis=1))
    n_dropped = int((~fit_rows).sum())
    if n_dropped:
        logger.info(f"ridge baseline: dropped {n_dropped} of {len(fit_rows)} training rows with NaN.")
    n_fit = int(fit_rows.sum())
    k = min(int(n_components), n_fit - 1, x_train.shape[1])
    if k < 1:
        raise ValueError(f"The ridge baseline needs at least 2 complete training rows and 1 feature (got {n_fit}).")
    model = make_pipeline(
        StandardScaler(),
        PCA(n_components=k, random_state=seed),
        RidgeCV(alphas=tuple(float(a) for a in alphas)),
    )
    model.fit(x_train[fit_rows], y_train[fit_rows])
    pred = np.full((x_test.shape[0], y_train.shape[1]), np.nan)
    test_rows = ~np.isnan(x_test).any(axis=1)
    if test_rows.any():
        pred[test_rows] = model.predict(x_test[test_rows])
    return pred
