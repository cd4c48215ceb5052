"""Which genes a model predicts: the most variable genes of the training samples, or a checked list."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bitro._expression import gene_columns, log_cp10k, table_genes
from bitro._logging import logger
from bitro._threads import torch_threads_kept

MIN_DETECTION = 0.1
"""Genes detected in fewer than this fraction of training bags are never selected."""


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

    where = [f"sample {batch[i]!r}" if batch else f"training table {i}" for i in range(len(tables))]
    common = table_genes(tables[0], where=where[0])
    for i, table in enumerate(tables[1:], start=1):
        common = common.intersection(table_genes(table, where=where[i]), sort=False)
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
    if not sum(c.shape[0] for c in counts):
        raise ValueError(
            "the training samples have no counts: every spot's (or slide's) library size is 0 over the "
            f"{len(common)} shared genes; check the expression tables."
        )
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
    with warnings.catch_warnings(), torch_threads_kept():
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
    from bitro._validate import check_names

    genes = check_names(genes, "genes")
    if not genes:
        raise ValueError("`genes` is empty.")
    for sid, table in zip(ids, tables, strict=True):
        gene_columns(table, genes, where=f"`genes` for sample {sid!r}")
    return genes


def shared_genes(tables: list, source_genes: list[str]) -> list[str]:
    """The ``source_genes`` that every expression table has (dropped ones logged); an error if none."""
    present = set(source_genes)
    for table in tables:
        present &= set(table_genes(table))
    shared = [g for g in source_genes if g in present]
    if not shared:
        raise ValueError(
            f"the target data share none of the model's {len(source_genes)} genes (e.g. {source_genes[:5]}); "
            "pass `genes=` to train a new panel."
        )
    if len(shared) < len(source_genes):
        dropped = [g for g in source_genes if g not in present]
        logger.warning(
            "%d of the model's genes are missing from the target data and dropped (e.g. %s)", len(dropped), dropped[:5]
        )
    return shared
