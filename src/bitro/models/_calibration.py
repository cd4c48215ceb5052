"""What a model learned to trust: per-gene validation accuracy and calibrated uncertainty.

After training, the model predicts its validation bags (never its training or test bags) with Monte
Carlo dropout. Per gene it records the Pearson r across those bags with a 95 % interval (Fisher's z),
and the measurement noise the dropout spread does not explain: ``noise_sd`` with
``noise_sd² = max(0, mean squared residual - mean dropout variance)``. A prediction's standard
deviation is then ``sqrt(dropout sd² + noise_sd²)``; the share of validation values inside the
nominal 80 % interval (prediction ± 1.28 sd) is recorded as ``coverage_80``, so a user can see how
well the interval is calibrated.
"""

from __future__ import annotations

import math

import numpy as np

from bitro._logging import logger

N_SAMPLES = 8
"""Monte Carlo dropout samples used for calibration (and by default in :func:`bitro.tl.predict`)."""
Z_80 = 1.2815515655446004


def pearson_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson r from ``n`` pairs (Fisher's z transform); NaN when undefined."""
    from scipy.stats import norm

    if not np.isfinite(r) or n < 4:
        return math.nan, math.nan
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), 1 / math.sqrt(n - 3)
    q = norm.ppf(0.5 + level / 2)
    return math.tanh(z - q * se), math.tanh(z + q * se)


def calibrate(model, td, head: str, *, n_samples: int = N_SAMPLES) -> dict | None:
    """Per-gene validation Pearson (with interval), noise sd and the 80 % coverage, on ``td``'s validation bags.

    Returns ``None`` without validation bags. Gene-keyed dicts (JSON for the model's config).
    """
    from bitro.tl._metrics import pearson_per_gene

    if not td.val_items:
        return None
    genes = list(td.genes)
    truth, pred, sd = [], [], []
    for si in sorted({si for si, _ in td.val_items}):
        rows = [b for s, b in td.val_items if s == si]
        prediction = model.predict_bags(td.sections[si], head=head, n_samples=n_samples)
        truth.append(td.sections[si].y[rows])
        pred.append(prediction.bags[rows])
        sd.append(prediction.bags_std[rows])
    truth, pred, sd = (np.vstack(a).astype(np.float64) for a in (truth, pred, sd))
    ok = np.isfinite(truth).all(axis=1) & np.isfinite(pred).all(axis=1)
    truth, pred, sd = truth[ok], pred[ok], sd[ok]
    if len(truth) < 4:
        logger.info("calibration skipped: %d usable validation bags", len(truth))
        return None
    r = pearson_per_gene(truth, pred)
    noise = np.sqrt(np.maximum(np.mean((truth - pred) ** 2, axis=0) - np.mean(sd**2, axis=0), 0.0))
    total = np.sqrt(sd**2 + noise**2)
    coverage = float(np.mean(np.abs(truth - pred) <= Z_80 * total))
    intervals = [pearson_interval(float(v), len(truth)) for v in r]
    result = {
        "n_val_bags": len(truth),
        "n_samples": int(n_samples),
        "coverage_80": coverage,
        "val_pearson": {g: _num(v) for g, v in zip(genes, r, strict=True)},
        "val_pearson_lo": {g: _num(lo) for g, (lo, _) in zip(genes, intervals, strict=True)},
        "val_pearson_hi": {g: _num(hi) for g, (_, hi) in zip(genes, intervals, strict=True)},
        "noise_sd": {g: _num(v) for g, v in zip(genes, noise, strict=True)},
    }
    n_ok = sum(1 for lo, _ in intervals if np.isfinite(lo) and lo > 0)
    logger.info(
        "calibrated on %d validation bags: %d of %d genes predictable (r interval above 0), 80%% interval covers %.0f%%",
        len(truth),
        n_ok,
        len(genes),
        100 * coverage,
    )
    return result


def _num(value) -> float | None:
    """A float for JSON (``None`` for NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None
