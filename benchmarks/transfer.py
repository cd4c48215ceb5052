"""Transfer between bulk and spots: LoRA, head-only and full fine-tuning against training from scratch.

Protocol (every number printed comes with the settings it was run with):

- Toy bulk -> spots (``--part toy``). A bulk model is trained once (``bt.tl.fit(target="bulk")``,
  seed 0, at most ``--bulk-epochs``) on a ``toy_bulk_cohort`` of ``--n-slides`` slides, validation
  20% of the patients. The target data are 1 or 2 ``toy_st`` sections of ``--n-spots`` spots (seeds
  100, 101): the scarce case. On them, for every seed: LoRA, head-only and full transfer of the bulk
  model (``bt.tl.transfer``, ``genes=bulk.genes``) and a from-scratch ``bt.tl.fit`` on the same
  sections and genes. Validation for early stopping is spatial blocks of the target sections (one
  group), for every method. Every model predicts held-out ``toy_st`` sections (seeds 200, 201) that
  no model sees; the score is the per-gene Pearson across spots (``bt.tl.evaluate``,
  ``pearson_mean``) averaged over those sections. All toy data share ``program_seed=0``: a gene
  means the same thing in bulk and spatial data.
- Toy spots -> bulk (``--part toy``). A spot model is trained on three ``toy_st`` sections (seeds
  300-302). A second cohort (seed 1) of 2 x ``--n-cohort`` slides, one patient per slide: the first
  half trains (validation 25% of them), the second half is the test set. LoRA transfer (head / full
  too with ``--s2b-modes``) of the spot model to ``target="bulk"`` against a bulk model from scratch
  on the same slides and genes, and the spot model with no transfer (its pseudo-spot predictions
  averaged in CP10k space); scored by per-gene Pearson across the test slides (``bt.tl.evaluate``).
- Cost (``--part toy``). On one target section with no validation (all runs train exactly
  ``--max-epochs`` epochs): trainable / total parameters, size on disk of ``save_adapter`` (LoRA)
  and ``save`` (whole model) folders, wall time of each transfer and of the from-scratch fit.
- Real HER2ST (``--part real``), leave-one-section-out over C2-C5 (one patient, four sections). A
  section's pseudo-bulk sample is its cells layer (a whole-slide bag) with the column sums of its
  spot counts as a 1 x genes table. For each held-out section T: a bulk model on the other three
  pseudo-bulk samples (no validation), LoRA transfer to the spots of ONE other section (the one
  before T, cyclically) against a from-scratch fit on that one section, and a from-scratch fit on
  all three other sections as a reference, every model on the same gene panel (``--real-panel``: the
  HVGs of the three pseudo-bulk samples, or of the three sections' spots as in ``her2st_cv.py``);
  scored on T's spots, per-gene Pearson across spots. Spots -> bulk: the spot model of the
  three other sections, without and with LoRA transfer to their three pseudo-bulk samples, predicts
  T's pseudo-bulk profile; with one test sample the only defined score is the Pearson across genes
  of that one profile, which gene abundance dominates (the mean-profile baseline shows how much).

    python benchmarks/transfer.py                                   # toy, then real if prepared
    python benchmarks/transfer.py --part toy --n-slides 12 --seeds 0 --max-epochs 3   # smoke test
    python benchmarks/transfer.py --part real --cache ~/.cache/bitro/her2st_prepared --real-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MODES = ("lora", "head", "full")
BULK_KEYS = ("pearson_mean", "n_genes_significant", "sample_pearson_mean")


# --- small helpers -------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """ome_zarr's note on its deprecated ``Scaler`` (raised while spatialdata reads a zarr store)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Scaler.*", category=DeprecationWarning, module="ome_zarr")
        yield


def _ms(values, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (sd with ddof=1; only the mean for one seed)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "nan"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _n_params(model, trainable: bool) -> int:
    rec = model.config.get("transfer")
    if rec is not None:
        return rec["trainable_parameters"] if trainable else rec["total_parameters"]
    return sum(p.numel() for p in model.module.parameters())


def _spot_scores(model, sections) -> dict:
    """Mean over ``sections`` of ``bt.tl.evaluate``'s per-section spot metrics (predictions on copies)."""
    import bitro as bt

    preds = [bt.tl.predict(s, model, uncertainty=False, copy=True) for s in sections]
    df = bt.tl.evaluate(preds, spatial=False)
    return {k: float(df[k].mean()) for k in ("pearson_mean", "pearson_hvg_mean")}


def _bulk_truth(sdata, genes) -> np.ndarray:
    from bitro import _constants as K
    from bitro._expression import gene_columns, log_cp10k

    table = sdata.tables[sdata.attrs[K.ATTRS_KEY].get(K.ATTR_TABLE, K.TABLE_KEY)]
    return log_cp10k(table.X, where="bulk table")[:, gene_columns(table, genes, where="bulk table")]


def _bulk_prediction(model, sdata) -> np.ndarray:
    """``(1, genes)`` log1p(CP10k) prediction of a slide by a bulk head (on a copy)."""
    import bitro as bt

    out = bt.tl.predict(sdata, model, target="bulk", uncertainty=False, copy=True)
    return np.asarray(bt.get.predictions(out, level="slide").X, dtype=np.float64)


def _bulk_from_spots(model, sdata) -> np.ndarray:
    """A spot model's slide profile with no transfer: its pseudo-spot predictions averaged in CP10k space."""
    import bitro as bt

    out = bt.tl.predict(sdata, model, target="spot", uncertainty=False, copy=True)
    pred = np.asarray(bt.get.predictions(out).X, dtype=np.float64)
    pred = pred[np.isfinite(pred).all(axis=1)]
    return np.log1p(np.expm1(pred).mean(axis=0, keepdims=True))


def _bulk_scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    from bitro.tl._metrics import bulk_metrics

    m = bulk_metrics(truth, pred)
    return {k: float(m[k]) for k in BULK_KEYS}


def _across_genes(truth: np.ndarray, pred: np.ndarray) -> float:
    t, p = truth.ravel(), pred.ravel()
    ok = np.isfinite(t) & np.isfinite(p)
    return float(np.corrcoef(t[ok], p[ok])[0, 1])


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def _train(kind: str, sdatas, source, args, *, target: str, genes, seed: int, **kw):
    """``bt.tl.fit`` (``kind="scratch"``) or ``bt.tl.transfer`` of ``source`` in mode ``kind``; returns (model, seconds)."""
    import bitro as bt

    # every method gets the same learning rate, epoch cap and patience: a fair comparison
    common = {"target": target, "genes": genes, "max_epochs": args.max_epochs, "patience": args.patience}
    common.update(lr=args.lr, seed=seed, progress=False, **kw)
    if kind == "scratch":
        return _timed(bt.tl.fit, sdatas, **common)
    lora = {"r": args.r, "alpha": args.alpha} if kind == "lora" else {}
    return _timed(bt.tl.transfer, sdatas, source, mode=kind, **lora, **common)


def _gain_lines(scores: dict, methods: list[str], reference: str, key: str = "pearson_mean") -> list[str]:
    """Per-seed differences method - reference: mean ± sd and how many seeds the method wins."""
    lines = []
    ref = scores[reference]
    for m in methods:
        d = [a[key] - b[key] for a, b in zip(scores[m], ref, strict=True)]
        wins = sum(x > 0 for x in d)
        lines.append(f"    {m} - {reference}: {_ms(d)}  (better on {wins} of {len(d)} seeds)")
    return lines


# --- toy -----------------------------------------------------------------------------------------
def _preprocess(sdatas, kind: str) -> None:
    from bitro.tl._preprocess import ensure_preprocessed, preprocessing_settings

    prep = preprocessing_settings()
    for s in sdatas:
        ensure_preprocessed(s, prep, kind=kind)


def toy_bulk_to_spot(args) -> dict:
    import bitro as bt

    t0 = time.perf_counter()
    slides, cohort = bt.datasets.toy_bulk_cohort(
        n_slides=args.n_slides, n_genes=args.n_genes_data, cells_per_slide=args.cells_per_slide, seed=0
    )
    _preprocess(slides, "bulk")
    patients = cohort.obs["patient_id"].astype(str).tolist()
    gen_s = time.perf_counter() - t0
    bulk, bulk_s = _train(
        "scratch",
        slides,
        None,
        args,
        target="bulk",
        genes=None,
        seed=0,
        n_genes=args.n_genes,
        val=0.2,
        groups=patients,
        max_epochs=args.bulk_epochs,
    )
    tr = bulk.config["training"]
    print(
        f"\nbulk source model: {args.n_slides} toy slides (~{args.cells_per_slide} cells, {len(set(patients))} "
        f"patients), {len(bulk.genes)} HVGs of {args.n_genes_data}; trained on {len(tr['samples'])} slides, "
        f"validation {len(tr['validation'])} slides of held-out patients; {tr['epochs']} of max {args.bulk_epochs} "
        f"epochs (best "
        f"{bulk.best_epoch}); {bulk_s:.0f} s (data made and preprocessed in {gen_s:.0f} s)",
        flush=True,
    )

    n_max = max(args.n_targets)
    targets = [
        bt.datasets.toy_st(n_spots=args.n_spots, n_genes=args.n_genes_data, seed=100 + k, sample_id=f"target{k}")
        for k in range(n_max)
    ]
    tests = [
        bt.datasets.toy_st(n_spots=args.n_test_spots, n_genes=args.n_genes_data, seed=200 + k, sample_id=f"test{k}")
        for k in range(args.n_test)
    ]
    _preprocess(targets + tests, "spot")

    methods = [*args.modes, "scratch"]
    results = {}
    for n_target in args.n_targets:
        tg = targets[:n_target]
        scores = {m: [] for m in methods}
        times = {m: [] for m in methods}
        for seed in args.seeds:
            for m in methods:
                model, sec = _train(
                    m, tg, bulk, args, target="spot", genes=bulk.genes, seed=seed, groups=["target"] * n_target
                )
                scores[m].append(_spot_scores(model, tests))
                times[m].append(sec)
                print(
                    f"  [bulk->spot] {n_target} target section(s), seed {seed}, {m}: "
                    f"pearson_mean {scores[m][-1]['pearson_mean']:.3f}, {len(model.history)} epochs, {sec:.0f} s",
                    flush=True,
                )
        results[n_target] = (scores, times)

    print(
        f"\n== Toy bulk -> spots: {len(bulk.genes)} genes (the bulk model's), target sections of {args.n_spots} spots "
        f"(seeds 100..), validation = spatial blocks of the target sections; test = {args.n_test} held-out sections "
        f"of {args.n_test_spots} spots (seeds 200..). Per-gene Pearson across test spots (bt.tl.evaluate "
        f"pearson_mean, mean over test sections); mean ± sd over seeds {args.seeds}; max_epochs {args.max_epochs}, "
        f"patience {args.patience}; LoRA r={args.r}, alpha={args.alpha}; lr {args.lr} for every method."
    )
    print(f"{'method':<10}" + "".join(f"{f'{n} section(s)':>22}" for n in args.n_targets) + f"{'time (s)':>10}")
    for m in methods:
        row = "".join(f"{_ms([s['pearson_mean'] for s in results[n][0][m]]):>22}" for n in args.n_targets)
        t = np.mean([np.mean(results[n][1][m]) for n in args.n_targets])
        print(f"{m:<10}{row}{t:>10.1f}")
    for n in args.n_targets:
        print(f"  gain over scratch, {n} target section(s) (same seed paired):")
        print("\n".join(_gain_lines(results[n][0], list(args.modes), "scratch")))
    return {"bulk": bulk, "targets": targets, "bulk_s": bulk_s}


def toy_spot_to_bulk(args) -> None:
    import bitro as bt

    sources = [
        bt.datasets.toy_st(n_spots=args.source_spots, n_genes=args.n_genes_data, seed=300 + k, sample_id=f"src{k}")
        for k in range(3)
    ]
    slides, cohort = bt.datasets.toy_bulk_cohort(
        n_slides=2 * args.n_cohort,
        n_patients=2 * args.n_cohort,
        n_genes=args.n_genes_data,
        cells_per_slide=args.cells_per_slide,
        seed=1,
        sample_prefix="cohort",
    )
    _preprocess(sources, "spot")
    _preprocess(slides, "bulk")
    spot, spot_s = _train("scratch", sources, None, args, target="spot", genes=None, seed=0, n_genes=args.n_genes)
    train, test = slides[: args.n_cohort], slides[args.n_cohort :]
    patients = cohort.obs["patient_id"].astype(str).tolist()[: args.n_cohort]
    genes = spot.genes
    truth = np.vstack([_bulk_truth(s, genes) for s in test])
    tr = spot.config["training"]
    print(
        f"\nspot source model: 3 toy sections of {args.source_spots} spots (trained on {tr['samples']}, validation "
        f"{tr['validation']}), {len(genes)} HVGs; {tr['epochs']} epochs; {spot_s:.0f} s",
        flush=True,
    )

    no_transfer = _bulk_scores(truth, np.vstack([_bulk_from_spots(spot, s) for s in test]))
    methods = [*args.s2b_modes, "scratch"]
    scores = {m: [] for m in methods}
    for seed in args.seeds:
        for m in methods:
            model, sec = _train(m, train, spot, args, target="bulk", genes=genes, seed=seed, val=0.25, groups=patients)
            pred = np.vstack([_bulk_prediction(model, s) for s in test])
            scores[m].append(_bulk_scores(truth, pred))
            print(
                f"  [spot->bulk] seed {seed}, {m}: pearson_mean {scores[m][-1]['pearson_mean']:.3f}, "
                f"{len(model.history)} epochs, {sec:.0f} s",
                flush=True,
            )

    print(
        f"\n== Toy spots -> bulk: {len(genes)} genes (the spot model's); {args.n_cohort} training slides (validation "
        f"25% of them, one patient per slide), {args.n_cohort} test slides of other patients (cohort seed 1). "
        f"Per-gene Pearson across the {args.n_cohort} test slides (pearson_mean), genes with r > 0.4 and FDR < 0.05 "
        f"(n_sig), per-slide Pearson across genes (secondary); mean ± sd over seeds {args.seeds}."
    )
    print(f"{'method':<36}{'pearson_mean':>16}{'n_sig':>16}{'per-slide r':>16}")
    for m in methods:
        cols = [_ms([s[k] for s in scores[m]], 1 if k == "n_genes_significant" else 3) for k in BULK_KEYS]
        print(f"{m:<36}" + "".join(f"{c:>16}" for c in cols))
    nt = no_transfer
    print(
        f"{'spot model, no transfer (pseudo-spots)':<36}{nt['pearson_mean']:>16.3f}{nt['n_genes_significant']:>16.0f}"
        f"{nt['sample_pearson_mean']:>16.3f}"
    )
    print("  gain over scratch (same seed paired):")
    print("\n".join(_gain_lines(scores, list(args.s2b_modes), "scratch")))


def cost_table(args, bulk, target, bulk_s: float) -> None:
    """Parameters, saved size and wall time of each transfer mode and of a from-scratch fit (no validation)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bulk.save(Path(tmp) / "bulk")
        for m in [*MODES, "scratch"]:
            model, sec = _train(m, [target], bulk, args, target="spot", genes=bulk.genes, seed=0, val=None)
            path = Path(tmp) / m
            if m == "lora":
                model.save_adapter(path)
            else:
                model.save(path)
            rows.append((m, _n_params(model, True), _n_params(model, False), _dir_bytes(path), sec, len(model.history)))
        base = _dir_bytes(Path(tmp) / "bulk")
    print(
        f"\n== Cost: one toy target section ({args.n_spots} spots), val=None so every run trains exactly "
        f"{args.max_epochs} epochs; sizes are the folders save_adapter (lora) / save (others) write. The "
        f"bulk source model ({args.n_slides} slides, early stopping) took {bulk_s:.0f} s to train and is "
        f"{base / 1024:.0f} KiB on disk."
    )
    print(
        f"{'method':<10}{'trainable':>12}{'total':>12}{'trainable %':>13}{'saved KiB':>11}{'time (s)':>10}{'s/epoch':>9}"
    )
    for m, n_tr, n_tot, size, sec, ep in rows:
        print(
            f"{m:<10}{n_tr:>12,}{n_tot:>12,}{100 * n_tr / n_tot:>12.1f}%{size / 1024:>11.1f}{sec:>10.1f}{sec / ep:>9.2f}"
        )
    lora_kib = rows[0][3] / 1024
    print(f"  the LoRA adapter needs its base model ({base / 1024:.0f} KiB) to load; adapter alone {lora_kib:.0f} KiB")


# --- real HER2ST ---------------------------------------------------------------------------------
def _lite(sdata):
    """An in-memory copy of a prepared section without its image: spots, cells layer and tables."""
    import spatialdata as sd

    from bitro import _constants as K

    info = dict(sdata.attrs[K.ATTRS_KEY])
    shapes = {k: copy.deepcopy(sdata.shapes[k]) for k in (info[K.ATTR_SPOTS], info[K.ATTR_CELLS_SHAPES])}
    tables = {k: sdata.tables[k].copy() for k in (info[K.ATTR_TABLE], info[K.ATTR_CELLS_TABLE])}
    return sd.SpatialData(shapes=shapes, tables=tables, attrs={K.ATTRS_KEY: info})


def _pseudo_bulk(section):
    """A whole-slide bag: the section's cells layer plus a 1 x genes table of its summed spot counts."""
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    from scipy import sparse
    from spatialdata.models import TableModel

    from bitro import _constants as K

    info = dict(section.attrs[K.ATTRS_KEY])
    table = section.tables[info[K.ATTR_TABLE]]
    counts = np.asarray(table.X.sum(axis=0), dtype=np.float32).reshape(1, -1)
    sid = f"{info[K.ATTR_SAMPLE_ID]}_pb"
    bulk = ad.AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame({K.SAMPLE_ID_KEY: [sid]}, index=[sid]),
        var=pd.DataFrame(index=table.var_names.astype(str)),
    )
    attrs = {k: v for k, v in info.items() if k not in (K.ATTR_SPOTS, K.ATTR_SPOT_ASSIGNMENT)}
    attrs.update({K.ATTR_SAMPLE_ID: sid, K.ATTR_TABLE: K.TABLE_KEY})
    cells_shapes = info[K.ATTR_CELLS_SHAPES]
    cells = section.tables[info[K.ATTR_CELLS_TABLE]].copy()
    # a whole-slide bag: no trace of the spots, so a spot model lays (and assigns) its own pseudo-spots
    assign = info.get(K.ATTR_SPOT_ASSIGNMENT, K.SPOT_ID_KEY)
    cells.obs = cells.obs.drop(columns=[c for c in (assign, K.SPOT_DISTANCE_KEY) if c in cells.obs])
    cells.uns.pop(K.ASSIGN_UNS_KEY, None)
    return sd.SpatialData(
        shapes={cells_shapes: copy.deepcopy(section.shapes[cells_shapes])},
        tables={info[K.ATTR_CELLS_TABLE]: cells, K.TABLE_KEY: TableModel.parse(bulk)},
        attrs={K.ATTRS_KEY: attrs},
    )


def _load_her2st(args):
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from her2st_prepare import SECTIONS, cached_folder, prepare

    folder = cached_folder(args.cache)
    cached = all(
        (folder / f"{s}.zarr" / "zarr.json").exists() or (folder / f"{s}.zarr" / ".zgroup").exists() for s in SECTIONS
    )
    if not cached and not args.data.is_dir():
        print(
            f"\n== Real HER2ST: skipped. No prepared sections in {args.cache} and no raw data in {args.data} "
            "(pass --cache / --data; scripts/her2st_prepare.py makes the cache)."
        )
        return None
    args.cache.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return {s: _lite(prepare(s, args.data, args.cache)) for s in SECTIONS}


def real_her2st(args) -> None:
    t_start = time.perf_counter()
    sections = _load_her2st(args)
    if sections is None:
        return
    names = list(sections)
    pseudo = {s: _pseudo_bulk(sections[s]) for s in names}
    n_spots = {s: sections[s].tables["table"].n_obs for s in names}
    n_cells = {s: sections[s].tables["bitro_cells"].n_obs for s in names}
    print(
        f"\nHER2ST sections (spots / cells): {', '.join(f'{s} {n_spots[s]}/{n_cells[s]}' for s in names)}",
        flush=True,
    )

    rows, bulk_rows = [], []
    for ti, test in enumerate(names):
        others = [s for s in names if s != test]
        scarce = names[ti - 1]
        panel = None
        if args.real_panel == "spots":  # the HVGs of the training sections' spots, as in her2st_cv.py
            from bitro.tl._genes import select_genes

            panel = select_genes([sections[s].tables["table"] for s in others], n_genes=args.real_genes, batch=others)
        for seed in args.real_seeds:
            pb_train = [pseudo[s] for s in others]
            bulk, bulk_s = _train(
                "scratch",
                pb_train,
                None,
                args,
                target="bulk",
                genes=panel,
                seed=seed,
                n_genes=args.real_genes,
                val=None,
            )
            genes = bulk.genes
            runs = {
                f"LoRA bulk->spot ({scarce})": ("lora", [sections[scarce]], bulk),
                f"scratch ({scarce})": ("scratch", [sections[scarce]], None),
                "scratch (3 sections)": ("scratch", [sections[s] for s in others], None),
            }
            models = {}
            for label, (kind, data, source) in runs.items():
                model, sec = _train(kind, data, source, args, target="spot", genes=genes, seed=seed)
                sc = _spot_scores(model, [sections[test]])
                models[label] = model
                rows.append(dict(test=test, seed=seed, method=label.replace(scarce, "1 section"), **sc, s=sec))
                print(
                    f"  [real bulk->spot] test {test}, seed {seed}, {label}: pearson_mean {sc['pearson_mean']:.3f}, "
                    f"{len(model.history)} epochs, {sec:.0f} s",
                    flush=True,
                )
            # spots -> bulk: the 3-section spot model predicts T's pseudo-bulk profile
            spot = models["scratch (3 sections)"]
            lora, _ = _train("lora", pb_train, spot, args, target="bulk", genes=spot.genes, seed=seed, val=None)
            truth = _bulk_truth(pseudo[test], spot.genes)
            mean_profile = np.vstack([_bulk_truth(p, spot.genes) for p in pb_train]).mean(axis=0, keepdims=True)
            profiles = {
                "spot model, LoRA -> 3 pseudo-bulk": _bulk_prediction(lora, pseudo[test]),
                "spot model, no transfer (pseudo-spots)": _bulk_from_spots(spot, pseudo[test]),
                "mean of the 3 training profiles": mean_profile,
            }
            for label, pred in profiles.items():
                bulk_rows.append({"test": test, "seed": seed, "method": label, "r": _across_genes(truth, pred)})
            print(
                f"  [real spot->bulk] test {test}, seed {seed}: "
                + ", ".join(f"{r['method']} r={r['r']:.3f}" for r in bulk_rows[-3:])
                + f" (bulk model {bulk_s:.0f} s)",
                flush=True,
            )

    import pandas as pd

    df = pd.DataFrame(rows)
    panel_text = (
        f"the {args.real_genes} HVGs of the 3 pseudo-bulk samples"
        if args.real_panel == "bulk"
        else f"the {args.real_genes} HVGs of the 3 training sections' spots"
    )
    print(
        f"\n== Real HER2ST, leave-one-section-out over {names} (all patient C: folds are sections, not "
        f"patients). Per fold: bulk model on the other 3 sections' pseudo-bulk samples (3 samples, no validation, "
        f"gene panel of every model of the fold: {panel_text}); '1 section' = the "
        f"section before the test one, cyclically (validation: spatial blocks); '3 sections' = the other three "
        f"(validation: one of them). Per-gene Pearson across the held-out section's spots; seeds {args.real_seeds}; "
        f"max_epochs {args.max_epochs}, patience {args.patience}; {time.perf_counter() - t_start:.0f} s in all."
    )
    for key in ("pearson_mean", "pearson_hvg_mean") if args.real_genes > 50 else ("pearson_mean",):
        table = df.groupby(["test", "method"])[key].mean().unstack()
        print(f"\n{key} per held-out section (mean over seeds):")
        print(table.round(3).to_string())
    lora_col, one = "LoRA bulk->spot (1 section)", "scratch (1 section)"
    by_fold_seed = df.pivot_table(index=["test", "seed"], columns="method", values="pearson_mean")
    d = (by_fold_seed[lora_col] - by_fold_seed[one]).to_numpy()
    print(
        f"\nLoRA - scratch on one section, pearson_mean: {_ms(d)} over {len(d)} fold x seed pairs "
        f"(better in {(d > 0).sum()} of {len(d)}); folds: "
        + ", ".join(
            f"{t} {v:+.3f}" for t, v in (by_fold_seed[lora_col] - by_fold_seed[one]).groupby("test").mean().items()
        )
    )
    b = pd.DataFrame(bulk_rows).pivot_table(index="test", columns="method", values="r")
    print(
        "\nSpots -> bulk (real): Pearson ACROSS GENES of the held-out section's single pseudo-bulk profile "
        "(log1p CP10k, the spot model's genes), mean over seeds. With one test sample per fold and four "
        "samples in all, per-gene Pearson across slides is undefined; this across-genes score mostly "
        "measures how well average gene abundance is known, as the mean-profile baseline shows."
    )
    print(b.round(3).to_string())
    print(
        "  Caveat: 4 sections of one patient; a bulk model trained on 3 samples; treat these numbers as a smoke "
        "test of the transfer path on real tissue, not as evidence for or against transfer in general."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("toy", "real", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (transfer and fit)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes compared, bulk -> spots")
    parser.add_argument("--s2b-modes", nargs="+", choices=MODES, default=["lora"], help="modes compared, spots -> bulk")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of every method (transfer and scratch)")
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16, help="LoRA alpha")
    parser.add_argument("--n-slides", type=int, default=60, help="toy bulk cohort of the bulk source model")
    parser.add_argument("--bulk-epochs", type=int, default=20, help="max_epochs of the toy bulk source model")
    parser.add_argument("--cells-per-slide", type=int, default=500, help="cells per toy bulk slide")
    parser.add_argument("--n-genes-data", type=int, default=60, help="genes of every toy dataset")
    parser.add_argument("--n-genes", type=int, default=40, help="HVGs of the source models")
    parser.add_argument("--n-spots", type=int, default=36, help="spots of each scarce toy target section")
    parser.add_argument("--n-targets", type=int, nargs="+", default=[1, 2], help="numbers of target sections")
    parser.add_argument("--n-test", type=int, default=2, help="held-out toy test sections")
    parser.add_argument("--n-test-spots", type=int, default=64)
    parser.add_argument("--source-spots", type=int, default=64, help="spots of the 3 spot-source sections")
    parser.add_argument(
        "--n-cohort", type=int, default=12, help="training (and test) slides of the spots -> bulk cohort"
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "her2st")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_prepared")
    parser.add_argument("--real-genes", type=int, default=50, help="genes of the real folds' panel")
    parser.add_argument(
        "--real-panel",
        choices=("bulk", "spots"),
        default="bulk",
        help="real panel: HVGs of the 3 pseudo-bulk samples (bulk) or of the 3 training sections' spots (spots)",
    )
    parser.add_argument("--real-seeds", type=int, nargs="+", default=[0], help="training seeds of the real part")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--verbosity", type=int, default=1, help="bt.settings.verbosity (1: bitro's warnings)")
    args = parser.parse_args()

    import torch

    import bitro as bt

    if args.threads:
        torch.set_num_threads(args.threads)
    bt.settings.verbosity = args.verbosity
    t0 = time.perf_counter()
    print(f"settings: {vars(args)}", flush=True)
    if args.part in ("toy", "all"):
        toy = toy_bulk_to_spot(args)
        toy_spot_to_bulk(args)
        cost_table(args, toy["bulk"], toy["targets"][0], toy["bulk_s"])
        print(f"\ntoy part: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.part in ("real", "all"):
        real_her2st(args)
    print(f"\ntotal: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
