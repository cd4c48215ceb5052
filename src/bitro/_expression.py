"""Expression in the units every bitro step uses: log1p of counts per 10 000 (CP10k), genes matched by name.

One definition for reading targets (models), scoring (tl) and plotting observed values (pl).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from bitro import _constants as K

CP10K = 1e4
"""Library size every spot, cell or sample is scaled to before ``log1p``."""


def log_cp10k(counts, *, where: str, columns=None) -> np.ndarray:
    """log1p of counts per 10 000 (library size over all genes), dense float32; rows with no counts give NaN.

    ``columns`` (indices) selects the genes returned; the library size still sums every gene.
    Raises a clear error, naming ``where``, for NaN or negative counts.
    """
    counts = counts.tocsr() if sparse.issparse(counts) else np.asarray(counts, dtype=float)
    values = counts.data if sparse.issparse(counts) else counts
    if np.isnan(values).any():
        raise ValueError(f"{where}: counts contain NaN; pass raw counts (no missing values).")
    if (values < 0).any():
        raise ValueError(f"{where}: counts contain negative values; pass raw (non-negative) counts.")
    lib = np.asarray(counts.sum(axis=1), dtype=float).reshape(-1)
    scale = np.divide(CP10K, lib, out=np.full_like(lib, np.nan), where=lib > 0)
    picked = counts if columns is None else counts[:, np.asarray(columns)]
    if sparse.issparse(picked):
        out = (sparse.diags(np.nan_to_num(scale)) @ picked).toarray()
    else:
        out = picked * np.nan_to_num(scale)[:, None]
    out = np.log1p(out)
    out[lib <= 0] = np.nan
    return out.astype(np.float32)


def table_genes(table) -> pd.Index:
    """Gene names of a table (its ``var_names``; :func:`gene_columns` also matches ``var["gene_name"]``)."""
    return pd.Index(table.var_names.astype(str))


def gene_columns(table, genes: list[str], *, where: str) -> np.ndarray:
    """Column of each gene in ``table``, with a clear error listing a few missing genes."""
    names = table_genes(table)
    idx = names.get_indexer(genes)
    if (idx < 0).any():
        if K.GENE_NAME_KEY in table.var:
            by_name = pd.Index(table.var[K.GENE_NAME_KEY].astype(str)).get_indexer(genes)
            idx = np.where(idx < 0, by_name, idx)
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx, strict=True) if i < 0]
        raise KeyError(
            f"{where}: {len(missing)} of {len(genes)} genes are not in the data (e.g. {missing[:5]}); "
            f"it has {len(names)} genes (e.g. {list(names[:5])})."
        )
    return idx
