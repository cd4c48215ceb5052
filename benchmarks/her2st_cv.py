"""Accuracy on real tissue: section-grouped cross-validation over the four HER2ST sections.

BiTro beside the mean and ridge baselines, on the same folds in the same run (DESIGN.md §5):
leave-one-section-out (all four sections come from patient C, so groups are sections); in each fold
the model trains on two of the other sections and validates on the third; top-50 HVG of each fold's
training sections; per-gene Pearson across the spots of the held-out section. Sections are
segmented and featurised once and cached.

Feature sets (``--features``): ``morphology`` (21 handcrafted features, the default) and
``morphology+encoder`` (those plus the bundled offline cell encoder's 64). Every (feature set,
variant, seed) runs the whole cross-validation, ridge included, on the same folds (the seed fixes
them). Settings are chosen per fold on the VALIDATION section (``val_pearson_hvg_mean``), never on
the test section: the report gives each configuration, the one chosen on validation, and paired
per-fold differences against ridge on the same features and against ridge on morphology. Results
are kept per configuration in ``--results`` (a rerun skips what is there).

    python benchmarks/her2st_cv.py --features morphology morphology+encoder --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from her2st_prepare import SECTIONS, prepare, segmentation_label

RING = {"context_um": 200.0, "max_context": 32}
VARIANTS = {
    "no context": {"data": {"context_um": 0.0}},
    "ring context": {"data": RING},
    "ring context, dropout 0.25": {"data": RING, "architecture": {"dropout": 0.25}},
    "ring context, weight decay 0.1": {"data": RING, "weight_decay": 0.1},
    "ring context, hidden 32": {"data": RING, "architecture": {"hidden": 32}},
}
"""Options of ``bt.tl.fit`` per variant."""


def feature_sets() -> dict[str, dict | None]:
    """Options of ``bt.pp.cell_features`` per feature set (``None``: the default preprocessing's)."""
    import bitro as bt

    encoder = Path(bt.__file__).parent / "pp" / "cell_encoder"
    return {"morphology": None, "morphology+encoder": {"method": "morphology+encoder", "encoder": encoder}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "her2st")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_prepared")
    parser.add_argument("--results", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_cv")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--features", nargs="+", default=["morphology"])
    parser.add_argument("--variants", nargs="+", default=["ring context"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row")
    args = parser.parse_args()

    import bitro as bt

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    sets = feature_sets()
    segmentation = segmentation_label()  # results of other nucleus weights are never reused
    frames = []
    for features in args.features:
        sections = [prepare(s, args.data, args.cache, sets[features], label=features) for s in SECTIONS]
        for seed in args.seeds:
            for name in args.variants:
                config = f"{features}, {name}"
                slug = name.replace(" ", "-").replace(",", "")
                done = args.results / f"{segmentation}_{features}_{slug}_seed{seed}_epochs{args.max_epochs}.csv"
                if done.is_file():
                    frames.append(pd.read_csv(done))
                    continue
                t0 = time.perf_counter()
                cv = bt.tl.cross_validate(
                    sections, n_genes=50, max_epochs=args.max_epochs, seed=seed, progress=False, **VARIANTS[name]
                )
                cv = cv.assign(seed=seed, features=features, variant=name, config=config)
                cv.to_csv(done, index=False)
                frames.append(cv)
                print(f"seed {seed}, {config}: {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.concat(frames, ignore_index=True)
    if args.out:
        df.to_csv(args.out, index=False)
    print(
        "protocol: leave-one-section-out over C2-C5 (one patient: groups are sections); each fold trains on two "
        "sections, validates on the third, tests on the held-out one; top-50 HVG of the training sections; "
        "per-gene Pearson across the spots of the held-out section",
        flush=True,
    )
    report(df)


def report(df: pd.DataFrame) -> None:
    """Each configuration's mean over seeds (sd), the configuration chosen on validation, paired differences."""
    metric = "pearson_hvg_mean"
    bitro = df[df["method"] == "bitro"]
    ridge = df[df["method"] == "ridge"].pivot_table(index=["seed", "test"], columns="features", values=metric)
    scores = bitro.pivot_table(index=["seed", "test"], columns="config", values=metric)
    val = bitro.pivot_table(index=["seed", "test"], columns="config", values="val_pearson_hvg_mean")
    chosen = val.idxmax(axis=1)  # per seed and fold, by the validation section only
    scores["chosen on validation"] = [scores.loc[i, c] for i, c in chosen.items()]
    for features in ridge.columns:
        scores[f"ridge ({features})"] = ridge[features]
    n_seeds = df["seed"].nunique()
    by_fold = scores.groupby(level="test")
    table = by_fold.mean().round(3).astype(str) + " (" + by_fold.std(ddof=1).round(3).astype(str) + ")"
    print(f"\nmean per-gene Pearson, top-50 HVG, held-out section; mean over {n_seeds} seeds (sd over seeds)")
    print(table.T.to_string())
    per_seed = scores.groupby(level="seed").mean()
    print("\nmean over the 4 sections, mean (sd over seeds):")
    for col in per_seed:
        print(f"  {col:40s} {per_seed[col].mean():.3f} ({per_seed[col].std(ddof=1):.3f})")
    print("\nchosen on validation, per seed and fold:")
    print(chosen.unstack("test").to_string())
    feats_of = dict(zip(bitro["config"], bitro["features"], strict=False))
    print("\npaired per-fold differences (mean over folds; per seed; folds won per seed):")
    for col in [c for c in scores if not c.startswith("ridge")]:
        baselines = {"ridge (morphology)": "morphology"}
        if col in feats_of and feats_of[col] != "morphology":
            baselines = {f"ridge ({feats_of[col]})": feats_of[col], **baselines}
        for label, features in baselines.items():
            if features not in ridge:
                continue
            diff = scores[col] - ridge[features]
            seed_diff = diff.groupby(level="seed").mean()
            wins = (diff > 0).groupby(level="seed").sum().tolist()
            print(
                f"  {col} - {label}: {seed_diff.mean():+.3f} (sd over seeds {seed_diff.std(ddof=1):.3f}); "
                f"per seed {seed_diff.round(3).tolist()}; folds won {wins} of {diff.index.get_level_values('test').nunique()}"
            )


if __name__ == "__main__":
    main()
