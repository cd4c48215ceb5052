"""Speed and memory of the BiTro model: prediction cells/s and peak memory, training time per epoch.

Part 1, prediction on synthetic slides without images: cells on a jittered 14 µm grid with random
features (21, like ``morphology``), a symmetric kNN (k=8) graph and 256 µm tiles exactly as
``slide_bags`` makes them, one bag = the slide; an untrained network of the default architecture
(50 genes, bulk head) runs ``BiTro.predict_bags`` over it. Each size is its own process. The data
are built first, then the peak-RSS counter is reset (``/proc/self/clear_refs``), so "predict peak"
is the peak during prediction only and "extra" = predict peak - RSS just before predicting: the
working memory of prediction beyond the resident inputs, which should stay flat as slides grow
(the per-cell outputs, ``n_cells x genes`` float32, are listed apart: they are the result).

Part 2, training and prediction through the public API on ``toy_st`` sections of growing spot
count (preprocessing and one warm-up fit + predict untimed: the first call pays imports and
one-time set-up), then ``bt.tl.fit(max_epochs=3, val=None)`` with each training epoch timed by a
callback (s/epoch = the median; bags/s = training spots / that) and ``bt.tl.predict`` on the same
section (spots/s and cells/s). Torch runs ``--threads`` threads (default 1: timings on a shared
2-core machine are steadier that way).

    python benchmarks/model_speed.py                              # 1e4, 1e5, 3e5 cells; 36, 100, 225 spots
    python benchmarks/model_speed.py --cells 1e4 1e5 1e6 --spots 36 100 225 900
    python benchmarks/model_speed.py --skip-train                 # prediction part only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

N_FEATURES, N_GENES, SPACING_UM, TILE_UM, K_NN = 21, 50, 14.0, 256.0, 8


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def synthetic_bags(n_cells: int, seed: int = 0):
    """A one-bag slide of ``n_cells`` cells, tiled as ``bitro.models._data.slide_bags`` tiles."""
    from scipy import sparse
    from scipy.spatial import cKDTree

    from bitro.models._data import tiled_bag

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_cells)))
    i = np.arange(n_cells)
    xy = np.column_stack([i % side, i // side]).astype(np.float64) * SPACING_UM
    xy += rng.uniform(-0.25, 0.25, xy.shape) * SPACING_UM
    xy = xy.astype(np.float32)
    x = rng.standard_normal((n_cells, N_FEATURES), dtype=np.float32)
    _, nbr = cKDTree(xy).query(xy, k=K_NN + 1)
    rows = np.repeat(i, K_NN)
    directed = sparse.csr_matrix((np.ones(rows.size, bool), (rows, nbr[:, 1:].ravel())), shape=(n_cells, n_cells))
    graph = (directed + directed.T).tocsr().astype(bool)
    del nbr, rows, directed
    return tiled_bag("synthetic", x, xy, graph, TILE_UM)  # the tiling slide_bags uses


def child_predict(n_cells: int, batch_size: int) -> dict:
    import gc
    import resource

    import torch

    from bitro.models._config import Architecture
    from bitro.models._model import BiTro, build_module

    torch.manual_seed(0)
    config = {
        "architecture": Architecture(n_features=N_FEATURES).to_dict(),
        "genes": {"bulk": [f"gene{j:04d}" for j in range(N_GENES)]},
        "hvg": {"bulk": [f"gene{j:04d}" for j in range(N_GENES)]},
        "training": {"target": "bulk"},
        "features": {"method": "morphology"},
    }
    model = BiTro(build_module(config), config)
    t0 = time.perf_counter()
    bags = synthetic_bags(n_cells)
    build_s = time.perf_counter() - t0
    g = bags.graph
    input_mb = (bags.x.nbytes + bags.xy.nbytes + g.data.nbytes + g.indices.nbytes + g.indptr.nbytes) / 2**20
    gc.collect()
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset = _reset_peak()
    before = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    bag_pred, cell_pred, weight = model.predict_bags(bags, batch_size=batch_size)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not (np.isfinite(bag_pred).all() and np.isfinite(cell_pred).all()):
        raise RuntimeError("non-finite predictions")
    lengths = [len(s) for s in bags.seq_cells]
    return {
        "cells": n_cells,
        "tiles": len(bags.seq_cells),
        "max_tile_cells": max(lengths),
        "build_s": build_s,
        "seconds": dt,
        "input_mb": input_mb,
        "output_mb": (cell_pred.nbytes + weight.nbytes + n_cells * 8) / 2**20,  # + float64 logits inside
        "rss_before_mb": before,
        "build_peak_mb": build_peak,
        "predict_peak_mb": peak if reset else float("nan"),
        "graph_edges": int(g.nnz),
    }


def child_train(n_spots: int, epochs: int) -> dict:
    import resource
    import warnings

    import bitro as bt
    import bitro.models._plan as plan
    from bitro.tl._preprocess import ensure_preprocessed, preprocessing_settings

    warnings.filterwarnings("ignore")
    sdata = bt.datasets.toy_st(n_spots=n_spots, n_genes=40, seed=0)
    t0 = time.perf_counter()
    ensure_preprocessed(sdata, preprocessing_settings(), kind="spot")
    prep_s = time.perf_counter() - t0
    cells = sdata["bitro_cells"].n_obs
    bt.tl.predict(sdata, bt.tl.fit(sdata, n_genes=30, max_epochs=1, val=None, progress=False))  # warm-up, untimed

    epoch_s: list[float] = []
    base = plan.Resample

    class Timed(base):  # fit's per-epoch callback, also timing each training epoch
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t0 = time.perf_counter()
            super().on_train_epoch_start(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch_s.append(time.perf_counter() - self._t0)

    plan.Resample = Timed
    try:
        t0 = time.perf_counter()
        model = bt.tl.fit(sdata, n_genes=30, max_epochs=epochs, val=None, progress=False)
        fit_s = time.perf_counter() - t0
    finally:
        plan.Resample = base
    t0 = time.perf_counter()
    bt.tl.predict(sdata, model)
    pred_s = time.perf_counter() - t0
    return {
        "spots": n_spots,
        "cells": cells,
        "train_bags": model.config["training"]["n_train_bags"],
        "prep_s": prep_s,
        "fit_s": fit_s,
        "epochs": epochs,
        "epoch_times_s": epoch_s,
        # median epoch; if fit stopped using Resample, the mean over the whole fit (set-up included)
        "epoch_s": float(np.median(epoch_s)) if epoch_s else fit_s / epochs,
        "predict_s": pred_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(threads: int, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"child {args} failed with code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=float, nargs="+", default=[1e4, 1e5, 3e5], help="slide sizes to predict")
    parser.add_argument("--spots", type=int, nargs="+", default=[36, 100, 225], help="toy_st sizes to train on")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the timed fit")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass in predict_bags")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        what, *rest = args.child
        row = (
            child_predict(int(rest[0]), int(rest[1])) if what == "predict" else child_train(int(rest[0]), int(rest[1]))
        )
        print(json.dumps(row))
        return

    if not args.skip_predict:
        print(
            f"# predict_bags, untrained default network ({N_GENES} genes), synthetic slide: {SPACING_UM:g} µm grid, "
            f"kNN k={K_NN}, {TILE_UM:g} µm tiles, batch {args.batch_size} tiles, "
            f"{args.threads} torch thread(s); one process per size"
        )
        rows = []
        for n in args.cells:
            rows.append(run(args.threads, "predict", str(int(n)), str(args.batch_size)))
            print(json.dumps(rows[-1]), flush=True)
        print(
            f"{'cells':>9} {'tiles':>6} {'seconds':>8} {'cells/s':>8} {'input MB':>9} {'output MB':>10} "
            f"{'RSS before':>11} {'pred peak':>10} {'extra MB':>9} {'- output':>9} {'build peak':>11}"
        )
        for r in rows:
            extra = r["predict_peak_mb"] - r["rss_before_mb"]
            print(
                f"{r['cells']:>9} {r['tiles']:>6} {r['seconds']:>8.1f} {r['cells'] / r['seconds']:>8.0f} "
                f"{r['input_mb']:>9.1f} {r['output_mb']:>10.1f} {r['rss_before_mb']:>11.0f} "
                f"{r['predict_peak_mb']:>10.0f} {extra:>9.0f} {extra - r['output_mb']:>9.0f} {r['build_peak_mb']:>11.0f}"
            )
        if len(rows) >= 2:
            slope = np.polyfit(np.log([r["cells"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)[0]
            print(
                f"predict time ~ cells^{slope:.2f} (1 = linear); extra MB = prediction peak - RSS before it; "
                "'- output' takes the per-cell outputs (allocated during prediction) out of it: working memory, "
                "set by the batch (tiles x cells per tile), not by the slide"
            )

    if not args.skip_train:
        print(
            f"\n# bt.tl.fit on toy_st(n_genes=40, seed=0), n_genes=30, max_epochs={args.epochs}, val=None, default "
            "data/architecture; s/epoch = median training epoch; predict = bt.tl.predict on the same section"
        )
        rows = []
        for n in args.spots:
            rows.append(run(args.threads, "train", str(n), str(args.epochs)))
            print(json.dumps(rows[-1]), flush=True)
        print(
            f"{'spots':>6} {'cells':>7} {'prep s':>7} {'fit s':>6} {'s/epoch':>8} {'bags/s':>7} {'pred s':>7} "
            f"{'spots/s':>8} {'cells/s':>8} {'peak MB':>8}"
        )
        for r in rows:
            print(
                f"{r['spots']:>6} {r['cells']:>7} {r['prep_s']:>7.1f} {r['fit_s']:>6.1f} {r['epoch_s']:>8.2f} "
                f"{r['train_bags'] / r['epoch_s']:>7.0f} {r['predict_s']:>7.2f} {r['spots'] / r['predict_s']:>8.0f} "
                f"{r['cells'] / r['predict_s']:>8.0f} {r['peak_rss_mb']:>8.0f}"
            )


if __name__ == "__main__":
    main()
