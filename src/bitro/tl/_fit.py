"""Train a BiTro model on spots or bulk slides: data, gene selection, grouped validation, Lightning."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._settings import settings as _settings
from bitro._validate import check_choice, check_int

from ._preprocess import ensure_preprocessed, preprocessing_settings

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro

DEFAULT_DATA = {
    "spot": {"context_um": 200.0, "max_context": 32, "max_cells": 192, "max_tiles": 1, "batch_size": 16},
    "bulk": {"tile_um": 256.0, "max_cells": 256, "max_tiles": 16, "batch_size": 2},
}
"""Bag settings per label kind. Spots see the 32 nearest cells within 200 µm of their centre that are
not their own as context tokens: on HER2ST (``benchmarks/her2st_cv.py``) this raised the mean per-gene
Pearson from 0.361 to 0.376; ``context_um=0`` turns it off."""
DEFAULT_ARCHITECTURE = {"hidden": 64, "n_heads": 4, "n_gat": 2, "n_layers": 2, "dropout": 0.1}
MIN_DETECTION = 0.1
"""Genes detected in fewer than this fraction of training bags are never selected."""


def _as_list(sdatas) -> list:
    from spatialdata import SpatialData

    if isinstance(sdatas, SpatialData):
        return [sdatas]
    sdatas = list(sdatas)
    if not sdatas or not all(isinstance(s, SpatialData) for s in sdatas):
        raise TypeError("`sdatas` must be a SpatialData or a non-empty list of SpatialData objects.")
    return sdatas


def sample_ids(sdatas: list) -> list[str]:
    ids = [_sdata.sample_id(s, f"sample{i}") for i, s in enumerate(sdatas)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"`sdatas`: sample ids must be unique, got {ids}.")
    return ids


def sample_groups(sdatas: list, groups: Sequence[str] | None) -> list[str]:
    """Patient of each sample (``groups=``, else ``attrs["bitro"]["patient_id"]`` or the table's ``patient_id``), else its own id."""
    ids = sample_ids(sdatas)
    if groups is not None:
        groups = [str(g) for g in groups]
        if len(groups) != len(sdatas):
            raise ValueError(f"`groups` has {len(groups)} entries for {len(sdatas)} samples.")
        return groups
    out = []
    for sid, sdata in zip(ids, sdatas, strict=True):
        patient = _sdata.info(sdata).get(K.PATIENT_ID_KEY)
        table = sdata.tables.get(_sdata.recorded(sdata, K.ATTR_TABLE))
        if patient is None and table is not None and K.PATIENT_ID_KEY in table.obs:
            values = table.obs[K.PATIENT_ID_KEY].astype(str).unique()
            patient = values[0] if len(values) == 1 else None
        out.append(str(patient) if patient is not None else sid)
    return out


def select_genes(tables: list, *, n_genes: int, batch: list[str] | None = None) -> list[str]:
    """The ``n_genes`` most variable genes of the training tables, most variable first.

    Ranked by the variance of analytic Pearson residuals of the raw counts (Lause et al. 2021,
    scanpy's ``flavor="pearson_residuals"``, per sample then combined): unlike dispersion on
    log-normalised data, it does not favour sparse, noisy genes, which dominate low-count ST
    spots. Only genes present in every table and detected in at least ``MIN_DETECTION`` of the
    training bags compete.
    """
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    from bitro.models._data import log_cp10k, table_genes

    common = table_genes(tables[0])
    for table in tables[1:]:
        common = common.intersection(table_genes(table), sort=False)
    if not len(common):
        raise ValueError("the training samples share no gene.")
    counts, labels = [], []
    for i, table in enumerate(tables):
        x = table.X[:, table_genes(table).get_indexer(common)]
        x = sparse.csr_matrix(x, dtype=np.float32)
        lib = np.asarray(x.sum(axis=1)).ravel()
        log_cp10k(x, where="training table")  # refuses NaN / negative counts
        counts.append(x[lib > 0])
        labels += [str(batch[i] if batch else i)] * int((lib > 0).sum())
    adata = ad.AnnData(sparse.vstack(counts).tocsr(), var=pd.DataFrame(index=common.astype(str)))
    adata.obs["batch"] = pd.Categorical(labels)
    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    adata = adata[:, detected >= MIN_DETECTION].copy()
    if adata.n_vars < n_genes:
        logger.warning(
            "only %d genes are detected in >= %.0f%% of training bags; using them all (n_genes=%d asked)",
            adata.n_vars,
            100 * MIN_DETECTION,
            n_genes,
        )
    n_top = min(n_genes, adata.n_vars)
    if adata.n_obs < 3:  # too few bags for residual variances: most expressed instead
        mean = np.asarray(adata.X.mean(axis=0)).ravel()
        return list(adata.var_names[np.argsort(-mean, kind="stable")[:n_top]])
    one_batch = adata.obs["batch"].nunique() == 1 or adata.obs["batch"].value_counts().min() < 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy notes on non-integer or experimental use
        sc.experimental.pp.highly_variable_genes(
            adata, flavor="pearson_residuals", n_top_genes=n_top, batch_key=None if one_batch else "batch"
        )
    var = adata.var
    rank = var["highly_variable_rank"].to_numpy(dtype=float)
    order = np.lexsort((-var["residual_variances"].to_numpy(dtype=float), np.nan_to_num(rank, nan=np.inf)))
    return list(adata.var_names[order[:n_top]])


def check_genes(genes: Sequence[str], tables: list, ids: list[str]) -> list[str]:
    """An explicit gene list, checked against every training table (clear error listing missing genes)."""
    from bitro.models._data import gene_columns

    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("`genes` is empty.")
    if len(set(genes)) != len(genes):
        raise ValueError("`genes` contains duplicates.")
    for sid, table in zip(ids, tables, strict=True):
        gene_columns(table, genes, where=f"`genes` for sample {sid!r}")
    return genes


def spatial_blocks(xy: np.ndarray, fraction: float, seed: int, n_side: int = 4) -> np.ndarray:
    """Boolean mask of bags in held-out spatial blocks (a ``n_side`` x ``n_side`` grid over the section)."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    cell = (hi - lo) / n_side + 1e-9
    block = np.floor((xy - lo) / cell).astype(int).clip(0, n_side - 1)
    code = block[:, 0] * n_side + block[:, 1]
    present = np.unique(code)
    n_val = max(1, round(fraction * len(present)))
    chosen = np.random.default_rng(seed).choice(present, n_val, replace=False)
    return np.isin(code, chosen)


def split(
    groups: list[str], val: float | Sequence[str] | None, ids: list[str], seed: int
) -> tuple[list[int], list[int], str]:
    """Training and validation sample indices, split by group; ``"blocks"`` when one group must be split in space."""
    n = len(ids)
    if val is None or (isinstance(val, float | int) and not isinstance(val, bool) and val == 0):
        return list(range(n)), [], "none"
    if isinstance(val, str) or isinstance(val, Sequence):
        val_ids = [val] if isinstance(val, str) else [str(v) for v in val]
        unknown = sorted(set(val_ids) - set(ids))
        if unknown:
            raise ValueError(f"`val`: samples {unknown} are not among the training samples {ids}.")
        val_groups = {groups[ids.index(v)] for v in val_ids}
        leak = [ids[i] for i in range(n) if groups[i] in val_groups and ids[i] not in val_ids]
        if leak:
            raise ValueError(
                f"`val`: samples {leak} share a patient with the validation samples; add them or pick others."
            )
        va = [ids.index(v) for v in val_ids]
        tr = [i for i in range(n) if i not in va]
        if not tr:
            raise ValueError("`val` takes every sample; leave some for training.")
        return tr, va, "samples"
    if not 0 < float(val) < 1:
        raise ValueError(f"`val` must be a fraction in (0, 1), a list of sample ids, or None; got {val!r}.")
    unique = sorted(set(groups))
    if len(unique) < 2:
        return list(range(n)), [], "blocks"
    n_val = min(len(unique) - 1, max(1, round(float(val) * len(unique))))
    val_groups = set(np.random.default_rng(seed).choice(unique, n_val, replace=False))
    tr = [i for i in range(n) if groups[i] not in val_groups]
    va = [i for i in range(n) if groups[i] in val_groups]
    return tr, va, "groups"


def fit(
    sdatas: SpatialData | Sequence[SpatialData],
    *,
    target: Literal["spot", "bulk"] = "spot",
    genes: Sequence[str] | None = None,
    n_genes: int = 50,
    val: float | Sequence[str] | None = 0.25,
    groups: Sequence[str] | None = None,
    max_epochs: int = 60,
    patience: int = 10,
    lr: float = 5e-4,
    weight_decay: float = 1e-2,
    batch_size: int | None = None,
    architecture: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    preprocessing: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress: bool | None = None,
) -> BiTro:
    """Train a BiTro model on the spots of ST sections or on bulk RNA-seq of whole slides.

    Each sample is first preprocessed with whatever it lacks (segmentation, cell features,
    cell-to-spot assignment, cell graph; ``preprocessing=`` sets the options). Targets are
    log1p(CP10k) of the selected genes, standardised per gene with statistics of the training
    samples only; cell features are standardised the same way. Early stopping and the choice of
    weights use a validation split grouped by patient (else by sample) and never the test data,
    which ``fit`` does not see. With a single patient, validation holds out spatial blocks of spots
    (a 4 x 4 grid; spot targets only) and the log says so; genes are then ranked on the whole
    section, validation blocks included (they only steer early stopping).

    Parameters
    ----------
    sdatas
        One SpatialData per section (``target="spot"``: spots table and spot circles, as
        :mod:`bitro.io` reads them) or per slide (``target="bulk"``: a 1 x genes table, as
        :func:`bitro.io.cohort` or :func:`bitro.datasets.toy_bulk_cohort` give).
    target
        Label kind: ``"spot"`` (a bag is the cells of a spot) or ``"bulk"`` (all cells of a slide).
    genes
        Genes to predict; default: the ``n_genes`` most variable genes of the training samples.
    n_genes
        Number of highly variable genes when ``genes`` is not given.
    val
        Validation: a fraction of the patients (groups), a list of sample ids, or ``None`` (no
        validation: train ``max_epochs`` and keep the last weights).
    groups
        Patient of each sample, for grouped splits (default: ``attrs["bitro"]["patient_id"]`` or
        the table's ``patient_id`` column, else each sample is its own group).
    max_epochs, patience
        Epoch limit and early-stopping patience (epochs without a better validation loss).
    lr, weight_decay
        AdamW settings.
    batch_size
        Bags per step (default 16 spots or 2 slides).
    architecture
        Network size: ``hidden``, ``n_heads``, ``n_gat``, ``n_layers``, ``dropout``.
    data
        Bag settings: ``context_um`` / ``max_context`` (ring of context cells around each spot;
        0 turns it off), ``max_cells`` per sequence, ``tile_um`` and ``max_tiles`` for slides.
    preprocessing
        Options of the preprocessing steps (``{"segmentation": {...}, "features": {...},
        "assign": {...}, "graph": {...}}``), recorded in the model and reused by
        :func:`bitro.tl.predict`.
    seed
        Seed of splits, sub-sampling and initialisation.
    accelerator, devices
        Passed to :class:`lightning.pytorch.Trainer` (CPU, GPU, several devices).
    progress
        Show Lightning's progress bar (default: when ``bt.settings.verbosity`` >= 1).

    Returns
    -------
    The trained :class:`bitro.models.BiTro`, with ``model.genes`` and ``model.history``.

    Examples
    --------
    >>> import bitro as bt
    >>> sections = [bt.datasets.toy_st(seed=s) for s in range(3)]
    >>> model = bt.tl.fit(sections, n_genes=20, max_epochs=5)  # doctest: +SKIP
    >>> model.genes[:3]  # doctest: +SKIP
    """
    import lightning as L
    import torch

    from bitro.models import BiTro
    from bitro.models._module import BiTroModule

    target = check_choice(target, "target", ("spot", "bulk"))
    n_genes = check_int(n_genes, "n_genes", min_value=1)
    max_epochs = check_int(max_epochs, "max_epochs", min_value=1)
    sdatas = _as_list(sdatas)
    prep = preprocessing_settings(preprocessing)
    data_settings = dict(DEFAULT_DATA[target], **(data or {}))
    arch = dict(DEFAULT_ARCHITECTURE, **(architecture or {}))
    L.seed_everything(seed, verbose=False)

    td = training_data(
        sdatas,
        target=target,
        genes=genes,
        n_genes=n_genes,
        val=val,
        groups=groups,
        prep=prep,
        data_settings=data_settings,
        seed=seed,
        max_epochs=max_epochs,
    )
    chosen, sections, train_items = td.genes, td.sections, td.train_items

    # standardisation from training data only
    x_train = np.concatenate([sections[si].x for si in sorted({si for si, _ in train_items})])
    f_mean = np.nanmean(x_train, axis=0)
    f_std = np.nanstd(x_train, axis=0)
    f_std = np.where(f_std > 1e-8, f_std, 1.0)
    y_mean, y_std = td.target_stats()
    module = BiTroModule(sections[0].x.shape[1], len(chosen), heads=(target,), **arch)
    module.feature_mean.copy_(torch.as_tensor(f_mean))
    module.feature_std.copy_(torch.as_tensor(f_std))
    module.heads[target].target_mean.copy_(torch.as_tensor(y_mean))
    module.heads[target].target_std.copy_(torch.as_tensor(y_std))
    cfg_data = {k: v for k, v in data_settings.items() if k != "batch_size"}
    hist, history = run_training(
        module,
        target,
        td,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=int(batch_size or data_settings["batch_size"]),
        max_epochs=max_epochs,
        patience=patience,
        accelerator=accelerator,
        devices=devices,
        progress=progress,
        seed=seed,
    )

    mpps = [float(_sdata.info(s).get(K.ATTR_MPP, math.nan)) for s in sdatas]
    config = {
        "architecture": dict(arch, n_features=int(sections[0].x.shape[1])),
        "genes": {target: list(chosen)},
        "hvg": {target: list(td.hvg)},
        "features": _feature_config(sdatas[0]),
        "preprocessing": prep,
        "data": cfg_data,
        "mpp": float(np.nanmedian(mpps)) if np.isfinite(mpps).any() else None,
        "spots": _spot_geometry(sdatas) if target == "spot" else None,
        "training": {
            "target": target,
            **td.split_record(),
            "groups": dict(zip(td.ids, td.groups, strict=True)),
            "n_train_bags": len(train_items),
            "n_val_bags": len(td.val_items),
            "epochs": int(len(hist)),
            "best_epoch": history.best_epoch,
            "best_val_loss": None if history.best_epoch is None else float(history.best_loss),
            "seed": int(seed),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
        },
    }
    model = BiTro(module, config, hist)
    logger.info(
        "trained %s: %d epochs, best epoch %s (validation loss %s)",
        target,
        len(hist),
        history.best_epoch,
        None if history.best_epoch is None else f"{history.best_loss:.4f}",
    )
    return model


@dataclass
class TrainingData:
    """Samples, their bags, genes and the training / validation items of a training run."""

    ids: list[str]
    groups: list[str]
    train: list[int]
    val: list[int]
    how: str
    genes: list[str]
    hvg: list[str]
    sections: list
    train_items: list[tuple[int, int]]
    val_items: list[tuple[int, int]]
    settings: dict
    """Bag settings (``DEFAULT_DATA`` of the label kind, updated by the caller's ``data=``)."""

    def target_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and std of the training bags' targets (std 1 for constant genes)."""
        y = np.stack([self.sections[si].y[b] for si, b in self.train_items])
        std = y.std(axis=0)
        return y.mean(axis=0), np.where(std > 1e-6, std, 1.0)

    def split_record(self) -> dict:
        if self.how == "blocks":
            return {"samples": list(self.ids), "validation": "spatial blocks"}
        return {"samples": [self.ids[i] for i in self.train], "validation": [self.ids[i] for i in self.val]}


def training_data(
    sdatas: list,
    *,
    target: str,
    genes: Sequence[str] | None,
    n_genes: int,
    val,
    groups: Sequence[str] | None,
    prep: dict,
    data_settings: dict,
    seed: int,
    max_epochs: int,
    features: dict | None = None,
) -> TrainingData:
    """Preprocess, split by group, choose genes (on training samples only) and extract the bags."""
    from bitro.models._data import slide_bags, spot_bags

    ids = sample_ids(sdatas)
    grp = sample_groups(sdatas, groups)
    tables = []
    for sid, sdata in zip(ids, sdatas, strict=True):
        ensure_preprocessed(sdata, prep, kind=target, features=features)
        features = features or _feature_config(sdata)  # every later sample must have the same features
        key = _sdata.recorded(sdata, K.ATTR_TABLE)
        if key not in sdata.tables:
            raise KeyError(f"sample {sid!r} has no expression table {key!r} to train on.")
        tables.append(sdata.tables[key])

    tr, va, how = split(grp, val, ids, seed)
    if how == "blocks" and target == "bulk":
        logger.warning(
            "bulk: a single patient gives no validation split; training %d epochs without early stopping", max_epochs
        )
        how = "none"
    if genes is None:
        chosen = hvg = select_genes([tables[i] for i in tr], n_genes=n_genes, batch=[ids[i] for i in tr])
    else:
        chosen = check_genes(genes, [tables[i] for i in tr], [ids[i] for i in tr])
        hvg = chosen
    for i in range(len(tables)):
        check_genes(chosen, [tables[i]], [ids[i]])
    extract = spot_bags if target == "spot" else slide_bags
    sections = [extract(s, data_settings, genes=chosen, group=g) for s, g in zip(sdatas, grp, strict=True)]

    train_items, val_items = [], []
    for si, sec in enumerate(sections):
        ok = _usable(sec)
        if how == "blocks":
            held = spatial_blocks(sec.bag_xy, 0.25, seed)
            train_items += [(si, b) for b in np.flatnonzero(ok & ~held)]
            val_items += [(si, b) for b in np.flatnonzero(ok & held)]
        elif si in tr:
            train_items += [(si, b) for b in np.flatnonzero(ok)]
        elif si in va:
            val_items += [(si, b) for b in np.flatnonzero(ok)]
    if how == "blocks":
        logger.info(
            "one patient: validation uses spatially blocked spots (%d train / %d validation spots in 4x4 blocks)",
            len(train_items),
            len(val_items),
        )
    elif how in ("groups", "samples"):
        logger.info(
            "validation samples %s (grouped by patient), training samples %s",
            [ids[i] for i in va],
            [ids[i] for i in tr],
        )
    else:
        logger.info("no validation split: training %d epochs, keeping the last weights", max_epochs)
    if not train_items:
        raise ValueError("no training bag has both cells and counts.")
    return TrainingData(
        ids, grp, tr, va, how, list(chosen), list(hvg), sections, train_items, val_items, dict(data_settings)
    )


def _usable(sec) -> np.ndarray:
    """Bags with cells and counts; the others are reported and left out of training."""
    has_cells = np.zeros(sec.n_bags, bool)
    for s, cells in enumerate(sec.seq_cells):
        if len(cells):
            has_cells[sec.seq_bag[s]] = True
    ok = has_cells & np.isfinite(sec.y).all(axis=1)
    if (~ok).any():
        logger.info(
            "%s: %d of %d bags left out of training (%d without cells, %d without counts)",
            sec.sample_id,
            int((~ok).sum()),
            sec.n_bags,
            int((~has_cells).sum()),
            int((~np.isfinite(sec.y).all(axis=1)).sum()),
        )
    return ok


def run_training(
    module,
    head: str,
    td: TrainingData,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    accelerator: str,
    devices,
    progress: bool | None,
    seed: int,
):
    """Lightning training of ``module``'s ``head`` on ``td``; keeps the best validation weights.

    Returns the loss history (DataFrame) and the :class:`~bitro.models._plan.History` callback.
    """
    import lightning as L

    from bitro.models._data import BagDataset
    from bitro.models._plan import History, Resample, TrainingPlan

    mod_head = module.heads[head]
    y_mean = mod_head.target_mean.detach().cpu().numpy()
    y_std = mod_head.target_std.detach().cpu().numpy()
    sections = td.sections

    def z(items):
        return [((sections[si].y[b] - y_mean) / y_std).astype(np.float32) for si, b in items]

    def dataset(items, train):
        return BagDataset(
            sections,
            items,
            z(items),
            max_cells=int(td.settings["max_cells"]),
            max_tiles=int(td.settings["max_tiles"]),
            train=train,
            seed=seed,
        )

    train_ds = dataset(td.train_items, True)
    loaders = {"train_dataloaders": _loader(train_ds, batch_size, shuffle=True, seed=seed)}
    if td.val_items:
        loaders["val_dataloaders"] = _loader(dataset(td.val_items, False), batch_size, shuffle=False, seed=seed)
    history = History()
    callbacks = [history, Resample(train_ds)]
    if td.val_items:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=patience, mode="min"))
    show = progress if progress is not None else _settings.verbosity >= 1
    plan = TrainingPlan(module, head, lr=lr, weight_decay=weight_decay)
    module.train()  # a loaded or copied model is in eval mode; dropout (and LoRA dropout) must be on
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(), _quiet_lightning():
        # Lightning's advice on DataLoader workers and on unused accelerators is not actionable here
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*validation_step` but have no `val_dataloader.*")  # val=None
        warnings.filterwarnings("ignore", ".*number of training batches.*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")  # Lightning 2.6 vs torch 2.13
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=bool(show),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            default_root_dir=root,
        )
        trainer.fit(plan, **loaders)
    if history.best_state is not None:
        module.load_state_dict(history.best_state)
    module.cpu().eval()
    hist = pd.DataFrame(sorted(history.rows.values(), key=lambda r: r["epoch"]))
    for col in ("epoch", "train_loss", "val_loss"):
        if col not in hist:
            hist[col] = np.nan
    return hist[["epoch", "train_loss", "val_loss"]], history


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up banners (GPU/TPU availability, tips) at INFO go away; its warnings stay."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _loader(dataset, batch_size: int, *, shuffle: bool, seed: int):
    import torch
    from torch.utils.data import DataLoader

    from bitro.models._data import collate_bags

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=generator)


def _feature_config(sdata) -> dict:
    cells = sdata.tables[_sdata.cells_table_key(sdata)]
    meta = cells.uns.get(_sdata.recorded(sdata, K.ATTR_FEATURES), {})
    names = meta.get("names", {})
    params = meta.get("params", {})
    return {
        "method": meta.get("method"),
        "names": sorted(names, key=names.get),
        "params": jsonable(dict(params)),
    }


def jsonable(value):
    """``value`` with numpy scalars / arrays and mappings turned into plain JSON types."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0):
        return [jsonable(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if hasattr(value, "item"):
        return value.item()
    return value


def _spot_geometry(sdatas) -> dict:
    """Median spot radius and centre-to-centre pitch (µm) of the training sections, for pseudo-spots."""
    from scipy.spatial import cKDTree

    radii, pitches = [], []
    for sdata in sdatas:
        centres, radius = _sdata.spots_um(sdata, _sdata.info(sdata)[K.ATTR_SPOTS])
        if radius is not None:
            radii.append(np.median(radius))
        if len(centres) > 1:
            d, _ = cKDTree(centres).query(centres, k=2)
            pitches.append(np.median(d[:, 1]))
    return {"radius_um": float(np.median(radii)), "pitch_um": float(np.median(pitches))}
