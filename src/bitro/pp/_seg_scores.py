"""Scores of an instance segmentation against labelled nuclei: detection F1, panoptic quality, AJI, counts.

Both inputs are integer label images of the same shape (0 = background). A predicted and a true
nucleus match when their IoU is at least 0.5 (such pairs are one-to-one, so no assignment is
needed). Panoptic quality (Kirillov et al. 2019) is the mean IoU of the matches times the detection
F1; the aggregated Jaccard index (AJI, Kumar et al. 2017) pairs each true nucleus with the predicted
one it overlaps most and divides the summed intersections by the summed unions (unpaired predictions
added to the unions).
"""

from __future__ import annotations

import numpy as np


def match_scores(pred: np.ndarray, true: np.ndarray, *, iou: float = 0.5) -> dict[str, float]:
    """Detection and segmentation scores of ``pred`` against ``true`` (integer label images).

    Returns ``n_pred``, ``n_true``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``sq``
    (mean IoU of the matches), ``pq``, ``aji`` and the summed intersections / unions behind AJI
    (``aji_inter``, ``aji_union``, so tiles can be pooled).
    """
    pred = _relabel(pred)
    true = _relabel(true)
    n_pred, n_true = int(pred.max()), int(true.max())
    p_area = np.bincount(pred.ravel(), minlength=n_pred + 1)
    t_area = np.bincount(true.ravel(), minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    key = pred[both].astype(np.int64) * (n_true + 1) + true[both]
    pairs, inter = np.unique(key, return_counts=True)
    p_id, t_id = pairs // (n_true + 1), pairs % (n_true + 1)
    union = p_area[p_id] + t_area[t_id] - inter
    pair_iou = inter / np.maximum(union, 1)
    matched = pair_iou >= iou
    tp = int(matched.sum())
    fp, fn = n_pred - tp, n_true - tp
    sq = float(pair_iou[matched].mean()) if tp else 0.0
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    # AJI: each true nucleus with its most-overlapping prediction (by IoU)
    aji_inter = aji_union = 0.0
    used = np.zeros(n_pred + 1, bool)
    if len(pairs):
        order = np.lexsort((-pair_iou, t_id))
        first = np.unique(t_id[order], return_index=True)[1]
        best = order[first]
        aji_inter = float(inter[best].sum())
        aji_union = float(union[best].sum())
        used[p_id[best]] = True
    unpaired_true = np.setdiff1d(np.arange(1, n_true + 1), t_id)
    aji_union += float(t_area[unpaired_true].sum())
    aji_union += float(p_area[1:][~used[1:]].sum())
    return {
        "n_pred": n_pred,
        "n_true": n_true,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / n_pred if n_pred else float(n_true == 0),
        "recall": tp / n_true if n_true else 1.0,
        "f1": f1,
        "sq": sq,
        "pq": sq * f1,
        "aji": aji_inter / aji_union if aji_union else 1.0,
        "aji_inter": aji_inter,
        "aji_union": aji_union,
    }


def pooled(scores: list[dict[str, float]]) -> dict[str, float]:
    """Scores of several tiles pooled (matches, objects, AJI sums added up), plus the per-tile mean F1."""
    tp = sum(s["tp"] for s in scores)
    n_pred = sum(s["n_pred"] for s in scores)
    n_true = sum(s["n_true"] for s in scores)
    sq_sum = sum(s["sq"] * s["tp"] for s in scores)
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    sq = sq_sum / tp if tp else 0.0
    union = sum(s["aji_union"] for s in scores)
    return {
        "tiles": len(scores),
        "n_pred": n_pred,
        "n_true": n_true,
        "count_ratio": n_pred / n_true if n_true else float("nan"),
        "precision": tp / n_pred if n_pred else float("nan"),
        "recall": tp / n_true if n_true else float("nan"),
        "f1": f1,
        "f1_tile_mean": float(np.mean([s["f1"] for s in scores])) if scores else float("nan"),
        "sq": sq,
        "pq": sq * f1,
        "aji": sum(s["aji_inter"] for s in scores) / union if union else float("nan"),
    }


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of appearance of their ids (0 stays background)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label image must be a 2-D integer array, got {labels.dtype} {labels.shape}.")
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:  # no background pixel: every id is an object
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int64)
