"""Data the prediction plots read: predicted genes and values (``bt.tl.predict``), observed values and their r."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K

if TYPE_CHECKING:
    from anndata import AnnData

N_LISTED = 10
"""How many available genes an error message lists."""


def prediction_genes(adata: AnnData, key: str = K.PRED_KEY) -> list[str]:
    """Gene names of the columns of ``adata.obsm[key]``, in column order.

    ``uns[key]["var_names"]`` maps each gene to its column (a dict survives a zarr round trip where a
    list of strings does not); a plain list or array is accepted too.
    """
    if key not in adata.obsm:
        raise KeyError(
            f"`key`: {key!r} is not in obsm (obsm keys: {list(adata.obsm)}); run bt.tl.predict first or pass its key."
        )
    meta = adata.uns.get(key)
    names = meta.get("var_names") if hasattr(meta, "get") else None
    if names is None:
        raise KeyError(
            f"`key`: uns[{key!r}]['var_names'] is missing, so the columns of obsm[{key!r}] have no gene names; "
            "was it written by bt.tl.predict?"
        )
    if hasattr(names, "items"):
        genes = [str(g) for g, _ in sorted(names.items(), key=lambda item: int(np.asarray(item[1])))]
        index = sorted(int(np.asarray(i)) for i in names.values())
        if index != list(range(len(genes))):
            raise ValueError(f"uns[{key!r}]['var_names'] must map genes to the columns 0..{len(genes) - 1}.")
    else:
        genes = [str(g) for g in np.asarray(names).ravel()]
    n_cols = np.asarray(adata.obsm[key]).shape[1]
    if len(genes) != n_cols:
        raise ValueError(f"uns[{key!r}]['var_names'] names {len(genes)} genes but obsm[{key!r}] has {n_cols} columns.")
    return genes


def predicted_values(adata: AnnData, key: str, genes: Sequence[str]) -> np.ndarray:
    """``(n_obs, len(genes))`` predictions of ``genes`` (float, NaN kept), with a clear error for unknown genes."""
    names = prediction_genes(adata, key)
    lookup = {g: i for i, g in enumerate(names)}
    unknown = [g for g in genes if g not in lookup]
    if unknown:
        listed = ", ".join(names[:N_LISTED]) + (", ..." if len(names) > N_LISTED else "")
        raise KeyError(
            f"gene(s) {unknown} were not predicted in obsm[{key!r}] ({len(names)} predicted genes: {listed})."
        )
    values = np.asarray(adata.obsm[key])
    return np.asarray(values[:, [lookup[g] for g in genes]], dtype=float)


def observed_values(adata: AnnData, genes: Sequence[str], *, where: str) -> dict[str, np.ndarray]:
    """log1p(CP10k) of the counts in ``X`` of those ``genes`` that are in ``var`` (NaN for spots without counts)."""
    from bitro._expression import log_cp10k

    present = [g for g in dict.fromkeys(genes) if g in adata.var_names]
    if adata.X is None or not present:
        return {}
    logged = log_cp10k(adata.X, where=where, columns=adata.var_names.get_indexer(present))
    return {g: np.asarray(logged[:, i], dtype=float) for i, g in enumerate(present)}


def pearson(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson r of one gene over the spots where both are finite (:func:`bitro.tl._metrics.pearson_per_gene`).

    NaN when fewer than two spots are left or the observed values are constant; 0.0 for a constant
    prediction of varying observed values.
    """
    from bitro.tl._metrics import pearson_per_gene

    return float(pearson_per_gene(np.asarray(observed)[:, None], np.asarray(predicted)[:, None])[0])
