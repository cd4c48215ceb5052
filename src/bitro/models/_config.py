"""Settings of a BiTro model: validated network size and bag settings, and the one config builder.

``BiTro.config`` is the JSON document saved next to the weights. :func:`model_config` builds it for
:func:`bitro.tl.fit` and :func:`bitro.tl.transfer` alike; :class:`Architecture` and
:func:`data_settings` validate what the network and the bags read from it, so a bad value fails
with a message naming the setting instead of deep inside torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._validate import check_float, check_int

DEFAULT_DATA = {
    "spot": {"context_um": 200.0, "max_context": 32, "max_cells": 192, "max_tiles": 1, "batch_size": 16},
    "bulk": {"tile_um": 256.0, "max_cells": 256, "max_tiles": 16, "batch_size": 2},
}
"""Bag settings per label kind. Spots see the 32 nearest cells within 200 µm of their centre that are
not their own as context tokens (``context_um=0`` turns it off); slides are cut into 256 µm tiles,
at most 16 of at most 256 cells each drawn per training step."""

DATA_LIMITS = {
    "context_um": (0.0, 5000.0),
    "max_context": (0, 4096),
    "max_cells": (1, 65536),
    "max_tiles": (1, 4096),
    "tile_um": (8.0, 100000.0),
    "batch_size": (1, 65536),
}
"""Accepted range of each bag setting (a value outside is refused with its name)."""


@dataclass(frozen=True)
class Architecture:
    """Size of the BiTro network; every field is checked on construction.

    Attributes
    ----------
    n_features
        Cell features per cell (>= 1).
    hidden
        Width of every layer, a multiple of ``n_heads`` (8 to 4096).
    n_heads
        Attention heads of the GAT and transformer layers (1 to 64).
    n_gat
        Graph-attention layers (0 to 16).
    n_layers
        Transformer layers (0 to 32).
    dropout
        Dropout probability, in ``[0, 0.9]``.

    Examples
    --------
    >>> import bitro as bt
    >>> bt.models.Architecture(n_features=21, hidden=32, n_heads=4).to_dict()["hidden"]
    32
    """

    n_features: int
    hidden: int = 64
    n_heads: int = 4
    n_gat: int = 2
    n_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.n_features, "n_features", min_value=1)
        for name, lo, hi in (("hidden", 8, 4096), ("n_heads", 1, 64), ("n_gat", 0, 16), ("n_layers", 0, 32)):
            check_int(getattr(self, name), f"architecture['{name}']", min_value=lo, max_value=hi)
        if self.hidden % self.n_heads:
            raise ValueError(
                f"`architecture['hidden']` ({self.hidden}) must be a multiple of `architecture['n_heads']` ({self.n_heads})."
            )
        check_float(self.dropout, "architecture['dropout']", min_value=0, max_value=0.9)

    @classmethod
    def from_settings(cls, n_features: int, settings: dict[str, Any] | None) -> Architecture:
        """Defaults updated by ``settings`` (unknown names are an error)."""
        settings = dict(settings or {})
        known = {f.name for f in fields(cls)} - {"n_features"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"`architecture`: unknown setting(s) {unknown}; known: {sorted(known)}.")
        return cls(n_features=n_features, **settings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, heads: dict[str, int]):
        """The network (weights at initialisation) with one head per label kind (``{kind: n_genes}``)."""
        from ._module import BiTroModule

        return BiTroModule(
            self.n_features,
            0,
            heads=heads,
            hidden=self.hidden,
            n_heads=self.n_heads,
            n_gat=self.n_gat,
            n_layers=self.n_layers,
            dropout=self.dropout,
        )


_RECORDED_KEYS = frozenset({"features_key", "graph_key", "spot_key"})
"""Saved by models of bitro <= 0.1 in ``config["data"]``; the keys are now read from ``attrs["bitro"]``."""


def data_settings(kind: str, *layers: dict[str, Any] | None) -> dict[str, Any]:
    """Bag settings of label ``kind``: the defaults, updated by each of ``layers`` in turn, checked.

    Settings of the other label kind in a layer (e.g. a spot model's ``context_um`` when bulk bags
    are built) are ignored; names neither kind knows are an error.
    """
    out = dict(DEFAULT_DATA[kind])
    every = set(DEFAULT_DATA["spot"]) | set(DEFAULT_DATA["bulk"])
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in _RECORDED_KEYS:
                continue
            if key not in every:
                raise ValueError(f"`data`: unknown bag setting {key!r}; known: {sorted(every)}.")
            if key in out:
                out[key] = value
    for key, (lo, hi) in DATA_LIMITS.items():
        if key in out:
            check = check_float if isinstance(lo, float) else check_int
            out[key] = check(out[key], f"data['{key}']", min_value=lo, max_value=hi)
    return out


def check_training(*, lr: float, weight_decay: float, max_epochs: int, patience: int, batch_size: int | None) -> None:
    """Refuse implausible optimiser settings with the argument's name."""
    check_float(lr, "lr", min_value=0, max_value=10, strict_min=True)
    check_float(weight_decay, "weight_decay", min_value=0, max_value=10)
    check_int(max_epochs, "max_epochs", min_value=1)
    check_int(patience, "patience", min_value=0)
    if batch_size is not None:
        check_int(batch_size, "batch_size", min_value=1)


def jsonable(value):
    """``value`` with numpy scalars / arrays and mappings turned into plain JSON types."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0):
        return [jsonable(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if hasattr(value, "item"):
        return value.item()
    return value


def feature_config(sdata) -> dict[str, Any]:
    """The cell features of ``sdata`` as a model records them: method, column names, parameters."""
    cells = sdata.tables[_sdata.cells_table_key(sdata)]
    return features_record(cells.uns.get(_sdata.recorded(sdata, K.ATTR_FEATURES), {}))


def features_record(meta: dict) -> dict[str, Any]:
    """A cells table's ``uns`` entry of its features, as a model records them: method, column names, parameters."""
    names = dict(meta.get("names", {}))
    return {
        "method": meta.get("method"),
        "names": sorted(names, key=names.get),
        # sorted: read back from a store, uns keys come in the store's listing order, which varies
        "params": jsonable(dict(sorted(dict(meta.get("params", {})).items()))),
    }


def spot_scale(sdata) -> tuple[float | None, float | None]:
    """Median spot radius and centre-to-centre pitch (µm) of one section (``None`` where it cannot say)."""
    from scipy.spatial import cKDTree

    centres, radius = _sdata.spots_um(sdata, _sdata.info(sdata)[K.ATTR_SPOTS])
    pitch = None
    if len(centres) > 1:
        d, _ = cKDTree(centres).query(centres, k=2)
        pitch = float(np.median(d[:, 1]))
    return (float(np.median(radius)) if radius is not None else None), pitch


def spot_geometry(scales: list[tuple[float | None, float | None]]) -> dict[str, float]:
    """Median spot radius and pitch (µm) over the training sections' :func:`spot_scale`, for pseudo-spots."""
    radii = [r for r, _ in scales if r is not None]
    pitches = [p for _, p in scales if p is not None]
    return {"radius_um": float(np.median(radii)), "pitch_um": float(np.median(pitches))}


def sample_mpp(sdata) -> float:
    """Pixel size (µm/px) the reader recorded, NaN when it did not."""
    return float(_sdata.info(sdata).get(K.ATTR_MPP, math.nan))


def median_mpp(mpps: list[float]) -> float | None:
    """Median of the samples' :func:`sample_mpp` (µm/px), or ``None`` when none recorded one."""
    return float(np.nanmedian(mpps)) if np.isfinite(mpps).any() else None


def training_record(td, hist, history, options, *, target: str, interrupted: bool = False) -> dict[str, Any]:
    """``config["training"]``: what trained, on which samples, with which split, for how long, how."""
    record = {
        "target": target,
        **td.split_record(),
        "groups": dict(zip(td.ids, td.groups, strict=True)),
        "n_train_bags": len(td.train_items),
        "n_val_bags": len(td.val_items),
        "epochs": int(len(hist)),
        "best_epoch": history.best_epoch,
        "best_val_loss": None if history.best_epoch is None else float(history.best_loss),
        "seed": int(options.seed),
        "lr": float(options.lr),
        "weight_decay": float(options.weight_decay),
    }
    if interrupted:
        record["interrupted"] = True
    return record


def model_config(
    *,
    architecture: Architecture,
    genes: dict[str, list[str]],
    hvg: dict[str, list[str]],
    features: dict[str, Any],
    preprocessing: dict[str, Any],
    data: dict[str, Any],
    mpp: float | None,
    spots: dict[str, float] | None,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The config document of a model (JSON types only), as :meth:`BiTro.save` writes it."""
    return {
        "architecture": architecture.to_dict(),
        "genes": {k: list(v) for k, v in genes.items()},
        "hvg": {k: list(v) for k, v in hvg.items()},
        "features": features,
        "preprocessing": preprocessing,
        "data": {k: v for k, v in data.items() if k != "batch_size"},
        "mpp": mpp,
        "spots": spots,
        "training": training,
    }
