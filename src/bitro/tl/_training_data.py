"""The data of a training run: preprocessed samples, split by patient, genes chosen on training samples, bags."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from bitro import _sdata
from bitro._logging import logger
from bitro.models._config import feature_config, median_mpp, spot_geometry
from bitro.models._training import TrainingData, TrainingOptions

from ._genes import check_genes, select_genes, shared_genes
from ._preprocess import common_preprocessing, ensure_preprocessed, existing_features, features_step, preprocessed_with
from ._samples import check_groups, opened, patient, spatial_blocks, split


@contextlib.contextmanager
def spill_folder(samples: list) -> Iterator[Path | None]:
    """A temporary folder for the bags of ``samples`` when any is a store (removed after), else None."""
    if not any(isinstance(s, Path) for s in samples):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bitro-bags-") as folder:
        yield Path(folder)


def training_data(
    samples: list,
    target: str,
    prep: dict,
    data_settings: dict,
    options: TrainingOptions,
    *,
    genes: Sequence[str] | None,
    n_genes: int | None = None,
    source_genes: Sequence[str] | None = None,
    val=None,
    groups: Sequence[str] | None = None,
    features: dict | None = None,
    spill_to: Path | None = None,
) -> TrainingData:
    """Preprocess, split by group, choose genes (on training samples only) and extract the bags.

    ``samples`` are SpatialData objects or zarr store paths; a store is read, preprocessed (missing
    steps are written into it), cut into bags and released before the next is read, so only one
    sample is in memory at a time; with ``spill_to`` (a folder) the bags' per-cell arrays go to one
    memory-mapped file there (:class:`~bitro.models._spill.BagSpill`). ``prep`` are the
    preprocessing settings, ``data_settings`` the bag settings; ``options`` gives the seed of the
    split. ``genes`` (checked), else the ``source_genes`` every sample has (a transfer's default),
    else the ``n_genes`` most variable training genes. ``features`` (a model's) makes samples with
    other cell features an error.
    """
    seed, max_epochs = options.seed, options.max_epochs
    from bitro.models._config import sample_mpp, spot_scale
    from bitro.models._data import bag_targets, expression_table, slide_bags, spot_bags
    from bitro.models._spill import BagSpill

    extract = spot_bags if target == "spot" else slide_bags
    spill = BagSpill(spill_to / "bags.bin") if spill_to is not None else None
    given_groups = check_groups(groups, len(samples))
    if features is None:  # samples that already have features set them for the others (whatever the defaults)
        features = existing_features(samples)
        if features is not None:
            prep = {**prep, "features": features_step(features, prep["features"])}
    ids, grp, tables, sections, mpps, scales, done = [], [], [], [], [], [], []
    # a failure half-way closes the spill file (its folder is the caller's to remove)
    with contextlib.closing(spill) if spill is not None else contextlib.nullcontext():
        for i, sample in enumerate(samples):
            with opened(sample) as sdata:
                sid = _sdata.sample_id(sdata, f"sample{i}")
                if sid in ids:
                    raise ValueError(
                        f"`sdatas`: sample ids must be unique, got {sid!r} twice (samples {ids.index(sid)} and {i})."
                    )
                ensure_preprocessed(sdata, prep, kind=target, features=features)
                features = features or feature_config(sdata)  # every later sample must have the same features
                done.append(preprocessed_with(sdata, kind=target))
                _, key, table = expression_table(sdata, target)
                ids.append(sid)
                grp.append(given_groups[i] if given_groups is not None else patient(sdata, sid))
                tables.append(table)
                bags = extract(sdata, data_settings, group=grp[-1])
                # targets wait for the genes, chosen once every table is here (spots x genes at most: kept)
                targets = partial(bag_targets, table, kind=target, sample=sid, table_key=key, n_bags=bags.n_bags)
                sections.append((spill.add(bags) if spill is not None else bags, targets))
                mpps.append(sample_mpp(sdata))
                if target == "spot":
                    scales.append(spot_scale(sdata))
                del bags
        if spill is not None:  # every sample written: map the file once
            sections = list(zip(spill.open(), [targets for _, targets in sections], strict=True))

    tr, va, how = split(grp, val, ids, seed)
    if how == "blocks" and target == "bulk":
        logger.warning(
            "bulk: a single patient gives no validation split; training %d epochs without early stopping", max_epochs
        )
        how = "none"
    if genes is None and source_genes is not None:
        genes = shared_genes(tables, list(source_genes))
    if genes is None:
        chosen = hvg = select_genes([tables[i] for i in tr], n_genes=n_genes, batch=[ids[i] for i in tr])
    else:
        chosen = check_genes(genes, [tables[i] for i in tr], [ids[i] for i in tr])
        hvg = chosen
    for i in range(len(tables)):
        check_genes(chosen, [tables[i]], [ids[i]])
    for sec, targets in sections:
        sec.y = targets(list(chosen))
    sections = [sec for sec, _ in sections]

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
        ids, grp, tr, va, how, list(chosen), list(hvg), sections, train_items, val_items, dict(data_settings), features,
        mpp=median_mpp(mpps), spots=spot_geometry(scales) if target == "spot" else None,
        preprocessed=common_preprocessing(done, ids),
    )  # fmt: skip


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
