"""Memory of a bulk ``fit`` against the size of the cohort: slides held in memory, or given as stores.

A toy bulk cohort of ``--cells`` cells per slide is rendered, segmented (watershed), measured and
given its cell graph, and written as one zarr store per slide (untimed, once). Then, each in its own
process, ``bt.tl.fit(target="bulk")`` trains on the first N slides, either read into memory first
(``memory``: a list of SpatialData, what a user who reads a cohort holds) or given as the stores'
paths (``stores``: read one at a time, bags spilled to memory-mapped files). Prints, per run, the
time, the peak resident memory (``ru_maxrss``, which counts mapped file pages too) and the peak
anonymous memory (``RssAnon`` sampled every 0.05 s: what the system cannot reclaim), and the slope
of each against N (MB per added slide).

    python benchmarks/bulk_fit_memory.py                     # 2, 4 and 8 slides of ~2e4 cells
    python benchmarks/bulk_fit_memory.py --slides 2 8 16 --cells 5e4 --keep /tmp/bulk_cohort  # stores kept
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
n_slides, cells, folder = int(sys.argv[1]), int(float(sys.argv[2])), sys.argv[3]
bt.settings.verbosity = 0
slides, _ = bt.datasets.toy_bulk_cohort(n_slides=n_slides, n_genes=60, cells_per_slide=cells, seed=0)
n = []
for s in slides:
    sid = s.attrs["bitro"]["sample_id"]
    del s.tables["true_cells"], s.shapes[f"{sid}_true_cells"]  # ground truth: not what a cohort holds
    bt.pp.segment_cells(s, method="watershed", n_jobs=2, progress=False)
    bt.pp.cell_features(s, n_jobs=2)
    bt.pp.cell_graph(s, k=8, within="all")  # what fit would build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.write(f"{folder}/{sid}.zarr")
"""

COUNT = r"""
import sys
from pathlib import Path
import bitro as bt
stores = sorted(Path(sys.argv[2]).glob("*.zarr"))[: int(sys.argv[1])]
print(int(sum(bt.io.read_zarr(s)["bitro_cells"].n_obs for s in stores) / len(stores)))
"""

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
import bitro as bt
mode, n, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
bt.settings.verbosity = 0
peak = {"anon": 0}

def watch():  # anonymous resident memory (not file pages) of this process, every 0.05 s
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
        time.sleep(0.05)

threading.Thread(target=watch, daemon=True).start()
stores = sorted(folder.glob("*.zarr"))[:n]
t0 = time.perf_counter()
samples = [bt.io.read_zarr(s) for s in stores] if mode == "memory" else stores
model = bt.tl.fit(samples, target="bulk", n_genes=20, val=None, max_epochs=3, progress=False)
print(json.dumps({
    "seconds": time.perf_counter() - t0,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_anon_mb": peak["anon"] / 2**20,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[2, 4, 8], help="cohort sizes (slides)")
    parser.add_argument("--cells", type=float, default=2e4, help="cells per slide (toy)")
    parser.add_argument("--keep", help="folder for the toy stores, kept and reused by later runs (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        if len(list(Path(folder).glob("*.zarr"))) < max(args.slides):
            Path(folder).mkdir(parents=True, exist_ok=True)
            run_child(MAKE, max(args.slides), args.cells, folder)
        cells = int(run_child(COUNT, max(args.slides), folder))
        print(f"{max(args.slides)} toy slides of {cells} segmented cells on average", flush=True)
        rows = {"memory": [], "stores": []}
        for n in args.slides:
            for mode in rows:
                r = json.loads(run_child(CHILD, mode, n, folder))
                rows[mode].append(r)
                print(
                    f"{n:>3} slides, {mode:>6}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                    f"peak anonymous {r['peak_anon_mb']:.0f} MB",
                    flush=True,
                )
    if len(args.slides) >= 2:
        for mode, rs in rows.items():
            rss = np.polyfit(args.slides, [r["peak_rss_mb"] for r in rs], 1)[0]
            anon = np.polyfit(args.slides, [r["peak_anon_mb"] for r in rs], 1)[0]
            print(f"{mode}: peak RSS +{rss:.0f} MB per slide, peak anonymous +{anon:.0f} MB per slide ({cells} cells)")


if __name__ == "__main__":
    main()
