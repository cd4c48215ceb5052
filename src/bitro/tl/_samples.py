"""The samples of a training run: as a list, their ids, their patients, and the split into training and validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitro import _constants as K
from bitro import _sdata


def as_list(sdatas) -> list:
    """``sdatas`` as a non-empty list of SpatialData objects (one object is a list of one)."""
    from spatialdata import SpatialData

    if isinstance(sdatas, SpatialData):
        return [sdatas]
    sdatas = list(sdatas)
    if not sdatas or not all(isinstance(s, SpatialData) for s in sdatas):
        raise TypeError("`sdatas` must be a SpatialData or a non-empty list of SpatialData objects.")
    return sdatas


def sample_ids(sdatas: list) -> list[str]:
    """The sample id each reader recorded (unique, else an error)."""
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
