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


def table_genes(table, *, where: str | None = None) -> pd.Index:
    """Gene names of a table (its ``var_names``; :func:`gene_columns` also matches ``var["gene_name"]``).

    With ``where``, duplicated names get a clear error (a gene must name one column).
    """
    names = pd.Index(table.var_names.astype(str))
    if where is not None and not names.is_unique:
        dup = list(names[names.duplicated()].unique()[:5])
        raise ValueError(
            f"{where}: the gene names (var_names) are not unique (e.g. {dup}); make them unique "
            "(AnnData.var_names_make_unique) or name genes by their ids."
        )
    return names


def gene_columns(table, genes: list[str], *, where: str) -> np.ndarray:
    """Column of each gene in ``table``, with a clear error listing a few missing genes.

    A gene not among ``var_names`` may be a symbol of ``var["gene_name"]``; a symbol that names
    several genes (common with Ensembl ids) is ambiguous and gets an error listing their ids.
    """
    names = table_genes(table, where=where)
    idx = names.get_indexer(genes)
    if (idx < 0).any() and K.GENE_NAME_KEY in table.var:
        symbols = pd.Index(table.var[K.GENE_NAME_KEY].astype(str))
        shared = symbols.duplicated(keep=False)
        ambiguous = sorted({g for g, i in zip(genes, idx, strict=True) if i < 0} & set(symbols[shared]))
        if ambiguous:
            ids = {g: list(names[symbols == g][:3]) for g in ambiguous[:3]}
            raise ValueError(
                f"{where}: {len(ambiguous)} gene symbols name several genes of the data ({ids}); give their ids."
            )
        unique_rows = np.flatnonzero(~shared)
        hit = pd.Index(symbols[unique_rows]).get_indexer(genes)
        idx = np.where((idx < 0) & (hit >= 0), unique_rows[np.maximum(hit, 0)], idx)
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx, strict=True) if i < 0]
        raise KeyError(
            f"{where}: {len(missing)} of {len(genes)} genes are not in the data (e.g. {missing[:5]}); "
            f"it has {len(names)} genes (e.g. {list(names[:5])})."
        )
    return idx
