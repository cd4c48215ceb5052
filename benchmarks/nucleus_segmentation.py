"""Nucleus segmentation on held-out patients: bitro's U-Net against the watershed, in the same run.

Protocol:

- test tiles the network never trained or validated on: TNBC patients 09, 10 and 11 (13 tiles,
  0.25 µm/px; Naylor et al. 2019, CC BY 4.0) and the 12 colour tissue tiles of DSB2018's stage-1 test
  set (CC0); the split is ``bitro.pp._unet_train.nuclei_splits``;
- each tile is segmented at its own pixel size by the U-Net (``--model``, default the bundled
  weights: tiles resampled to 0.5 µm/px), without and with test-time augmentation (``--tta``:
  ``tta=8`` averages the maps of the 8 flips / quarter turns), and by the watershed
  (``method="watershed"`` defaults);
- scores against the labelled nuclei, pooled over the tiles of a set: detection F1 (one-to-one
  matches at IoU >= 0.5), precision, recall, panoptic quality, AJI, predicted / true count ratio; and
  the mean of per-tile F1;
- speed: ``bt.pp.segment_cells`` through the tiled path (default 1024 px tiles, ``n_jobs=2``) on a
  1.4 x 1.4 mm crop of the real HER2ST section C3 (0.69 µm/px), cells per second, both methods;
- plausibility on HER2ST C3 (a scale and a tissue the network did not train on): nuclei per mm² and
  the area distribution, and a figure of the outlines (``--figure``).

    python benchmarks/nucleus_segmentation.py --data ../shared/data/nuclei
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]


def unet_name(tta: int) -> str:
    return "unet" if tta == 1 else f"unet tta={tta}"


def score_sets(test: dict, model, ttas=(1,)) -> dict:
    from bitro.pp._seg_scores import match_scores, pooled
    from bitro.pp._unet import unet_segmenter
    from bitro.pp._watershed import watershed_tile

    out = {}
    for name, tiles in test.items():
        rows = {**{unet_name(tta): [] for tta in ttas}, "watershed": []}
        per_patient: dict[str, dict[str, list]] = {}
        for t in tiles:
            pred = {unet_name(tta): unet_segmenter(model, mpp=t.mpp, tta=tta)(t.rgb) for tta in ttas}
            pred["watershed"] = watershed_tile(t.rgb, mpp=t.mpp)
            for method, labels in pred.items():
                s = match_scores(labels, t.labels)
                rows[method].append(s)
                per_patient.setdefault(t.group, {}).setdefault(method, []).append(s)
        out[name] = {m: pooled(r) for m, r in rows.items()}
        if name == "tnbc":
            out["tnbc_per_patient"] = {
                p: {m: round(pooled(r)["f1"], 3) for m, r in d.items()} for p, d in sorted(per_patient.items())
            }
    return out


def her2st_crop(data_dir: Path):
    import bitro as bt
    from bitro.cli._her2st_predict import crop_section

    section = bt.datasets.her2st("C3", data_dir=data_dir)
    return crop_section(section, (2500, 2500, 3900, 3900))  # 1.4 x 1.4 mm in µm


def speed_and_plausibility(her2st: Path, model, figure: Path | None, ttas=(1,)) -> dict:
    import copy

    import bitro as bt
    from bitro import _constants as K

    bt.settings.verbosity = 0
    sdata = her2st_crop(her2st)
    out = {}
    runs = {unet_name(tta): ("unet", {"model": model, "tta": tta}) for tta in ttas}
    runs["watershed"] = ("watershed", {})
    for name, (method, kwargs) in runs.items():
        s = copy.deepcopy(sdata)
        t0 = time.perf_counter()
        bt.pp.segment_cells(s, method=method, n_jobs=2, progress=False, **kwargs)
        seconds = time.perf_counter() - t0
        cells = s[K.CELLS_TABLE_KEY]
        area = cells.obs[K.AREA_UM2_KEY].to_numpy()
        out[name] = {
            "cells": int(cells.n_obs),
            "seconds": round(seconds, 1),
            "cells_per_s": round(cells.n_obs / seconds),
            "nuclei_per_mm2": round(cells.n_obs / 1.96),
            "area_um2_q10_q50_q90": [round(float(q), 1) for q in np.percentile(area, [10, 50, 90])],
        }
        if figure is not None and name == "unet":
            ax = bt.pl.segmentation(s, region=(3000, 3000, 3200, 3200), show=False)
            figure.parent.mkdir(parents=True, exist_ok=True)
            ax.figure.savefig(figure, dpi=110, bbox_inches="tight")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei")
    parser.add_argument("--her2st", type=Path, default=ROOT / "tests" / "data" / "her2st")
    parser.add_argument("--model", type=Path, default=None, help="U-Net weights folder (default: bundled)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the U-Net outlines on HER2ST C3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", type=int, nargs="+", default=[1, 8], help="U-Net test-time augmentation passes")
    args = parser.parse_args()

    import torch

    from bitro.pp._unet_train import nuclei_splits

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    _, _, test = nuclei_splits(args.data)
    print(f"test tiles: TNBC patients 09-11 ({len(test['tnbc'])}), DSB2018 stage-1 test ({len(test['dsb'])})")
    result = {"scores": score_sets(test, args.model, args.tta)}
    for name in ("tnbc", "dsb"):
        print(f"\n{name}: pooled over {result['scores'][name]['watershed']['tiles']} tiles")
        print("method        F1     prec   recall  PQ     AJI    count ratio  per-tile F1")
        for method, s in result["scores"][name].items():
            print(
                f"{method:12s}  {s['f1']:.3f}  {s['precision']:.3f}  {s['recall']:.3f}   {s['pq']:.3f}  {s['aji']:.3f}  "
                f"{s['count_ratio']:.2f} ({s['n_pred']}/{s['n_true']})  {s['f1_tile_mean']:.3f}"
            )
    print("\nTNBC F1 per test patient:", json.dumps(result["scores"]["tnbc_per_patient"]))
    result["her2st_c3_crop"] = speed_and_plausibility(args.her2st, args.model, args.figure, args.tta)
    print("\nHER2ST C3, 1.4 x 1.4 mm crop (0.69 µm/px), segment_cells(n_jobs=2, tile 1024 px):")
    for method, r in result["her2st_c3_crop"].items():
        print(f"  {method}: {json.dumps(r)}")


if __name__ == "__main__":
    main()
