"""End to end on synthetic H&E-only slides of growing size: read -> segment -> features -> predict.

Each size runs in its own process (peak resident memory is that run's alone): a toy slide is rendered
into a zarr store (untimed), its expression table removed (an H&E-only slide), then it is read back
lazily and run through ``segment_cells`` (default: the bundled U-Net), ``cell_features`` and
``bt.tl.predict`` with the bundled model (pseudo-spots over the tissue, every cell predicted). Prints
cells/s per step, peak RSS and the exponent of time against cells (1 = linear).

    python benchmarks/slide_scaling.py                          # ~1e4 and ~1e5 cells, U-Net
    python benchmarks/slide_scaling.py --sizes 1e4 1e5 1e6 --method watershed --no-uncertainty
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, resource, sys, tempfile, time, warnings
import bitro as bt
import spatialdata as sd
n_spots, method, uncertainty = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
toy = bt.datasets.toy_st(n_spots=n_spots, n_genes=10, seed=0, lazy=True)
true_cells = toy["true_cells"].n_obs
store = tempfile.mkdtemp() + "/slide.zarr"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    toy.write(store)
del toy
times = {}
t0 = time.perf_counter()
sdata = bt.io.read_zarr(store)
del sdata.tables["table"]  # H&E only: no spots' expression
times["read"] = time.perf_counter() - t0
image = sdata[sdata.attrs["bitro"]["image_key"]]["scale0"]["image"]
t0 = time.perf_counter()
bt.pp.segment_cells(sdata, method=method, progress=False)
times["segment"] = time.perf_counter() - t0
t0 = time.perf_counter()
bt.pp.cell_features(sdata, method="morphology", mpp=bt.models.default_model().config["features"]["params"].get("mpp"))
times["features"] = time.perf_counter() - t0
t0 = time.perf_counter()
bt.tl.predict(sdata, uncertainty=uncertainty)
times["predict"] = time.perf_counter() - t0
print(json.dumps({
    "megapixels": image.shape[1] * image.shape[2] / 1e6,
    "true_cells": true_cells,
    "cells": int(bt.get.predictions(sdata, level="cells").n_obs),
    "times": times,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(n_spots: int, method: str, uncertainty: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n_spots), method, "1" if uncertainty else "0"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5], help="cells (toy: ~42 per spot)")
    parser.add_argument("--method", default="unet")
    parser.add_argument("--no-uncertainty", dest="uncertainty", action="store_false")
    args = parser.parse_args()
    rows = []
    for cells in args.sizes:
        r = run(int(cells / 42), args.method, args.uncertainty)
        rows.append(r)
        t = r["times"]
        total = sum(t.values())
        print(
            f"{r['cells']:>8} cells ({r['true_cells']} true, {r['megapixels']:.0f} Mpx): "
            + ", ".join(f"{k} {v:.1f} s ({r['cells'] / v:.0f}/s)" for k, v in t.items() if v > 0.05)
            + f"; total {total:.1f} s ({r['cells'] / total:.0f} cells/s), peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if len(rows) >= 2:
        cells = np.log([r["cells"] for r in rows])
        total = np.log([sum(r["times"].values()) for r in rows])
        rss = np.log([r["peak_rss_mb"] for r in rows])
        print(
            f"time ~ cells^{np.polyfit(cells, total, 1)[0]:.2f}, peak RSS ~ cells^{np.polyfit(cells, rss, 1)[0]:.2f} "
            f"(method {args.method}, uncertainty {args.uncertainty})"
        )


if __name__ == "__main__":
    main()
