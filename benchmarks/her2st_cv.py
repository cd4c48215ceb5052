"""Accuracy on real tissue: section-grouped cross-validation over the four HER2ST sections.

BiTro (with and without ring context) beside the mean and ridge baselines, on the same folds in the
same run (DESIGN.md §5): leave-one-section-out (all four sections come from patient C, so groups are
sections), top-50 HVG of each fold's training sections, per-gene Pearson across the spots of the
held-out section. Sections are segmented and featurised once with the default preprocessing and
cached. Every seed reruns the whole cross-validation (model and ridge on the same folds); the
summary gives the mean over seeds with its spread and the paired difference to ridge per fold.

    python benchmarks/her2st_cv.py --data ../shared/data/her2st --seeds 0 1 2 --variants "ring context"
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row")
    args = parser.parse_args()

    import bitro as bt

    args.cache.mkdir(parents=True, exist_ok=True)
    sections = [prepare(s, args.data, args.cache) for s in SECTIONS]
    frames = []
    for seed in args.seeds:
        for name in args.variants:
            t0 = time.perf_counter()
            cv = bt.tl.cross_validate(
                sections, n_genes=50, max_epochs=args.max_epochs, data=VARIANTS[name], seed=seed, progress=False
            )
            cv.loc[cv["method"] == "bitro", "method"] = f"bitro ({name})"
            if name != args.variants[0]:
                cv = cv[cv["method"].str.startswith("bitro")]
            frames.append(cv.assign(seed=seed))
            if args.out:
                pd.concat(frames, ignore_index=True).to_csv(args.out, index=False)
            print(f"seed {seed}, {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(cv.attrs["protocol"], flush=True)
    report(pd.concat(frames, ignore_index=True))


def report(df: pd.DataFrame) -> None:
    """Per fold: mean over seeds (sd); per method: mean over folds; paired difference to ridge per seed."""
    metric = "pearson_hvg_mean"
    per_seed = df.pivot_table(index=["seed", "test"], columns="method", values=metric)
    by_fold = per_seed.groupby(level="test")
    table = by_fold.mean().round(3).astype(str) + " (" + by_fold.std(ddof=1).round(3).astype(str) + ")"
    print(
        f"\nmean per-gene Pearson, top-50 HVG, within each held-out section: mean over {df.seed.nunique()} seeds (sd)"
    )
    print(table.to_string())
    fold_means = per_seed.groupby(level="seed").mean()  # each seed's mean over the four folds
    print("\nmean over sections, per seed:")
    print(fold_means.round(3).to_string())
    print(
        "mean (sd over seeds):",
        {m: f"{fold_means[m].mean():.3f} ({fold_means[m].std(ddof=1):.3f})" for m in fold_means},
    )
    for col in per_seed.columns:
        if not col.startswith("bitro"):
            continue
        diff = per_seed[col] - per_seed["ridge"]
        per_seed_diff = diff.groupby(level="seed").mean()
        wins = (diff > 0).groupby(level="seed").sum()
        print(
            f"{col} - ridge: {per_seed_diff.mean():+.3f} (sd over seeds {per_seed_diff.std(ddof=1):.3f}); "
            f"per seed {per_seed_diff.round(3).tolist()}; folds won per seed {wins.tolist()} of "
            f"{per_seed.index.get_level_values('test').nunique()}"
        )


if __name__ == "__main__":
    main()
