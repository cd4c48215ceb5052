"""Throughput and memory of ``segment_cells(method="watershed")``: CMU-1, then lazy toy slides of growing size.

Each run is its own process so peak resident memory (ru_maxrss) is that run's alone. Times are end
to end (tiling, reading or rendering the lazy image, segmentation, polygons, writing the layer).

    python benchmarks/segment_cells.py                 # CMU-1, ~1e4 and ~1e5 cells
    python benchmarks/segment_cells.py --max-cells 1e6 --n-jobs 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import bitro as bt
from bitro.pp._segment import segment_cells
what, n_jobs = sys.argv[1], int(sys.argv[2])
if what == "cmu":
    sdata = bt.io.wsi(sys.argv[3])
    cells_true = None
else:
    sdata = bt.datasets.toy_st(n_spots=int(what), n_genes=10, seed=0, lazy=True)
    cells_true = sdata["true_cells"].n_obs
image = sdata[sdata.attrs["bitro"]["image_key"]]["scale0"]["image"]
t0 = time.perf_counter()
segment_cells(sdata, method="watershed", n_jobs=n_jobs, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({
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
    print(f"{'data':>16} {'Mpx':>8} {'true':>8} {'cells':>8} {'s':>7} {'cells/s':>8} {'Mpx/s':>6} {'peak MB':>8}")
    for r in rows:
        print(
            f"{r['data']:>16} {r['megapixels']:>8.1f} {r['true_cells'] or '-':>8} {r['cells']:>8} {r['seconds']:>7.1f} "
            f"{r['cells'] / r['seconds']:>8.0f} {r['megapixels'] / r['seconds']:>6.1f} {r['peak_rss_mb']:>8.0f}"
        )
    toy = [r for r in rows if r["true_cells"]]
    if len(toy) >= 2:
        slope = np.polyfit(np.log([r["cells"] for r in toy]), np.log([r["seconds"] for r in toy]), 1)[0]
        print(f"time ~ cells^{slope:.2f} (1 = linear)")


if __name__ == "__main__":
    main()
