"""End to end on synthetic H&E-only slides of growing size: read -> segment -> features -> predict.

Each size runs in its own process (peak resident memory is the pipeline's alone): a toy slide is
rendered into a zarr store by another process (untimed; its expression and ground truth left out: an
H&E-only slide), then read back lazily and run through ``segment_cells`` (default: the bundled U-Net), ``cell_features`` and
``bt.tl.predict`` with the bundled model (pseudo-spots over the tissue, every cell predicted), tiles in
``--n-jobs`` worker processes. Prints cells/s per step, peak RSS of the pipeline's process and of it
with its workers (sampled every 0.2 s), and the exponents of time and memory against cells (1 = linear).

    python benchmarks/slide_scaling.py                          # ~1e4 and ~1e5 cells, U-Net
    python benchmarks/slide_scaling.py --sizes 1e4 1e5 1e6 --method watershed --no-uncertainty --n-jobs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _child import run_child

MAKE = r"""
import sys, warnings
import bitro as bt
n_spots, store = int(sys.argv[1]), sys.argv[2]
toy = bt.datasets.toy_st(n_spots=n_spots, n_genes=10, seed=0, lazy=True)
print(toy["true_cells"].n_obs)
del toy.tables["table"], toy.tables["true_cells"]  # H&E only: no spots' expression, no ground truth
for name in [n for n in toy.shapes if n != toy.attrs["bitro"].get("spots_key")]:
    del toy.shapes[name]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    toy.write(store)
"""

CHILD = r"""
import json, resource, sys, threading, time
import psutil
import bitro as bt
store, method, uncertainty = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
bt.settings.n_jobs = int(sys.argv[4])
peak = {"tree": 0}

def watch():  # resident memory of this process and its worker processes together, every 0.2 s
    me = psutil.Process()
    while True:
        rss = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        peak["tree"] = max(peak["tree"], rss)
        time.sleep(0.2)

threading.Thread(target=watch, daemon=True).start()
times, peaks = {}, {}
maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak so far, MB
peaks["start"] = maxrss()
t0 = time.perf_counter()
sdata = bt.io.read_zarr(store)
times["read"] = time.perf_counter() - t0
image = sdata[sdata.attrs["bitro"]["image_key"]]["scale0"]["image"]
t0 = time.perf_counter()
bt.pp.segment_cells(sdata, method=method, progress=False)
times["segment"] = time.perf_counter() - t0
peaks["segment"] = maxrss()
t0 = time.perf_counter()
bt.pp.cell_features(sdata, method="morphology", mpp=bt.models.default_model().config["features"]["params"].get("mpp"))
times["features"] = time.perf_counter() - t0
peaks["features"] = maxrss()
t0 = time.perf_counter()
bt.tl.predict(sdata, uncertainty=uncertainty)
times["predict"] = time.perf_counter() - t0
peaks["predict"] = maxrss()
print(json.dumps({
    "megapixels": image.shape[1] * image.shape[2] / 1e6,
    "cells": int(bt.get.predictions(sdata, level="cells").n_obs),
    "times": times,
    "peak_rss_mb": maxrss(),
    "peaks_mb": peaks,
    "peak_tree_rss_mb": peak["tree"] / 2**20,
}))
"""


def run(n_spots: int, method: str, uncertainty: bool, n_jobs: int) -> dict:
    """Render the slide in one process, run the pipeline on it in another (whose peak RSS is the pipeline's)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "slide.zarr"
        true_cells = int(run_child(MAKE, n_spots, store))
        result = json.loads(run_child(CHILD, store, method, "1" if uncertainty else "0", n_jobs))
    return {**result, "true_cells": true_cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5], help="cells (toy: ~42 per spot)")
    parser.add_argument("--method", default="unet")
    parser.add_argument("--no-uncertainty", dest="uncertainty", action="store_false")
    parser.add_argument("--n-jobs", type=int, default=2, help="worker processes for the tiles (bt.settings.n_jobs)")
    args = parser.parse_args()
    rows = []
    for cells in args.sizes:
        r = run(int(cells / 42), args.method, args.uncertainty, args.n_jobs)
        rows.append(r)
        t = r["times"]
        total = sum(t.values())
        print(
            f"{r['cells']:>8} cells ({r['true_cells']} true, {r['megapixels']:.0f} Mpx): "
            + ", ".join(f"{k} {v:.1f} s ({r['cells'] / v:.0f}/s)" for k, v in t.items() if v > 0.05)
            + f"; total {total:.1f} s ({r['cells'] / total:.0f} cells/s), peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(with the worker processes: {r['peak_tree_rss_mb']:.0f} MB); the process's peak after each step: "
            + ", ".join(f"{k} {v:.0f}" for k, v in r["peaks_mb"].items())
            + " MB",
            flush=True,
        )
    if len(rows) >= 2:
        cells = np.log([r["cells"] for r in rows])
        total = np.log([sum(r["times"].values()) for r in rows])
        rss = np.log([r["peak_tree_rss_mb"] for r in rows])
        print(
            f"time ~ cells^{np.polyfit(cells, total, 1)[0]:.2f}, peak RSS ~ cells^{np.polyfit(cells, rss, 1)[0]:.2f} "
            f"(method {args.method}, uncertainty {args.uncertainty}, n_jobs {args.n_jobs})"
        )


if __name__ == "__main__":
    main()
