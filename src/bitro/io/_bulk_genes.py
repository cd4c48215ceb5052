"""Genes of bulk RNA-seq: TPM from counts and gene lengths, Ensembl gene ids, gene names as ``var_names``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger

from ._common import make_unique

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d{6,})\.\d+")


def tpm(counts: np.ndarray | Sequence[float], lengths: np.ndarray | Sequence[float]) -> np.ndarray:
    """Transcripts per million from read counts and gene lengths.

    ``rate = counts / lengths``; ``TPM = 1e6 * rate / rate.sum()`` per sample. With the
    ``total_exon_length`` of the GDC's ``gene_info`` file as ``lengths`` and the ``unstranded``
    counts, this reproduces the ``tpm_unstranded`` column of GDC augmented STAR gene counts.
    The sum runs over the genes given, so TPM from a subset of the genes does not match TPM from
    all of them.

    Parameters
    ----------
    counts
        Counts, one sample ``(n_genes,)`` or several ``(n_samples, n_genes)``; finite, non-negative.
    lengths
        Gene lengths ``(n_genes,)``, positive (e.g. in bp: the unit cancels out).

    Returns
    -------
    :class:`numpy.ndarray`
        TPM (``float64``), shaped like ``counts``; each sample sums to ``1e6``.

    Examples
    --------
    >>> from bitro.io._bulk_genes import tpm
    >>> tpm([10, 10], [1000, 2000]).round(1).tolist()
    [666666.7, 333333.3]
    """
    c = np.asarray(counts, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if c.ndim not in (1, 2):
        raise ValueError(f"`counts` must be 1-d (genes) or 2-d (samples x genes), got shape {c.shape}.")
    if lengths.ndim != 1 or lengths.shape[0] != c.shape[-1]:
        raise ValueError(f"`lengths` must be 1-d with one length per gene ({c.shape[-1]}), got shape {lengths.shape}.")
    if not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
        raise ValueError("`lengths` must be finite and positive.")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("`counts` must be finite and non-negative.")
    rate = c / lengths
    total = rate.sum(axis=-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("`counts`: a sample has no counts, so its TPM is undefined.")
    return rate / total * 1e6


def _gene_columns(genes: np.ndarray, var: pd.DataFrame) -> pd.DataFrame:
    """Put the gene labels into ``var``: as ``gene_name`` unless they are Ensembl ids or ``var`` has names."""
    var = var.copy()
    names = _fraction(genes, _ENSEMBL) < 0.5 and K.GENE_NAME_KEY not in var
    var.insert(0, K.GENE_NAME_KEY if names else K.GENE_ID_KEY, genes)
    return var


def _var_names(var: pd.DataFrame, *, gene_id: str, source: Path) -> pd.Index:
    ids = None
    if K.GENE_ID_KEY in var and _fraction(var[K.GENE_ID_KEY].to_numpy(), _ENSEMBL) >= 0.5:
        ids = var[K.GENE_ID_KEY].astype(str).str.replace(_ENSEMBL_VERSION, r"\1", regex=True)
    if gene_id == "ensembl":
        if ids is None:
            raise ValueError(f"`gene_id='ensembl'`: {source} has no Ensembl gene ids; use gene_id='symbol'.")
        return make_unique(pd.Index(ids), what="gene ids", source=source)
    if K.GENE_NAME_KEY not in var:
        logger.warning("bulk: %s has no gene names; var_names are its (unversioned) gene ids.", source)
        names = ids if ids is not None else var[K.GENE_ID_KEY].astype(str)
        return make_unique(pd.Index(names), what="gene ids", source=source)
    names = var[K.GENE_NAME_KEY].astype(str)
    unnamed = names.str.strip().isin(["", "nan"])
    if unnamed.any():
        fallback = ids if ids is not None else var.get(K.GENE_ID_KEY, pd.Series("", index=var.index)).astype(str)
        names = names.where(~unnamed, fallback)
        logger.info("bulk: %d genes without a name keep their gene id as var_name.", int(unnamed.sum()))
    return make_unique(pd.Index(names), what="gene names", source=source)


def _fraction(labels: np.ndarray, pattern: re.Pattern) -> float:
    """Fraction of ``labels`` matching ``pattern``, of at most 2000 evenly spaced ones (enough to tell an axis)."""
    if len(labels) == 0:
        return 0.0
    some = np.asarray(labels, dtype=object)[np.linspace(0, len(labels) - 1, min(len(labels), 2000)).astype(int)]
    return float(pd.Series(some, dtype=object).astype(str).str.match(pattern).mean())
