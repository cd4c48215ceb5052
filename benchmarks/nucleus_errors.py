"""Where the nucleus U-Net's errors are, and post-processing variants, on the validation patients only.

Protocol: the bundled U-Net (or ``--model``) on the TNBC validation patients 07-08 (7 tiles, 0.25 µm/px;
the patients that chose the weights and thresholds; the test patients 09-11 are never read here).

- detection F1 at IoU >= 0.5, 0.4 and 0.3 (how many errors are near misses);
- each missed nucleus classed by its best-overlapping prediction: a near miss (IoU 0.3-0.5), merged
  (inside a prediction mostly outside it), split (two or more predictions, none matching) or missed
  (nothing, or grazed); each unmatched prediction likewise; and the predicted / true area ratio of the
  near-miss pairs (about 0.5: a split half; about 2 or more: a merge; about 1: an outline off);
- post-processing variants on the same maps (computed once): marker threshold, opening of the markers,
  smoothing of the distance, h-maxima markers; the best by F1 is printed with the shipped setting's,
  to be read as a maximum over many noisy tries, not as a gain.

    python benchmarks/nucleus_errors.py --data ../shared/data/nuclei
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def pairs(pred: np.ndarray, true: np.ndarray):
    """Relabelled images, areas and every overlapping (pred, true) pair with its intersection and IoU."""
    from bitro.pp._seg_scores import _relabel

    pred, true = _relabel(pred), _relabel(true)
    n_pred, n_true = int(pred.max()), int(true.max())
    p_area = np.bincount(pred.ravel(), minlength=n_pred + 1)
    t_area = np.bincount(true.ravel(), minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    key, inter = np.unique(pred[both].astype(np.int64) * (n_true + 1) + true[both], return_counts=True)
    p_id, t_id = key // (n_true + 1), key % (n_true + 1)
    iou = inter / (p_area[p_id] + t_area[t_id] - inter)
    return n_pred, n_true, p_area, t_area, p_id, t_id, inter, iou


def classify(pred: np.ndarray, true: np.ndarray, counts: dict, ratios: list) -> None:
    """Add this tile's missed nuclei and unmatched predictions to ``counts`` by kind; near-miss area ratios to ``ratios``."""
    n_pred, n_true, p_area, t_area, p_id, t_id, inter, iou = pairs(pred, true)
    matched = iou >= 0.5
    near = (iou >= 0.3) & ~matched
    ratios.extend((p_area[p_id[near]] / t_area[t_id[near]]).tolist())
    for side, n, own, other, own_area, other_area, done in (
        ("missed nuclei", n_true, t_id, p_id, t_area, p_area, set(t_id[matched])),
        ("unmatched predictions", n_pred, p_id, t_id, p_area, t_area, set(p_id[matched])),
    ):
        kinds = counts.setdefault(side, {"near miss": 0, "merged": 0, "split": 0, "missed or grazed": 0})
        for j in set(range(1, n + 1)) - done:
            sel = own == j
            if not sel.any():
                kinds["missed or grazed"] += 1
                continue
            best = np.argmax(iou[sel])
            partner = other[sel][best]
            if iou[sel][best] >= 0.3:
                kinds["near miss"] += 1
            elif inter[sel][best] / other_area[partner] < 0.5 <= inter[sel][best] / own_area[j]:
                # mostly inside a larger object of the other side
                kinds["merged" if side == "missed nuclei" else "split"] += 1
            elif sel.sum() >= 2:
                kinds["split" if side == "missed nuclei" else "merged"] += 1
            else:
                kinds["missed or grazed"] += 1


def instances(prob, dist, *, fg, marker=0.5, opening=0, sigma=0.0, h=None, min_px=0):
    """Instance labels from the U-Net's two maps with one post-processing variant (``h``: h-maxima markers)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk, h_maxima
    from skimage.segmentation import watershed

    mask = prob > fg
    d = ndi.gaussian_filter(dist, sigma) if sigma else dist
    if h is None:
        core = (d > marker) & mask
        if opening:
            core = ndi.binary_opening(core, structure=disk(opening))
    else:
        core = h_maxima(np.where(mask, d, 0).astype(np.float32), h).astype(bool) & mask
    labels = watershed(-d, ndi.label(core)[0], mask=mask)
    orphans, n = ndi.label(mask & (labels == 0))
    if n:
        labels[orphans > 0] = orphans[orphans > 0] + labels.max()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    labels[small[labels]] = 0
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "nuclei")
    parser.add_argument("--model", default=None, help="weights folder (default: the bundled U-Net)")
    args = parser.parse_args()

    from skimage.transform import resize

    from bitro.pp._seg_scores import match_scores, pooled
    from bitro.pp._unet import folded, load_unet, predict_maps
    from bitro.pp._unet_train import nuclei_splits, segment_tiles

    net, config = load_unet(args.model)
    _, val, _ = nuclei_splits(args.data)
    labels = segment_tiles(net, val, config)
    out = {"tiles": len(val), "nuclei": int(sum(t.labels.max() for t in val))}
    out["f1_at_iou"] = {
        str(iou): round(pooled([match_scores(p, t.labels, iou=iou) for p, t in zip(labels, val, strict=True)])["f1"], 3)
        for iou in (0.5, 0.4, 0.3)
    }
    counts, ratios = {}, []
    for p, t in zip(labels, val, strict=True):
        classify(p, t.labels, counts, ratios)
    out["errors"] = counts
    out["near_miss_area_ratio_p10_p25_p50_p75_p90"] = np.percentile(ratios, [10, 25, 50, 75, 90]).round(2).tolist()

    fast = folded(net)
    maps = []
    for t in val:  # the maps once, resampled back to the tile's pixels as UNetSegmenter does
        scale = t.mpp / config["mpp"]
        h, w = t.labels.shape
        tile = resize(t.rgb, (round(h * scale), round(w * scale)), order=1, preserve_range=True, anti_aliasing=True)
        prob, dist, *_ = predict_maps(fast, tile.astype(np.uint8))  # a three-map net's rims are left out here
        maps.append(tuple(resize(m, (h, w), order=1, preserve_range=True) for m in (prob, dist)))
    min_px = config["min_area_um2"] / val[0].mpp ** 2
    variants = [{"fg": fg, "marker": mk, "opening": r, "sigma": s} for fg in (0.3, 0.4, 0.5) for mk in (0.4, 0.5, 0.6)
                for r in (0, 1, 2) for s in (0, 1, 2)]  # fmt: skip
    variants += [
        {"fg": fg, "h": h, "sigma": s} for fg in (0.3, 0.4, 0.5) for h in (0.05, 0.1, 0.2, 0.3) for s in (0, 1, 2)
    ]
    scored = []
    for v in variants:
        pred = [instances(p, d, min_px=min_px, **v) for p, d in maps]
        scored.append((pooled([match_scores(q, t.labels) for q, t in zip(pred, val, strict=True)])["f1"], v))
    shipped = {"fg": config["fg_threshold"], "marker": config["marker_threshold"], "opening": 0, "sigma": 0}
    f1_shipped = next(f for f, v in scored if v == shipped)
    best = max(scored, key=lambda fv: fv[0])
    out["post_processing"] = {
        "variants": len(scored),
        "shipped": [round(f1_shipped, 3), shipped],
        "best": [round(best[0], 3), best[1]],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
