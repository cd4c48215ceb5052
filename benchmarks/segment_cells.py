"""Throughput and memory of ``segment_cells(method="watershed")`` + ``cell_features("morphology")``.

CMU-1, then toy slides of growing size (rendered once into a zarr store, untimed, and read back
lazily like any stored slide). Each run is its own process so peak resident memory (ru_maxrss) is
that run's alone. Times are end to end (reading tiles, segmentation, polygons, writing the layer;
then the features).

    python benchmarks/segment_cells.py                 # CMU-1, ~1e4 and ~1e5 cells
    python benchmarks/segment_cells.py --max-cells 1e6 --n-jobs 4   # tiles of both steps in 4 processes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, tempfile, time, warnings
import bitro as bt
import spatialdata as sd
what, n_jobs = sys.argv[1], int(sys.argv[2])
bt.settings.n_jobs = n_jobs  # worker processes for the tiles of both steps
if what == "cmu":
    sdata = bt.io.wsi(sys.argv[3])
    cells_true = None
else:
    toy = bt.datasets.toy_st(n_spots=int(what), n_genes=10, seed=0, lazy=True)
    cells_true = toy["true_cells"].n_obs
    store = tempfile.mkdtemp() + "/toy.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        toy.write(store)
    sdata = sd.read_zarr(store)
image = sdata[sdata.attrs["bitro"]["image_key"]]["scale0"]["image"]
t0 = time.perf_counter()
bt.pp.segment_cells(sdata, method="watershed", n_jobs=n_jobs, progress=False)
dt = time.perf_counter() - t0
t0 = time.perf_counter()
bt.pp.cell_features(sdata, method="morphology")
dt_features = time.perf_counter() - t0
print(json.dumps({
    "features_seconds": dt_features,
    "data": "CMU-1" if what == "cmu" else f"toy {what} spots",
    "megapixels": image.shape[1] * image.shape[2] / 1e6,
    "true_cells": cells_true,
    "cells": sdata["bitro_cells"].n_obs,
    "seconds": dt,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(what: str, n_jobs: int) -> dict:
    cmu = str(Path(__file__).parents[1] / "tests" / "data" / "wsi" / "CMU-1-Small-Region.svs")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(n_jobs), cmu], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-cells", type=float, default=1e5)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    rows = [run("cmu", args.n_jobs)]
    # toy_st: ~42 cells per spot at the defaults
    for cells in (1e4, 1e5, 1e6):
        if cells > args.max_cells:
            break
        rows.append(run(str(int(cells / 42)), args.n_jobs))
    print(
        f"{'data':>16} {'Mpx':>7} {'true':>7} {'cells':>7} {'seg s':>6} {'seg c/s':>8} {'feat s':>6} "
        f"{'feat c/s':>8} {'e2e c/s':>8} {'peak MB':>8}"
    )
    for r in rows:
        total = r["seconds"] + r["features_seconds"]
        print(
            f"{r['data']:>16} {r['megapixels']:>7.1f} {r['true_cells'] or '-':>7} {r['cells']:>7} "
            f"{r['seconds']:>6.1f} {r['cells'] / r['seconds']:>8.0f} {r['features_seconds']:>6.1f} "
            f"{r['cells'] / r['features_seconds']:>8.0f} {r['cells'] / total:>8.0f} {r['peak_rss_mb']:>8.0f}"
        )
    toy = [r for r in rows if r["true_cells"]]
    if len(toy) >= 2:
        seconds = [r["seconds"] + r["features_seconds"] for r in toy]
        slope = np.polyfit(np.log([r["cells"] for r in toy]), np.log(seconds), 1)[0]
        print(f"time ~ cells^{slope:.2f} (1 = linear)")


if __name__ == "__main__":
    main()
