"""Evaluation metrics and baselines of DESIGN.md §5 (bitro.tl._metrics, bitro.tl._baselines)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from bitro.tl._baselines import aggregate_features, mean_baseline, ridge_baseline
from bitro.tl._metrics import (
    bh_fdr,
    bulk_metrics,
    pearson_per_gene,
    pearson_per_row,
    pearson_pvalues,
    spot_metrics,
)

SPOT_KEYS = {
    "pearson_mean",
    "pearson_median",
    "pearson_hvg_mean",
    "pearson_hvg_median",
    "pooled_pearson",
    "spot_pearson_mean",
    "mse",
    "n_obs",
    "n_genes_undefined",
    "n_obs_dropped",
}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_perfect_and_negated_prediction(rng):
    y = rng.normal(size=(30, 8))
    np.testing.assert_allclose(pearson_per_gene(y, y), 1.0)
    np.testing.assert_allclose(pearson_per_gene(y, -y), -1.0)
    np.testing.assert_allclose(pearson_per_gene(y, 3 * y + 7), 1.0)
    np.testing.assert_allclose(pearson_per_row(y, y), 1.0)
    np.testing.assert_allclose(pearson_per_row(y, -y), -1.0)
    m = spot_metrics(y, y)
    assert m["pearson_mean"] == pytest.approx(1.0)
    assert m["pooled_pearson"] == pytest.approx(1.0)
    assert m["spot_pearson_mean"] == pytest.approx(1.0)
    assert m["mse"] == 0.0


def test_agrees_with_scipy_pearsonr(rng):
    y_true = rng.normal(size=(25, 6))
    y_pred = y_true + rng.normal(scale=1.5, size=y_true.shape)
    r = pearson_per_gene(y_true, y_pred)
    ref = [stats.pearsonr(y_true[:, j], y_pred[:, j]) for j in range(6)]
    np.testing.assert_allclose(r, [x.statistic for x in ref], rtol=1e-12)
    np.testing.assert_allclose(pearson_pvalues(r, 25), [x.pvalue for x in ref], rtol=1e-7)
    r_row = pearson_per_row(y_true, y_pred)
    np.testing.assert_allclose(r_row, [stats.pearsonr(y_true[i], y_pred[i]).statistic for i in range(25)], rtol=1e-12)
    pooled = stats.pearsonr(y_true.ravel(), y_pred.ravel()).statistic
    assert spot_metrics(y_true, y_pred)["pooled_pearson"] == pytest.approx(pooled, rel=1e-12)


def test_constant_prediction_is_zero_constant_truth_is_undefined(rng):
    y_true = rng.normal(size=(20, 4))
    y_true[:, 2] = 0.1  # constant truth (0.1 is not exact in binary: centring leaves rounding noise)
    y_pred = y_true + rng.normal(scale=0.1, size=y_true.shape)
    y_pred[:, 1] = 5.0  # constant prediction, varying truth
    r = pearson_per_gene(y_true, y_pred)
    assert r[1] == 0.0
    assert np.isnan(r[2])
    assert np.isfinite(r[[0, 3]]).all()
    m = spot_metrics(y_true, y_pred)
    assert m["n_genes_undefined"] == 1
    # the undefined gene is excluded from the mean, the zero gene is not
    assert m["pearson_mean"] == pytest.approx(np.mean(r[[0, 1, 3]]))
    # the mean-expression baseline scores 0 on every defined gene
    base = mean_baseline(y_true[:10], 10)
    np.testing.assert_array_equal(pearson_per_gene(y_true[10:], base)[[0, 1, 3]], 0.0)


def test_nan_rows_dropped_and_counted(rng):
    y_true = rng.normal(size=(40, 5))
    y_pred = y_true + rng.normal(scale=0.5, size=y_true.shape)
    y_pred[[3, 17], :] = np.nan  # spots without cells
    y_true[25, 1] = np.nan
    keep = np.setdiff1d(np.arange(40), [3, 17, 25])
    np.testing.assert_allclose(pearson_per_gene(y_true, y_pred), pearson_per_gene(y_true[keep], y_pred[keep]))
    r_row = pearson_per_row(y_true, y_pred)
    assert np.isnan(r_row[[3, 17, 25]]).all()
    assert np.isfinite(r_row[keep]).all()
    m = spot_metrics(y_true, y_pred, hvg_index=np.array([0, 4]))
    assert set(m) == SPOT_KEYS
    assert m["n_obs_dropped"] == 3
    assert m["n_obs"] == 37
    assert np.isfinite([m[k] for k in SPOT_KEYS]).all()
    ref = spot_metrics(y_true[keep], y_pred[keep], hvg_index=np.array([0, 4]))
    assert {k: v for k, v in m.items() if k != "n_obs_dropped"} == pytest.approx(
        {k: v for k, v in ref.items() if k != "n_obs_dropped"}
    )


def test_hvg_restriction(rng):
    y_true = rng.normal(size=(30, 6))
    y_pred = y_true.copy()
    y_pred[:, 3:] = rng.normal(size=(30, 3))  # genes 3-5 predicted by noise
    r = pearson_per_gene(y_true, y_pred)
    m = spot_metrics(y_true, y_pred, hvg_index=np.array([0, 1, 2]))
    assert m["pearson_hvg_mean"] == pytest.approx(1.0)
    assert m["pearson_hvg_median"] == pytest.approx(1.0)
    assert m["pearson_median"] == pytest.approx(np.median(r))
    m_none = spot_metrics(y_true, y_pred)
    assert np.isnan(m_none["pearson_hvg_mean"])
    assert np.isnan(m_none["pearson_hvg_median"])


def test_bh_fdr_hand_computed():
    # sorted p: 0.01, 0.02, 0.03, 0.04, 0.5 (m = 5): p * m / rank = 0.05, 0.05, 0.05, 0.05, 0.5,
    # then the running minimum from the top keeps them; NaN is not a test
    p = np.array([0.04, np.nan, 0.01, 0.5, 0.03, 0.02])
    np.testing.assert_allclose(bh_fdr(p), [0.05, np.nan, 0.05, 0.5, 0.05, 0.05])
    # monotone step: 0.01*3/1 = 0.03, 0.04*3/2 = 0.06 -> min(0.06, 0.045) = 0.045, 0.045*3/3 = 0.045
    np.testing.assert_allclose(bh_fdr(np.array([0.045, 0.01, 0.04])), [0.045, 0.03, 0.045])
    assert np.isnan(bh_fdr(np.array([np.nan, np.nan]))).all()


def test_pvalues_edge_cases():
    p = pearson_pvalues(np.array([1.0, -1.0, 0.0, np.nan]), 10)
    np.testing.assert_array_equal(p[:3], [0.0, 0.0, 1.0])
    assert np.isnan(p[3])
    assert np.isnan(pearson_pvalues(np.array([0.5]), 2)).all()


def test_bulk_metrics_significant_count(rng):
    n, g = 60, 10
    y_true = rng.normal(size=(n, g))
    y_pred = rng.normal(size=(n, g))
    y_pred[:, :3] = y_true[:, :3] + rng.normal(scale=0.3, size=(n, 3))  # r ~ 0.96: significant
    y_pred[:, 3] = y_true[:, 3] + rng.normal(scale=3.0, size=n)  # r ~ 0.3: may be significant, below 0.4
    y_true[:, 9] = 2.0  # undefined
    r = pearson_per_gene(y_true, y_pred)
    assert 0.1 < r[3] < 0.4
    m = bulk_metrics(y_true, y_pred)
    assert m["n_genes_significant"] == 3
    assert m["n_genes_undefined"] == 1
    assert m["n_obs"] == n
    assert m["pearson_mean"] == pytest.approx(np.nanmean(r))
    assert bulk_metrics(y_true, y_pred, r_threshold=0.0)["n_genes_significant"] >= 3
    # an FDR level no p-value can meet
    assert bulk_metrics(y_true, y_pred, fdr=0.0)["n_genes_significant"] == 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        pearson_per_gene(np.zeros((3, 2)), np.zeros((3, 3)))


def test_aggregate_features_against_loop(rng):
    n_cells, n_feat, n_bags = 200, 3, 12
    feats = rng.normal(size=(n_cells, n_feat))
    bag = rng.integers(-1, n_bags, size=n_cells)
    bag[bag == 5] = 6  # bag 5 is empty
    bag[np.isin(bag, [7, 8])] = -1  # bag 7 too (its cells are in no bag)
    bag[0] = 8  # bag 8 has exactly one cell
    out = aggregate_features(feats, bag, n_bags)
    assert out.shape == (n_bags, 2 * n_feat + 1)
    for b in range(n_bags):
        rows = feats[bag == b]
        if len(rows) == 0:
            assert np.isnan(out[b]).all(), b
            continue
        expected = np.concatenate([rows.mean(axis=0), rows.std(axis=0), [np.log1p(len(rows))]])
        np.testing.assert_allclose(out[b], expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(out[[5, 7]]).all()
    np.testing.assert_array_equal(out[8, n_feat : 2 * n_feat], 0.0)
    with pytest.raises(ValueError, match="n_bags"):
        aggregate_features(feats, bag, 3)


def test_mean_baseline():
    y_train = np.array([[1.0, 10.0], [3.0, 20.0]])
    np.testing.assert_array_equal(mean_baseline(y_train, 3), [[2.0, 15.0]] * 3)


def test_ridge_recovers_linear_signal_and_beats_mean(rng, caplog):
    n, d, g = 300, 20, 8
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, g))
    y = x @ w + rng.normal(scale=0.5, size=(n, g))
    x_train, y_train, x_test, y_test = x[:200], y[:200], x[200:].copy(), y[200:]
    x_train = x_train.copy()
    x_train[:4, 0] = np.nan  # training spots without cells
    x_test[:2, 1] = np.nan  # test spots without cells
    logger = logging.getLogger("bitro")
    logger.propagate, old = True, logger.propagate
    try:
        with caplog.at_level(logging.INFO, logger="bitro"):
            pred = ridge_baseline(x_train, y_train, x_test, n_components=d)
    finally:
        logger.propagate = old
    assert "dropped 4 of 200" in caplog.text
    assert pred.shape == y_test.shape
    assert np.isnan(pred[:2]).all()
    assert np.isfinite(pred[2:]).all()
    ridge = spot_metrics(y_test, pred)
    base = spot_metrics(y_test, mean_baseline(y_train, len(y_test)))
    assert ridge["n_obs_dropped"] == 2
    assert ridge["pearson_mean"] > 0.9
    assert ridge["pearson_mean"] > base["pearson_mean"]
    assert ridge["mse"] < base["mse"]


def test_ridge_caps_components_and_needs_rows(rng):
    x = rng.normal(size=(5, 30))
    y = x[:, :2]
    pred = ridge_baseline(x, y, x, n_components=50)  # 4 components: n_fit - 1
    assert pred.shape == (5, 2)
    assert np.isfinite(pred).all()
    with pytest.raises(ValueError, match="at least 2"):
        ridge_baseline(x[:1], y[:1], x)
