"""The data of a training run: preprocessed samples, split by patient, genes chosen on training samples, bags."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro.models._config import feature_config
from bitro.models._training import TrainingData, TrainingOptions

from ._genes import check_genes, select_genes
from ._preprocess import ensure_preprocessed
from ._samples import sample_groups, sample_ids, spatial_blocks, split


def training_data(
    sdatas: list,
    target: str,
    prep: dict,
    data_settings: dict,
    options: TrainingOptions,
    *,
    genes: Sequence[str] | None,
    n_genes: int | None = None,
    val=None,
    groups: Sequence[str] | None = None,
    features: dict | None = None,
) -> TrainingData:
    """Preprocess, split by group, choose genes (on training samples only) and extract the bags.

    ``prep`` are the preprocessing settings, ``data_settings`` the bag settings; ``options`` gives
    the seed of the split. ``genes`` (checked) or the ``n_genes`` most variable training genes.
    ``features`` (a model's) makes samples with other cell features an error.
    """
    seed, max_epochs = options.seed, options.max_epochs
    from bitro.models._data import slide_bags, spot_bags

    ids = sample_ids(sdatas)
    grp = sample_groups(sdatas, groups)
    tables = []
    for sid, sdata in zip(ids, sdatas, strict=True):
        ensure_preprocessed(sdata, prep, kind=target, features=features)
        features = features or feature_config(sdata)  # every later sample must have the same features
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
        ok = usable(sec)
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
        ids, grp, tr, va, how, list(chosen), list(hvg), sections, train_items, val_items, dict(data_settings), features
    )


def usable(sec) -> np.ndarray:
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
