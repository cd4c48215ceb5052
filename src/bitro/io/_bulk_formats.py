"""One bulk RNA-seq file: compression and format detection, GDC STAR / STAR / HTSeq / plain-matrix parsers."""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger

from ._bulk_genes import _ENSEMBL, _fraction, _gene_columns

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_BARCODE = re.compile(r"^[A-Z][A-Z0-9]*-[A-Z0-9]{2}-[A-Z0-9]{4}")  # TCGA-73-4658-01A, TARGET-20-PAEFGT-03A
_STAR_SUMMARY = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
_SUMMARY = re.compile(rf"^({'|'.join(_STAR_SUMMARY)})$|^__")  # STAR and HTSeq (__no_feature, ...) summary rows
_GENE_LIKE = re.compile(f"{_ENSEMBL.pattern}|{_SUMMARY.pattern}")
_COMPRESSION = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
_COUNT_SUFFIXES = (".tsv", ".txt", ".csv", ".tab", ".counts")
_TOOL_SUFFIXES = (".rna_seq.augmented_star_gene_counts", ".ReadsPerGene.out", ".htseq")
_GDC = "GDC augmented STAR counts"
# words of the row-names column's name that mark the first row as a header even when the sample names are numbers
_INDEX_WORDS = {"", "gene", "genes", "sample", "samples", "id", "ids", "name", "symbol", "ensembl", "feature"}
# matrix columns (genes x samples) that annotate genes instead of holding a sample
_ANNOTATION_COLUMNS = {
    "gene_name": K.GENE_NAME_KEY,
    "gene_symbol": K.GENE_NAME_KEY,
    "symbol": K.GENE_NAME_KEY,
    "hgnc_symbol": K.GENE_NAME_KEY,
    "gene_type": K.GENE_TYPE_KEY,
    "gene_biotype": K.GENE_TYPE_KEY,
    "biotype": K.GENE_TYPE_KEY,
    "description": "description",
}


# --- one file ------------------------------------------------------------------------------------


@dataclass
class _Head:
    compression: str | None
    comments: list[str]  # the leading ``#`` lines
    first: str  # the first line after them, "" when there is none
    delimiter: str


@dataclass
class _Table:
    path: Path
    fmt: str
    genes: np.ndarray  # gene labels as the file spells them (the consistency check compares these)
    var: pd.DataFrame
    counts: np.ndarray  # samples x genes, float32
    tpm: np.ndarray | None  # float32
    samples: list[str]
    obs: pd.DataFrame
    dropped: list[str]  # the summary rows


def _head(path: Path) -> _Head:
    """Leading ``#`` comments, the first line after them, the compression and the delimiter of ``path``."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    compression = next((kind for prefix, kind in _COMPRESSION.items() if magic.startswith(prefix)), None)
    comments, first = [], ""
    try:
        with _OPENERS.get(compression, open)(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if line.startswith("#"):
                    comments.append(line)
                elif line.strip():
                    first = line
                    break
    except (OSError, EOFError) as err:  # a truncated or corrupt archive
        raise ValueError(f"{path}: cannot read the file ({err}).") from err
    delimiter = "\t" if "\t" in first else ("," if "," in first else "\t")
    return _Head(compression, comments, first, delimiter)


def _read_file(path: Path, *, orientation: str) -> _Table:
    head = _head(path)
    if not head.first:
        raise ValueError(f"{path}: the file is empty (no rows after the comment lines).")
    header = _split(head.first, head.delimiter)
    if len(header) < 2:
        raise ValueError(
            f"{path}: not a counts table: the first row {head.first[:80]!r} has no tab or comma between columns."
        )
    if K.GENE_ID_KEY in header and "unstranded" in header:
        fmt = _GDC
    elif header[0] in _STAR_SUMMARY and len(header) == 4 and all(_is_number(x) for x in header[1:]):
        fmt = "STAR ReadsPerGene"
    elif len(header) == 2 and _is_number(header[1]):
        fmt = "HTSeq counts"
    else:
        fmt = "matrix"
    if fmt != "matrix" and orientation == "samples_x_genes":
        raise ValueError(f"`orientation='samples_x_genes'`: {path} is a {fmt} file, whose genes are always rows.")
    if fmt == "matrix":
        table = _read_matrix(path, head, header, orientation)
    else:  # one sample, genes in rows; STAR and HTSeq: headerless, unstranded counts in the second column
        frame = _read_table(path, head, header if fmt == _GDC else None)
        count_col, tpm_col = ("unstranded", "tpm_unstranded") if fmt == _GDC else (1, None)
        var = frame[[c for c in (K.GENE_NAME_KEY, K.GENE_TYPE_KEY) if c in frame]].fillna("").astype(str)
        tpm_frame = frame[[tpm_col]] if tpm_col in frame else None
        table = _table(path, fmt, frame[[count_col]], var, [_sample_from_name(path)], tpm=tpm_frame)
    for line in head.comments:
        key, _, val = line.lstrip("#").partition(":")
        if key.strip() == "gene-model" and val.strip():
            table.obs[K.GENE_MODEL_KEY] = val.strip()
    logger.debug("bulk: %s: %s, %d genes, %d summary rows dropped", path, fmt, len(table.genes), len(table.dropped))
    return table


def _read_table(path: Path, head: _Head, header: list[str] | None, *, matrix: bool = False) -> pd.DataFrame:
    """The rows after the comments (and ``header``, when given), the first column as (string) index.

    The other columns are named by ``header``, or numbered from 1 without one. A matrix's header may
    lack the name of the row-names column (as R's ``write.table`` writes it).
    """
    noun = "matrix" if matrix else "table"
    try:
        frame = pd.read_csv(
            path,
            sep=head.delimiter,
            header=None,
            index_col=0,
            skiprows=len(head.comments) + (header is not None),
            compression=head.compression,
            dtype={0: str},
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            low_memory=False,
        )
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: the {noun} is empty (a header but no rows).") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot parse the table: {err}") from err
    frame.index = frame.index.fillna("").rename(None)
    if header is None:
        return frame
    if len(header) == frame.shape[1] + 1:
        frame.columns = header[1:]
    elif matrix and len(header) == frame.shape[1]:
        frame.columns = header
    else:
        raise ValueError(f"{path}: the header has {len(header)} names but the rows have {frame.shape[1] + 1} columns.")
    return frame


def _read_matrix(path: Path, head: _Head, header: list[str], orientation: str) -> _Table:
    if all(_is_number(x) for x in header[1:]) and not _INDEX_WORDS & set(re.split(r"[\W_]+", header[0].lower())):
        raise ValueError(
            f"{path}: the first row {head.first[:80]!r} looks like data, not a header of sample or gene "
            "names, and the file is not a GDC, STAR or HTSeq file either. Give the matrix a header row "
            "(numeric sample names are fine when the first column is named, e.g. 'gene_id')."
        )
    frame = _read_table(path, head, header, matrix=True)
    if orientation == "auto":
        rows, columns = frame.index.to_numpy().astype(str), frame.columns.to_numpy().astype(str)
        orientation, reason, sure = _detect_orientation(rows, columns, path)
        log = logger.info if sure else logger.warning
        log(
            "bulk: %s: read as %s (%s); pass orientation= to override.", path, orientation.replace("_x_", " x "), reason
        )
    if orientation == "genes_x_samples":
        annotation = frame.columns.str.lower().isin(list(_ANNOTATION_COLUMNS))
        var = pd.DataFrame(index=pd.RangeIndex(len(frame)))
        for j in np.flatnonzero(annotation):
            var[_ANNOTATION_COLUMNS[frame.columns[j].lower()]] = frame.iloc[:, j].fillna("").astype(str).to_numpy()
        values = frame.loc[:, ~annotation]
    else:
        var = pd.DataFrame(index=pd.RangeIndex(frame.shape[1]))
        values = frame.T
    if values.size == 0:
        raise ValueError(f"{path}: the matrix is empty ({values.shape[0]} genes x {values.shape[1]} samples).")
    return _table(path, "matrix", values, var, values.columns.astype(str).tolist())


def _table(
    path: Path,
    fmt: str,
    values: pd.DataFrame,
    var: pd.DataFrame,
    samples: list[str],
    *,
    tpm: pd.DataFrame | None = None,
) -> _Table:
    """Samples from ``values`` (genes x samples, gene labels as index): summary rows to ``obs``, numbers checked."""
    labels = values.index.to_numpy().astype(str)
    summary = _is_summary(labels)
    keep, matrix = ~summary, fmt == "matrix"
    if not keep.any():
        raise ValueError(
            f"{path}: the {'matrix' if matrix else 'table'} has no genes (only {summary.sum()} summary rows)."
        )
    counts = _numeric(values, path, "value" if matrix else "count", integer=not matrix, by_sample=matrix)
    obs = pd.DataFrame(
        {n.lstrip("_"): row for n, row in zip(labels[summary], counts[summary], strict=True)},
        index=pd.RangeIndex(len(samples)),
    )
    obs.insert(0, K.FILE_KEY, path.name)
    genes = labels[keep]
    return _Table(
        path=path,
        fmt=fmt,
        genes=genes,
        var=_gene_columns(genes, var[keep].reset_index(drop=True)),
        counts=_float32(counts[keep].T, path),
        tpm=None if tpm is None else _numeric(tpm[keep], path, "TPM value").T.astype(np.float32),
        samples=samples,
        obs=obs,
        dropped=list(labels[summary]),
    )


def _detect_orientation(rows: np.ndarray, columns: np.ndarray, path: Path) -> tuple[str, str, bool]:
    """``(orientation, reason, sure)`` from which axis looks like genes (or samples), else the longer one."""
    ens_r, ens_c = _fraction(rows, _GENE_LIKE), _fraction(columns, _GENE_LIKE)
    if ens_r >= 0.5 > ens_c:
        return "genes_x_samples", "row names look like Ensembl gene ids", True
    if ens_c >= 0.5 > ens_r:
        return "samples_x_genes", "column names look like Ensembl gene ids", True
    smp_r = max(_fraction(rows, _UUID), _fraction(rows, _BARCODE))
    smp_c = max(_fraction(columns, _UUID), _fraction(columns, _BARCODE))
    if smp_c >= 0.5 > smp_r:
        return "genes_x_samples", "column names look like GDC UUIDs or TCGA-style barcodes", True
    if smp_r >= 0.5 > smp_c:
        return "samples_x_genes", "row names look like GDC UUIDs or TCGA-style barcodes", True
    if len(rows) != len(columns):
        longer = "rows" if len(rows) > len(columns) else "columns"
        reason = f"{len(rows)} rows x {len(columns)} columns: the longer axis ({longer}) taken as genes"
        return ("genes_x_samples" if longer == "rows" else "samples_x_genes"), reason, False
    raise ValueError(
        f"{path}: cannot tell whether rows or columns are genes ({len(rows)} x {len(columns)}, "
        "no Ensembl ids or sample barcodes); pass orientation='genes_x_samples' or 'samples_x_genes'."
    )


# --- checks and names ----------------------------------------------------------------------------


def _numeric(frame: pd.DataFrame, path: Path, what: str, *, integer: bool = False, by_sample: bool = False):
    """``frame`` (genes x samples) as finite, non-negative float64, or a ValueError showing the first bad cell.

    With ``integer`` (counts of GDC, STAR and HTSeq files), non-integer values are bad too; with
    ``by_sample`` (matrices), the message names the cell's sample (column) as well as its gene.
    """
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    # "True" / "False" parse as booleans, not numbers
    values[:, frame.dtypes.map(pd.api.types.is_bool_dtype).to_numpy(bool)] = np.nan
    finite = np.isfinite(values)
    checks = [("a non-numeric or missing", ~finite), ("a negative", values < 0)]
    if integer:
        checks.append(("a non-integer", finite & (values != np.floor(values))))
    for kind, bad in checks:
        if not bad.any():
            continue
        i, j = np.argwhere(bad)[0]
        raw = frame.iat[i, j]
        raw = raw.item() if isinstance(raw, np.generic) else raw
        shown = "an empty value" if pd.isna(raw) or raw == "" else repr(raw)
        where = f"gene {str(frame.index[i])!r}" + (f", sample {str(frame.columns[j])!r}" if by_sample else "")
        hint = "; counts are integers: FPKM, FPKM-UQ and TPM files hold no counts" if kind == "a non-integer" else ""
        raise ValueError(f"{path}: {kind} {what}: {shown} at {where}; {int(bad.sum())} such values{hint}.")
    return values


def _float32(values: np.ndarray, path: Path) -> np.ndarray:
    """``values`` as ``float32`` (what ``X`` holds), logging when integers above 2**24 lose precision."""
    if values.size and values.max() > 2**24:
        logger.warning(
            "bulk: %s has values up to %.0f; float32 keeps integers exactly only up to 2**24 = 16777216.",
            path,
            values.max(),
        )
    return values.astype(np.float32)


def _is_summary(labels: np.ndarray) -> np.ndarray:
    return pd.Series(labels, dtype=object).astype(str).str.match(_SUMMARY).to_numpy(dtype=bool)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter))


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    for suffix in suffixes:
        if name.lower().endswith(suffix.lower()):
            return name[: -len(suffix)]
    return name


def _sample_from_name(path: Path) -> str:
    """``abc.rna_seq.augmented_star_gene_counts.tsv.gz`` -> ``abc``; ``x.htseq.counts.gz`` -> ``x``."""
    name = _strip_suffix(path.name, _COMPRESSED_SUFFIXES)
    name = _strip_suffix(name, _COUNT_SUFFIXES)
    return _strip_suffix(name, _TOOL_SUFFIXES) or path.name
