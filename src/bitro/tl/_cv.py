"""Patient-grouped cross-validation of BiTro beside the baselines, on the same folds in the same run."""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from bitro._logging import logger
from bitro._validate import check_names

from ._baselines import aggregate_features, mean_baseline, ridge_baseline
from ._evaluate import N_TOP_HVG
from ._metrics import bulk_metrics, pearson_per_gene, spot_metrics

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro


def cross_validate(
    sdatas: SpatialData | str | os.PathLike | Sequence[SpatialData | str | os.PathLike],
    *,
    target: Literal["spot", "bulk"] = "spot",
    groups: Sequence[str] | None = None,
    n_folds: int | None = None,
    baselines: bool = True,
    seed: int = 0,
    return_models: bool = False,
    **fit_kwargs: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, list[BiTro]]:
    """Grouped cross-validation: each fold's test patients are never seen by training or validation.

    Folds hold out whole groups (patients when known, else samples): leave-one-group-out for spots
    by default, ``n_folds`` group folds otherwise (bulk metrics need several test slides per fold).
    In each fold :func:`bitro.tl.fit` trains on the other groups (its own validation split comes
    from them; genes are selected on them) and the baselines of DESIGN.md §5 are fitted on the same
    training samples: the training mean of each gene, and ridge regression on spot-aggregated cell
    features (mean and std of each feature and the cell count; scaler, PCA, ridge as in
    HEST-Benchmark).

    Parameters
    ----------
    sdatas
        Sections (``target="spot"``) or slides (``target="bulk"``), as for :func:`bitro.tl.fit`:
        SpatialData objects, zarr store paths or a folder of stores (read one at a time: once to
        find ids and patients, then once per fold, where training, the validation score and the
        ridge baseline share the bags cut for training; a test slide's bags are released once its
        scores' inputs, a few numbers per bag, are kept).
    target
        Label kind.
    groups
        Patient of each sample (see :func:`bitro.tl.fit`).
    n_folds
        Number of group folds; default: one per group for spots, ``min(5, n_groups)`` for slides.
    baselines
        Also score the mean and ridge baselines.
    seed
        Seed of fold assignment and of training.
    return_models
        Also return each fold's model (its ``config["training"]`` records the samples it trained and
        validated on, so the split can be checked).
    **fit_kwargs
        Passed to :func:`bitro.tl.fit` (``n_genes``, ``max_epochs``, ``data``, ...).

    Returns
    -------
    One row per fold, test sample (spots; one per fold for slides) and method (``"bitro"``,
    ``"ridge"``, ``"mean"``) with the metrics of :func:`bitro.tl.evaluate`; BiTro's rows (spots) also hold
    ``val_pearson_hvg_mean``, its score on the sections it validated on (with one training patient: on
    the held-out spatial blocks' spots), to choose settings by (never by the test scores). ``df.attrs["per_gene"]``
    holds each method's per-gene Pearson averaged over folds (``{method: {gene: r}}``), ready for
    :func:`bitro.pl.gene_scores`; ``df.attrs["protocol"]`` describes the split. With
    ``return_models=True``: ``(df, models)``, one model per fold.

    Examples
    --------
    >>> import bitro as bt
    >>> sections = [bt.datasets.toy_st(seed=s) for s in range(4)]
    >>> cv = bt.tl.cross_validate(sections, n_genes=20, max_epochs=5)  # doctest: +SKIP
    >>> cv.groupby("method")["pearson_mean"].mean()  # doctest: +SKIP
    """
    from bitro import _sdata
    from bitro.models._config import data_settings
    from bitro.models._data import slide_bags, spot_bags

    from ._fit import fit, fitting
    from ._preprocess import ensure_preprocessed, preprocessing_settings
    from ._samples import as_samples, check_groups, opened, patient

    samples = as_samples(sdatas)
    prep = preprocessing_settings(fit_kwargs.get("preprocessing"))
    given = check_groups(groups, len(samples))
    ids, grp = [], []
    for i, sample in enumerate(samples):  # one sample in memory at a time (stores are read, then released)
        with opened(sample) as sdata:
            ensure_preprocessed(sdata, prep, kind=target)  # test samples too: the settings the fold's model gets
            ids.append(_sdata.sample_id(sdata, f"sample{i}"))
            grp.append(given[i] if given is not None else patient(sdata, ids[-1]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"`sdatas`: sample ids must be unique, got {ids}.")
    unique = sorted(set(grp))
    if len(unique) < 2:
        raise ValueError(f"cross-validation needs at least 2 groups (patients or samples), got {unique}.")
    if n_folds is None:
        n_folds = len(unique) if target == "spot" else min(5, len(unique))
    if not 2 <= n_folds <= len(unique):
        raise ValueError(f"`n_folds` must be between 2 and the number of groups ({len(unique)}), got {n_folds}.")
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {g: i % n_folds for i, g in enumerate(order)}

    signature = inspect.signature(fit)
    rows, per_gene, models = [], {}, []
    for fold in range(n_folds):
        test = [i for i in range(len(ids)) if fold_of[grp[i]] == fold]
        train = [i for i in range(len(ids)) if fold_of[grp[i]] != fold]
        logger.info("fold %d: test %s, training %s", fold, [ids[i] for i in test], [ids[i] for i in train])
        t0 = time.perf_counter()
        arguments = signature.bind(
            [samples[i] for i in train], target=target, groups=[grp[i] for i in train], seed=seed, **fit_kwargs
        )
        arguments.apply_defaults()
        # the training samples' bags serve the validation score and the ridge baseline too: stores are read once
        with fitting(arguments.arguments) as (model, td):
            fit_s = time.perf_counter() - t0
            genes = model.genes
            hvg = np.array([genes.index(g) for g in model.hvg[:N_TOP_HVG]])
            val_score = _validation_score(model, td, hvg) if target == "spot" else np.nan
            if baselines:
                x_tr, y_tr = _aggregate(td.sections)
        models.append(model)
        data = data_settings(target, model.config["data"])
        extract = spot_bags if target == "spot" else slide_bags
        # what scoring needs of each test sample, its bags released after: (id, targets, BiTro, features)
        tests = []
        for i in test:
            with opened(samples[i]) as sdata:
                b = extract(sdata, data, genes=genes)
            tests.append((b.sample_id, b.y, model.predict_bags(b)[0], _aggregate([b])[0] if baselines else None))
            del b
        preds: dict[str, list[np.ndarray]] = {"bitro": [t[2] for t in tests]}
        if baselines:
            ok = np.isfinite(y_tr).all(axis=1)
            x_te = [t[3] for t in tests]
            ridge = ridge_baseline(x_tr[ok], y_tr[ok], np.vstack(x_te), seed=seed)
            bounds = np.cumsum([0] + [len(x) for x in x_te])
            preds["ridge"] = [ridge[bounds[j] : bounds[j + 1]] for j in range(len(tests))]
            preds["mean"] = [mean_baseline(y_tr[ok], len(t[1])) for t in tests]

        for method, pred in preds.items():
            if target == "spot":
                for (sid, y, _, _), p in zip(tests, pred, strict=True):
                    m = spot_metrics(y, p, hvg_index=hvg)
                    val = {"val_pearson_hvg_mean": val_score} if method == "bitro" else {}
                    rows.append(dict(fold=fold, test=sid, method=method, n_train=len(train), fit_s=fit_s, **val, **m))
                    per_gene.setdefault(method, []).append(pd.Series(pearson_per_gene(y, p), index=genes))
            else:
                y = np.vstack([t[1] for t in tests])
                p = np.vstack(pred)
                m = bulk_metrics(y, p)
                rows.append(dict(fold=fold, test=",".join(t[0] for t in tests), method=method, n_train=len(train), **m))
                per_gene.setdefault(method, []).append(pd.Series(pearson_per_gene(y, p), index=genes))

    df = pd.DataFrame(rows)
    # plain dicts, not a DataFrame: pandas compares attrs when concatenating results
    df.attrs["per_gene"] = {m: pd.concat(s, axis=1).mean(axis=1).to_dict() for m, s in per_gene.items()}
    df.attrs["per_gene_rows"] = len(df)  # what per_gene averages: a selection of rows is told apart
    df.attrs["protocol"] = (
        f"{n_folds} folds grouped by {'patient' if len(unique) < len(ids) else 'sample'}; per-gene Pearson "
        f"{'across spots within each test section' if target == 'spot' else 'across test slides'}; "
        f"genes: {_gene_choice(fit_kwargs)}; seed {seed}"
    )
    return (df, models) if return_models else df


def _gene_choice(fit_kwargs: dict) -> str:
    """How the folds' genes were chosen, for the protocol: the ``n_genes`` most variable, or those given."""
    given = fit_kwargs.get("genes")
    if given is None:
        return f"{fit_kwargs.get('n_genes', 50)} most variable of each fold's training data"
    return f"the {len(check_names(given, 'genes'))} given"


def _validation_score(model, td, hvg) -> float:
    """Mean top-HVG Pearson of ``model`` on what it validated on (for choosing settings; never the test).

    The validation sections, or (one training patient) the held-out spatial blocks' spots of each section.
    """
    if td.how == "blocks":
        held: dict[int, list[int]] = {}
        for si, b in td.val_items:
            held.setdefault(si, []).append(b)
        parts = [(td.sections[si], np.asarray(bags)) for si, bags in held.items()]
    else:
        val = model.config["training"].get("validation") or []
        parts = [(td.sections[td.ids.index(v)], None) for v in val if v in td.ids]
    scores = []
    for bags, rows in parts:
        y, pred = bags.y, model.predict_bags(bags)[0]
        if rows is not None:
            y, pred = y[rows], pred[rows]
        scores.append(spot_metrics(y, pred, hvg_index=hvg)["pearson_hvg_mean"])
    return float(np.mean(scores)) if scores else float("nan")


def _aggregate(bags_list) -> tuple[np.ndarray, np.ndarray]:
    """Spot- (or slide-) aggregated cell features and targets of :class:`Bags` (any iterable: one at a time)."""
    xs, ys = [], []
    for bags in bags_list:
        bag_of_cell = np.full(len(bags.x), -1, np.int64)
        for s, cells in enumerate(bags.seq_cells):
            bag_of_cell[cells] = bags.seq_bag[s]
        x = bags.x
        if np.isnan(x).any():  # missing -> the section's feature mean, as the network does
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing feature stays NaN
                x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
        xs.append(aggregate_features(x, bag_of_cell, bags.n_bags))
        ys.append(bags.y)
    return np.vstack(xs), np.vstack(ys)
