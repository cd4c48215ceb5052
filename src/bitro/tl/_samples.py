"""The samples of a training run: as a list, their ids, their patients, and the split into training and validation."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bitro import _constants as K
from bitro import _sdata


def as_samples(sdatas) -> list:
    """``sdatas`` as a non-empty list of SpatialData objects and zarr store paths (checked to exist)."""
    from spatialdata import SpatialData

    from bitro._store import is_store

    if isinstance(sdatas, SpatialData | str | os.PathLike):
        sdatas = [sdatas]
    out = []
    for i, item in enumerate(sdatas):
        if isinstance(item, str | os.PathLike):
            path = Path(item).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"`sdatas[{i}]`: {path} does not exist.")
            inside = sorted(p for p in path.iterdir() if is_store(p)) if path.is_dir() and not is_store(path) else []
            if not (is_store(path) or inside):
                raise ValueError(
                    f"`sdatas[{i}]`: {path} is not a zarr store (no zarr.json) nor a folder of them; "
                    "give a SpatialData, a store or a folder of stores."
                )
            out.extend(inside or [path])  # a folder: the stores in it (e.g. the ones `bitro read cohort` wrote)
            continue
        if not isinstance(item, SpatialData):
            raise TypeError(
                f"`sdatas[{i}]` is a {type(item).__name__}: give SpatialData objects or paths of zarr stores."
            )
        out.append(item)
    if not out:
        raise TypeError("`sdatas` must be a SpatialData, a zarr store path, or a non-empty list of them.")
    return out


@contextlib.contextmanager
def opened(sample) -> Iterator:
    """The sample's SpatialData: itself, or its store read (backed: steps that run write into it) and released after."""
    if not isinstance(sample, Path):
        yield sample
        return
    from bitro.io import read_zarr

    sdata = read_zarr(sample)
    try:
        yield sdata
    finally:
        del sdata
        gc.collect()  # a slide's shapes and tables are large: let them go before the next one is read


def patient(sdata, sample_id: str) -> str:
    """Patient of a sample: ``attrs["bitro"]["patient_id"]`` or its table's single ``patient_id``, else its id."""
    value = _sdata.info(sdata).get(K.PATIENT_ID_KEY)
    table = sdata.tables.get(_sdata.recorded(sdata, K.ATTR_TABLE))
    if value is None and table is not None and K.PATIENT_ID_KEY in table.obs:
        values = table.obs[K.PATIENT_ID_KEY].astype(str).unique()
        value = values[0] if len(values) == 1 else None
    return str(value) if value is not None else sample_id


def check_groups(groups: Sequence[str] | None, n: int) -> list[str] | None:
    """``groups=`` as strings, one per sample."""
    if groups is None:
        return None
    if isinstance(groups, str | bytes):  # list("P1P2") would be four patients 'P', '1', 'P', '2'
        raise TypeError(f"`groups` must be one patient per sample (a list), got the string {groups!r}.")
    groups = list(groups.tolist() if hasattr(groups, "tolist") else groups)
    if len(groups) != n:
        raise ValueError(f"`groups` has {len(groups)} entries for {n} samples.")
    missing = [i for i, g in enumerate(groups) if g is None or (isinstance(g, float) and np.isnan(g))]
    if missing:  # str(None) would make one patient "None" of every sample without a group
        raise ValueError(f"`groups` has no patient for samples {missing[:5]} (None / NaN); give every sample one.")
    return [str(g) for g in groups]


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
    if isinstance(val, str) or isinstance(val, Sequence) or hasattr(val, "tolist") and np.ndim(val) > 0:
        from bitro._validate import check_names

        val_ids = check_names(val, "val")
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
