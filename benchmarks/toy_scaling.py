"""How the synthetic tissue scales: layout and rendering rates and peak memory versus size.

Each size runs in its own process so peak resident memory (ru_maxrss) is that size's alone. The
image is rendered chunk by chunk straight into a zarr store, so memory should follow the cells
table, not the number of pixels.

    python benchmarks/toy_scaling.py                # 1e3 .. 1e5 cells
    python benchmarks/toy_scaling.py --max-cells 1e6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, tempfile
import dask.array as da
import bitro as bt
n_spots = int(sys.argv[1])
t0 = time.perf_counter()
sdata = bt.datasets.toy_st(n_spots=n_spots, n_genes=50, seed=0, lazy=True)
t_layout = time.perf_counter() - t0
image = sdata["toy_full_image"]["scale0"]["image"].data
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    da.to_zarr(image, tmp + "/image.zarr", compute=True)
t_render = time.perf_counter() - t0
print(json.dumps({
    "spots": n_spots,
    "cells": sdata["true_cells"].n_obs,
    "megapixels": image.shape[1] * image.shape[2] / 1e6,
    "layout_s": t_layout,
    "render_s": t_render,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-cells", type=float, default=1e5)
    args = parser.parse_args()
    rows = []
    n_spots = 100  # ~1e3 cells
    while True:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n_spots)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if rows[-1]["cells"] * 3.5 > args.max_cells:
            break
        n_spots = int(n_spots * 3.3)
    print(
        f"{'spots':>7} {'cells':>9} {'Mpx':>8} {'layout s':>9} {'cells/s':>9} {'render s':>9} {'Mpx/s':>7} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['spots']:>7} {r['cells']:>9} {r['megapixels']:>8.1f} {r['layout_s']:>9.2f} "
            f"{r['cells'] / r['layout_s']:>9.0f} {r['render_s']:>9.2f} {r['megapixels'] / r['render_s']:>7.1f} "
            f"{r['peak_rss_mb']:>8.0f}"
        )
    if len(rows) >= 2:
        import math

        a, b = rows[0], rows[-1]
        k = math.log(b["layout_s"] + b["render_s"]) - math.log(a["layout_s"] + a["render_s"])
        print(f"scaling exponent of total time in cells: {k / math.log(b['cells'] / a['cells']):.2f}")
        mem = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["cells"] - a["cells"]) * 1e3
        print(f"peak memory growth: {mem:.2f} MB per 1000 cells (pixels: {b['megapixels'] / a['megapixels']:.0f}x)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
