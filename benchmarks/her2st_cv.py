"""Accuracy on real tissue: section-grouped cross-validation over the four HER2ST sections.

BiTro (with and without ring context) beside the mean and ridge baselines, on the same folds in the
same run (DESIGN.md §5): leave-one-section-out (all four sections come from patient C, so groups are
sections), top-50 HVG of each fold's training sections, per-gene Pearson across the spots of the
held-out section. Sections are segmented (watershed) and featurised (morphology) once and cached.

    python benchmarks/her2st_cv.py --data ../shared/data/her2st --cache ~/.cache/bitro/her2st_prepared
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from her2st_prepare import SECTIONS, prepare

VARIANTS = {
    "no context": {"context_um": 0.0},
    "ring context": {"context_um": 200.0, "max_context": 32},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "her2st")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_prepared")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row")
    args = parser.parse_args()

    import bitro as bt

    args.cache.mkdir(parents=True, exist_ok=True)
    sections = [prepare(s, args.data, args.cache) for s in SECTIONS]
    frames = []
    for name in args.variants:
        t0 = time.perf_counter()
        cv = bt.tl.cross_validate(
            sections, n_genes=50, max_epochs=args.max_epochs, data=VARIANTS[name], seed=args.seed, progress=False
        )
        cv.loc[cv["method"] == "bitro", "method"] = f"bitro ({name})"
        if frames:
            cv = cv[cv["method"].str.startswith("bitro")]
        frames.append(cv)
        if args.out:
            pd.concat(frames, ignore_index=True).to_csv(args.out, index=False)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(cv.attrs["protocol"], flush=True)
    df = pd.concat(frames, ignore_index=True)
    table = df.pivot_table(index="test", columns="method", values="pearson_hvg_mean")
    print("\nmean per-gene Pearson, top-50 HVG, within each held-out section:")
    print(table.round(3).to_string())
    print("\nmean over sections:")
    print(df.groupby("method")[["pearson_hvg_mean", "pearson_hvg_median", "pooled_pearson", "mse"]].mean().round(3))
    ridge = table["ridge"]
    for col in table.columns:
        if col.startswith("bitro"):
            print(f"{col} beats ridge on {(table[col] > ridge).sum()} of {len(ridge)} folds")


if __name__ == "__main__":
    main()
