"""Bulk RNA-seq: GDC augmented STAR gene counts, STAR ``ReadsPerGene``, HTSeq counts and plain matrices."""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger
from bitro._validate import check_choice

from ._common import check_path, make_unique, sanitize_id

if TYPE_CHECKING:
    import anndata as ad

# Keys this reader writes (candidates for _constants.py).
GENE_ID_KEY = "gene_id"
"""``var``: the gene id as the file spells it (versioned Ensembl id for GDC / HTSeq files)."""
GENE_NAME_KEY = "gene_name"
GENE_TYPE_KEY = "gene_type"
COUNTS_LAYER = "counts"
TPM_LAYER = "tpm"
FILE_KEY = "file"
"""``obs``: the name of the file a sample was read from."""
GENE_MODEL_KEY = "gene_model"
"""``obs``: the gene model a GDC file names in its ``# gene-model:`` line (e.g. ``GENCODE v36``)."""

_GENE_ID_CHOICES = ("symbol", "ensembl")
_VALUE_CHOICES = ("counts", "tpm")
_ORIENTATIONS = ("auto", "genes_x_samples", "samples_x_genes")

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d{6,})\.\d+")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_BARCODE = re.compile(r"^[A-Z][A-Z0-9]*-[A-Z0-9]{2}-[A-Z0-9]{4}")  # TCGA-73-4658-01A, TARGET-20-PAEFGT-03A
_STAR_SUMMARY = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
_COMPRESSION = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_COUNT_SUFFIXES = (".tsv", ".txt", ".csv", ".tab", ".counts")
_TOOL_SUFFIXES = (".rna_seq.augmented_star_gene_counts", ".ReadsPerGene.out", ".htseq")
_SHEET_PREFIXES = ("gdc_sample_sheet", "gdc_manifest")
_SKIP_FILES = ("annotations.txt", "manifest.txt")
# names of the row-names column that mark the first row as a header even when the sample names are numbers
_INDEX_NAMES = {
    "",
    "gene",
    "genes",
    "gene_id",
    "gene_ids",
    "gene_name",
    "gene_symbol",
    "symbol",
    "id",
    "ensembl",
    "ensembl_id",
    "ensembl_gene_id",
    "name",
    "feature",
    "sample",
    "samples",
    "sample_id",
}
# matrix columns (genes x samples) that annotate genes instead of holding a sample
_ANNOTATION_COLUMNS = {
    "gene_name": GENE_NAME_KEY,
    "gene_symbol": GENE_NAME_KEY,
    "symbol": GENE_NAME_KEY,
    "hgnc_symbol": GENE_NAME_KEY,
    "gene_type": GENE_TYPE_KEY,
    "gene_biotype": GENE_TYPE_KEY,
    "biotype": GENE_TYPE_KEY,
    "description": "description",
}


def bulk(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    gene_id: Literal["symbol", "ensembl"] = "symbol",
    value: Literal["counts", "tpm"] = "counts",
    sample_id: str | Sequence[str] | None = None,
    orientation: Literal["auto", "genes_x_samples", "samples_x_genes"] = "auto",
) -> ad.AnnData:
    """Read bulk RNA-seq expression into a samples x genes :class:`~anndata.AnnData`.

    Each file is recognised by its content, whatever its name or compression (gzip, bz2, xz):

    - **GDC augmented STAR gene counts** (``*.rna_seq.augmented_star_gene_counts.tsv``): ``#``
      comment lines (``# gene-model: GENCODE v36``), a header with ``gene_id``, ``gene_name``,
      ``gene_type``, ``unstranded``, ``stranded_first``, ``stranded_second``, ``tpm_unstranded``,
      ``fpkm_unstranded``, ``fpkm_uq_unstranded``. ``X`` holds ``unstranded`` counts,
      ``layers["tpm"]`` ``tpm_unstranded``.
    - **STAR** ``ReadsPerGene.out.tab``: no header, four columns starting with ``N_unmapped``;
      the second column (unstranded counts, as the GDC uses) is read.
    - **HTSeq counts** (legacy GDC ``*.htseq.counts``): no header, gene id and count.
    - **A plain CSV/TSV matrix** with a header row of sample (or gene) names and the gene (or
      sample) names in the first column. Which axis holds the genes is detected (rows or columns
      that look like Ensembl ids, then columns or rows that look like GDC UUIDs / TCGA barcodes,
      then the longer axis) and logged; ``orientation=`` overrides it. With genes in rows, the
      columns ``gene_name``, ``gene_symbol``, ``symbol``, ``gene_type``, ``gene_biotype`` and
      ``description`` go to ``var``. Values are read as they are (counts, or whatever the matrix holds).

    STAR (``N_unmapped``, ``N_multimapping``, ``N_noFeature``, ``N_ambiguous``) and HTSeq
    (``__no_feature``, ``__ambiguous``, ...) summary rows are dropped from the genes, logged, and
    kept per sample in ``obs`` (``N_unmapped``, ..., ``no_feature``, ...).

    Parameters
    ----------
    source
        One of:

        - a counts file (any format above);
        - a directory: every ``*.tsv``, ``*.txt``, ``*.csv``, ``*.tab``, ``*.counts`` file (also
          compressed) in it and in its direct subfolders (the ``{file_id}/{file_name}`` layout that
          ``gdc-client`` downloads to), sorted by path; GDC sample sheets and manifests
          (``gdc_sample_sheet*``, ``gdc_manifest*``), ``annotations.txt``, ``MANIFEST.txt`` and
          ``logs/`` folders are skipped;
        - a list of counts files;
        - a GDC sample sheet (the TSV the GDC portal's cart gives, columns ``File ID``, ``File Name``,
          ``Data Category``, ``Data Type``, ``Project ID``, ``Case ID``, ``Sample ID``, ``Sample Type``,
          ...) or a GDC manifest (columns ``id``, ``filename``, ``md5``, ``size``, ``state``). Each
          listed file is looked for at ``{folder}/{File ID}/{File Name}`` (the ``gdc-client`` layout)
          and then ``{folder}/{File Name}``, ``{folder}`` being the sheet's folder. ``Sample ID``
          gives the sample ids, ``Case ID`` ``obs["patient_id"]``, and the other columns go to ``obs``
          in snake case (``project_id``, ``sample_type``, ...).

        Every file must list the same genes in the same order.
    gene_id
        ``var_names``: ``"symbol"`` (the gene names, where the file has them; genes without one,
        and files without names, keep their unversioned Ensembl id, which is logged) or
        ``"ensembl"`` (unversioned Ensembl ids such as ``ENSG00000000003``; ``_PAR_Y`` suffixes are
        kept). Either way duplicates are made unique (``-1``, ``-2``, ...) with a warning, and
        ``var["gene_id"]`` keeps the ids as the file spells them (versioned).
    value
        What ``X`` holds: ``"counts"`` (raw counts; TPM in ``layers["tpm"]`` when every file has
        it) or ``"tpm"`` (TPM, from GDC files only; the counts in ``layers["counts"]``).
    sample_id
        Sample ids (``obs_names`` and ``obs["sample_id"]``), one per sample read, in order; a string
        when one sample is read. Default: the sample sheet's ``Sample ID``, else the matrix header,
        else the file name without its extensions and tool suffixes (``.tsv.gz``,
        ``.rna_seq.augmented_star_gene_counts``, ``.htseq.counts``, ...). Ids are made valid
        element names (``[A-Za-z0-9_.-]``) and unique (with a warning).
    orientation
        For plain matrices: ``"auto"`` (detect), ``"genes_x_samples"`` (genes in rows) or
        ``"samples_x_genes"``. GDC, STAR and HTSeq files always have genes in rows.

    Returns
    -------
    :class:`~anndata.AnnData`
        Samples x genes, ``X`` as ``float32``; ``obs``: ``sample_id``, ``file`` (the file name),
        ``gene_model`` (GDC), the summary counts, and sample-sheet columns; ``var``: ``gene_id``,
        ``gene_name`` and ``gene_type`` where the files have them; ``layers["tpm"]`` or
        ``layers["counts"]`` as set by ``value``.

    Examples
    --------
    A folder downloaded with ``gdc-client`` and the sample sheet of the same cart:

    >>> import bitro as bt
    >>> cohort = bt.io.bulk("gdc_download/gdc_sample_sheet.2025-05-22.tsv")  # doctest: +SKIP
    >>> cohort.var[["gene_id", "gene_name"]].head(2)  # doctest: +SKIP
                        gene_id gene_name
    TSPAN6   ENSG00000000003.15    TSPAN6
    TNMD      ENSG00000000005.6      TNMD

    A plain matrix (genes x samples or samples x genes, detected) with Ensembl ids as ``var_names``:

    >>> adata = bt.io.bulk("matrix.csv", gene_id="ensembl")  # doctest: +SKIP
    """
    import anndata as ad

    gene_id = check_choice(gene_id, "gene_id", _GENE_ID_CHOICES)
    value = check_choice(value, "value", _VALUE_CHOICES)
    orientation = check_choice(orientation, "orientation", _ORIENTATIONS)
    if sample_id is not None and not isinstance(sample_id, str):
        if not isinstance(sample_id, Sequence | np.ndarray | pd.Index) or not all(
            isinstance(s, str) and s for s in sample_id
        ):
            raise TypeError(f"`sample_id` must be a string or a list of non-empty strings, got {sample_id!r}.")

    entries, label = _resolve_source(source)
    tables = [_read_file(path, orientation=orientation) for path, _ in entries]
    for (path, sheet_obs), table in zip(entries, tables, strict=True):
        if sheet_obs:
            if table.n_samples != 1:
                raise ValueError(
                    f"`source`: {label} lists {path}, which holds {table.n_samples} samples; "
                    "a sample sheet can only name files of one sample each."
                )
            for key, val in sheet_obs.items():
                if key == K.SAMPLE_ID_KEY:
                    table.samples = [val]
                else:
                    table.obs[key] = val

    _check_same_genes(tables)
    ref = tables[0]
    counts = np.vstack([t.counts for t in tables])
    has_tpm = all(t.tpm is not None for t in tables)
    if value == "tpm" and not has_tpm:
        missing = next(t.path for t in tables if t.tpm is None)
        raise ValueError(
            f"`value='tpm'`: {missing} has no TPM values (only GDC augmented STAR counts files have them); "
            "use value='counts'."
        )
    if not has_tpm and any(t.tpm is not None for t in tables):
        logger.info("bulk: not every file has TPM values, so no 'tpm' layer is kept.")

    # obs: sample ids, file, per-format extras
    ids = [s for t in tables for s in t.samples]
    if sample_id is not None:
        given = [sample_id] if isinstance(sample_id, str) else list(sample_id)
        if len(given) != len(ids):
            raise ValueError(f"`sample_id` has {len(given)} names but {len(ids)} samples were read from {label}.")
        ids = given
    ids = [sanitize_id(str(s), name="sample_id") for s in ids]
    obs_names = make_unique(pd.Index(ids), what="sample ids", source=label)
    obs = pd.concat([t.obs for t in tables], ignore_index=True)
    obs.insert(0, K.SAMPLE_ID_KEY, np.asarray(obs_names))
    obs.index = obs_names.rename(None)

    var = ref.var.copy()
    for t in tables[1:]:
        for col in t.var.columns.difference(var.columns):
            var[col] = t.var[col].to_numpy()
    var.index = _var_names(var, gene_id=gene_id, source=ref.path).rename(None)

    tpm_values = np.vstack([t.tpm for t in tables]) if has_tpm else None
    if value == "tpm":
        X, layers = tpm_values, {COUNTS_LAYER: counts}
    else:
        X, layers = counts, ({TPM_LAYER: tpm_values} if has_tpm else {})
    adata = ad.AnnData(X=X, obs=obs, var=var, layers=layers)

    n_dropped = sum(t.n_dropped for t in tables)
    dropped = sorted({name for t in tables for name in t.dropped})
    formats = sorted({t.fmt for t in tables})
    logger.info(
        "bulk: %d samples x %d genes from %d file(s) (%s); dropped %d summary rows%s; X = %s",
        adata.n_obs,
        adata.n_vars,
        len(tables),
        ", ".join(formats),
        n_dropped,
        f" ({', '.join(dropped)})" if dropped else "",
        value,
    )
    return adata


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
    >>> from bitro.io._bulk import tpm
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


# --- sources -------------------------------------------------------------------------------------


def _resolve_source(source) -> tuple[list[tuple[Path, dict]], str]:
    """The files to read (each with the sample-sheet fields of its sample) and a label for messages."""
    if isinstance(source, str | os.PathLike):
        path = check_path(source, name="source", kind="any")
        if path.is_dir():
            files = _list_dir(path)
            if not files:
                raise ValueError(
                    f"`source`: {path} holds no counts files (*.tsv, *.txt, *.csv, *.tab, *.counts, also compressed)."
                )
            logger.info("bulk: %d files in %s", len(files), path)
            return [(f, {}) for f in files], str(path)
        sheet = _read_sheet(path)
        if sheet is not None:
            return sheet, str(path)
        return [(path, {})], str(path)
    if isinstance(source, Sequence) and not isinstance(source, bytes):
        if len(source) == 0:
            raise ValueError("`source` is an empty list: give at least one file.")
        files = [check_path(p, name=f"source[{i}]", kind="file") for i, p in enumerate(source)]
        return [(f, {}) for f in files], str(files[0]) if len(files) == 1 else f"{len(files)} files"
    raise TypeError(f"`source` must be a path or a list of paths, got {type(source).__name__} {source!r}.")


def _list_dir(folder: Path) -> list[Path]:
    def wanted(p: Path) -> bool:
        name = p.name.lower()
        if name.startswith(".") or name in _SKIP_FILES or not p.is_file():
            return False
        if name.startswith(_SHEET_PREFIXES):
            logger.info("bulk: skipping %s in %s; pass it as `source` to take sample ids from it.", p.name, folder)
            return False
        return _strip_suffix(name, (".gz", ".bz2", ".xz")).endswith(_COUNT_SUFFIXES)

    files = [p for p in folder.iterdir() if wanted(p)]
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.startswith(".") and sub.name != "logs":
            files += [p for p in sub.iterdir() if wanted(p)]
    return sorted(files)


def _read_sheet(path: Path) -> list[tuple[Path, dict]] | None:
    """Entries of a GDC sample sheet or manifest, or ``None`` when ``path`` is not one."""
    head = _head(path)
    if not head.lines:
        return None
    header = _split(head.lines[0], head.delimiter)
    if "File Name" in header:
        file_col, id_col = "File Name", "File ID"
    elif "filename" in header and "id" in header:
        file_col, id_col = "filename", "id"
    else:
        return None
    sheet = pd.read_csv(
        path,
        sep=head.delimiter,
        compression=head.compression,
        skiprows=head.n_comments,
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    if sheet.empty:
        raise ValueError(f"`source`: the sample sheet {path} lists no files.")
    rename = {"Sample ID": K.SAMPLE_ID_KEY, "Case ID": K.PATIENT_ID_KEY, "id": "file_id"}
    skip = {file_col, "md5", "size", "state"}
    entries = []
    for _, row in sheet.iterrows():
        name = row[file_col]
        candidates = [path.parent / row[id_col] / name] if row.get(id_col) else []
        candidates += [path.parent / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"`source`: the sample sheet {path} lists {name!r}, found at none of: "
                + ", ".join(str(c) for c in candidates)
                + "."
            )
        fields = {rename.get(c, _snake(c)): row[c] for c in sheet.columns if c not in skip and row[c] != ""}
        entries.append((found, fields))
    logger.info("bulk: %d files listed in %s", len(entries), path)
    return entries


# --- one file ------------------------------------------------------------------------------------


@dataclass
class _Head:
    compression: str | None
    n_comments: int
    comments: list[str]
    lines: list[str]
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
    n_dropped: int
    dropped: list[str]

    @property
    def n_samples(self) -> int:
        return self.counts.shape[0]


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    return next((kind for prefix, kind in _COMPRESSION.items() if magic.startswith(prefix)), None)


def _head(path: Path, n_lines: int = 3) -> _Head:
    """Leading ``#`` comments, the first lines after them, the compression and the delimiter of ``path``."""
    import bz2
    import lzma

    compression = _compression(path)
    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(compression, open)
    comments, lines = [], []
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if not lines and line.startswith("#"):
                    comments.append(line)
                    continue
                if line.strip():
                    lines.append(line)
                if len(lines) >= n_lines:
                    break
    except (OSError, EOFError) as err:  # a truncated or corrupt archive
        raise ValueError(f"{path}: cannot read the file ({err}).") from err
    first = lines[0] if lines else ""
    delimiter = "\t" if "\t" in first else ("," if "," in first else "\t")
    return _Head(compression, len(comments), comments, lines, delimiter)


def _read_file(path: Path, *, orientation: str) -> _Table:
    head = _head(path)
    if not head.lines:
        raise ValueError(f"{path}: the file is empty (no rows after the comment lines).")
    header = _split(head.lines[0], head.delimiter)
    if len(header) < 2:
        raise ValueError(
            f"{path}: not a counts table: the first row {head.lines[0][:80]!r} has no tab or comma between columns."
        )
    if GENE_ID_KEY in header and "unstranded" in header:
        fmt = "GDC augmented STAR counts"
    elif header[0] in _STAR_SUMMARY and len(header) == 4 and all(_is_number(x) for x in header[1:]):
        fmt = "STAR ReadsPerGene"
    elif len(header) == 2 and _is_number(header[1]):
        fmt = "HTSeq counts"
    else:
        fmt = "matrix"
    if fmt != "matrix" and orientation == "samples_x_genes":
        raise ValueError(f"`orientation='samples_x_genes'`: {path} is a {fmt} file, whose genes are always rows.")
    if fmt == "GDC augmented STAR counts":
        table = _read_gdc(path, head, header)
    elif fmt == "matrix":
        table = _read_matrix(path, head, header, orientation)
    else:  # STAR ReadsPerGene or HTSeq: headerless, gene id then unstranded counts
        frame = _read_frame(path, head, skip_header=False, n_columns=len(header))
        table = _from_columns(path, fmt, frame[0].to_numpy(), frame[[1]], None, None)
    logger.debug("bulk: %s: %s, %d genes, %d summary rows dropped", path, fmt, len(table.genes), table.n_dropped)
    return table


def _read_frame(path: Path, head: _Head, *, skip_header: bool, n_columns: int) -> pd.DataFrame:
    """All rows of ``path`` with integer column labels; the first column as strings, empty cells as NaN."""
    try:
        frame = pd.read_csv(
            path,
            sep=head.delimiter,
            header=None,
            skiprows=head.n_comments + int(skip_header),
            compression=head.compression,
            dtype={0: str},
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            low_memory=False,
        )
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: the table is empty (a header but no rows).") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot parse the table: {err}") from err
    if frame.shape[1] != n_columns:
        raise ValueError(f"{path}: rows have {frame.shape[1]} columns but the first row has {n_columns}.")
    frame[0] = frame[0].fillna("")
    return frame


def _read_gdc(path: Path, head: _Head, header: list[str]) -> _Table:
    frame = _read_frame(path, head, skip_header=True, n_columns=len(header))
    frame.columns = header
    var = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for col in (GENE_NAME_KEY, GENE_TYPE_KEY):
        if col in frame:
            var[col] = frame[col].fillna("").astype(str).to_numpy()
    tpm_col = frame[["tpm_unstranded"]] if "tpm_unstranded" in frame else None
    table = _from_columns(
        path, "GDC augmented STAR counts", frame[GENE_ID_KEY].to_numpy(), frame[["unstranded"]], tpm_col, var
    )
    for line in head.comments:
        key, _, val = line.lstrip("#").partition(":")
        if key.strip() == "gene-model" and val.strip():
            table.obs[GENE_MODEL_KEY] = val.strip()
    return table


def _from_columns(
    path: Path, fmt: str, labels: np.ndarray, counts: pd.DataFrame, tpm_frame: pd.DataFrame | None, var
) -> _Table:
    """One sample from a genes-in-rows file: drop the summary rows, check the numbers."""
    labels = labels.astype(str)
    summary = _is_summary(labels)
    keep = ~summary
    if not keep.any():
        raise ValueError(f"{path}: the table has no genes (only {int(summary.sum())} summary rows).")
    genes = labels[keep]
    values = _numeric(counts[keep], path, row_labels=genes, what="count")
    tpm_values = None if tpm_frame is None else _numeric(tpm_frame[keep], path, row_labels=genes, what="TPM value")
    var = pd.DataFrame(index=pd.RangeIndex(keep.sum())) if var is None else var[keep].reset_index(drop=True)
    var = _gene_columns(genes, var)
    summary_values = _numeric(counts[summary], path, row_labels=labels[summary], what="summary count")
    obs = pd.DataFrame(
        {_summary_name(n): summary_values[i] for i, n in enumerate(labels[summary])}, index=pd.RangeIndex(1)
    )
    obs.insert(0, FILE_KEY, path.name)
    return _Table(
        path=path,
        fmt=fmt,
        genes=genes,
        var=var,
        counts=_float32(values.T, path),
        tpm=None if tpm_values is None else tpm_values.T.astype(np.float32),
        samples=[_sample_from_name(path)],
        obs=obs,
        n_dropped=int(summary.sum()),
        dropped=list(labels[summary]),
    )


def _read_matrix(path: Path, head: _Head, header: list[str], orientation: str) -> _Table:
    if all(_is_number(x) for x in header[1:]) and header[0].strip().lower() not in _INDEX_NAMES:
        raise ValueError(
            f"{path}: the first row {head.lines[0][:80]!r} looks like data, not a header of sample or gene "
            "names, and the file is not a GDC, STAR or HTSeq file either. Give the matrix a header row "
            "(numeric sample names are fine when the first column is named, e.g. 'gene_id')."
        )
    frame = _read_frame(path, head, skip_header=True, n_columns=_n_fields(path, head))
    if frame.shape[1] == len(header) + 1:  # R's write.table: no name above the row names
        header = ["", *header]
    elif frame.shape[1] != len(header):
        raise ValueError(f"{path}: the header has {len(header)} names but the rows have {frame.shape[1]} columns.")
    rows = frame[0].to_numpy().astype(str)
    columns = np.asarray(header[1:], dtype=object).astype(str)
    values = frame.iloc[:, 1:].set_axis(range(frame.shape[1] - 1), axis=1)
    if orientation == "auto":
        orientation, reason, sure = _detect_orientation(rows, columns, path)
        log = logger.info if sure else logger.warning
        log(
            "bulk: %s: read as %s (%s); pass orientation= to override.",
            path,
            orientation.replace("_x_", " x "),
            reason,
        )
    var = pd.DataFrame(index=pd.RangeIndex(len(rows) if orientation == "genes_x_samples" else len(columns)))
    if orientation == "genes_x_samples":
        annotation = [j for j, c in enumerate(columns) if c.lower() in _ANNOTATION_COLUMNS]
        for j in annotation:
            var[_ANNOTATION_COLUMNS[columns[j].lower()]] = values[j].fillna("").astype(str).to_numpy()
        sample_cols = [j for j in range(len(columns)) if j not in annotation]
        labels, samples, gene_rows = rows, columns[sample_cols], values[sample_cols]
    else:
        labels, samples, gene_rows = columns, rows, values.T.set_axis(range(len(columns)), axis=0)
    if len(samples) == 0 or len(labels) == 0:
        raise ValueError(f"{path}: the matrix is empty ({len(labels)} genes x {len(samples)} samples).")
    summary = _is_summary(labels)
    keep = ~summary
    if not keep.any():
        raise ValueError(f"{path}: the matrix has no genes (only {int(summary.sum())} summary rows).")
    genes = labels[keep]
    counts = _numeric(gene_rows[keep], path, row_labels=genes, col_labels=samples, what="value")
    summary_values = _numeric(
        gene_rows[summary], path, row_labels=labels[summary], col_labels=samples, what="summary count"
    )
    obs = pd.DataFrame(
        {_summary_name(n): summary_values[i] for i, n in enumerate(labels[summary])},
        index=pd.RangeIndex(len(samples)),
    )
    obs.insert(0, FILE_KEY, path.name)
    return _Table(
        path=path,
        fmt="matrix",
        genes=genes,
        var=_gene_columns(genes, var[keep].reset_index(drop=True)),
        counts=_float32(counts.T, path),
        tpm=None,
        samples=[str(s) for s in samples],
        obs=obs,
        n_dropped=int(summary.sum()),
        dropped=list(labels[summary]),
    )


def _n_fields(path: Path, head: _Head) -> int:
    """Number of columns of the first data row (the header may lack the row-names column)."""
    if len(head.lines) < 2:
        raise ValueError(f"{path}: the matrix is empty (a header but no rows).")
    return len(_split(head.lines[1], head.delimiter))


def _detect_orientation(rows: np.ndarray, columns: np.ndarray, path: Path) -> tuple[str, str, bool]:
    """``(orientation, reason, sure)`` from which axis looks like genes (or samples), else the longer one."""
    ens_r, ens_c = _gene_like(rows), _gene_like(columns)
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


def _numeric(
    frame: pd.DataFrame,
    path: Path,
    *,
    row_labels: np.ndarray,
    col_labels: Sequence[str] | None = None,
    what: str,
) -> np.ndarray:
    """``frame`` (genes x columns) as finite, non-negative float64, or a ValueError showing a bad cell."""
    out = np.empty(frame.shape, dtype=np.float64)
    for j, col in enumerate(frame.columns):
        series = frame[col]
        if pd.api.types.is_bool_dtype(series):  # "True"/"False" parse as booleans, not numbers
            column = np.full(len(series), np.nan)
        elif pd.api.types.is_numeric_dtype(series):
            column = series.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            column = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(column) | (column < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raw = series.iloc[i]
            raw = raw.item() if isinstance(raw, np.generic) else raw
            shown = "an empty value" if pd.isna(raw) or raw == "" else repr(raw)
            where = f"gene {str(row_labels[i])!r}" + ("" if col_labels is None else f", sample {str(col_labels[j])!r}")
            kind = "a negative" if np.isfinite(column[i]) else "a non-numeric or missing"
            raise ValueError(
                f"{path}: {kind} {what}: {shown} at {where} (row {i + 1} of the genes); "
                f"{int(bad.sum())} such values in this column."
            )
        out[:, j] = column
    return out


def _float32(values: np.ndarray, path: Path) -> np.ndarray:
    """``values`` as ``float32`` (what ``X`` holds), logging when integers above 2**24 lose precision."""
    if values.size and values.max() > 2**24:
        logger.warning(
            "bulk: %s has values up to %.0f; float32 keeps integers exactly only up to 2**24 = 16777216.",
            path,
            values.max(),
        )
    return values.astype(np.float32)


def _gene_columns(genes: np.ndarray, var: pd.DataFrame) -> pd.DataFrame:
    """Put the gene labels into ``var``: Ensembl ids as ``gene_id``, anything else as ``gene_name``."""
    var = var.copy()
    if _fraction(genes, _ENSEMBL) >= 0.5:
        var.insert(0, GENE_ID_KEY, genes)
    elif GENE_NAME_KEY not in var:
        var.insert(0, GENE_NAME_KEY, genes)
    else:
        var.insert(0, GENE_ID_KEY, genes)
    return var


def _var_names(var: pd.DataFrame, *, gene_id: str, source: Path) -> pd.Index:
    ids = None
    if GENE_ID_KEY in var and _fraction(var[GENE_ID_KEY].to_numpy(), _ENSEMBL) >= 0.5:
        ids = var[GENE_ID_KEY].astype(str).str.replace(_ENSEMBL_VERSION, r"\1", regex=True)
    if gene_id == "ensembl":
        if ids is None:
            raise ValueError(f"`gene_id='ensembl'`: {source} has no Ensembl gene ids; use gene_id='symbol'.")
        return make_unique(pd.Index(ids), what="gene ids", source=source)
    if GENE_NAME_KEY not in var:
        logger.warning("bulk: %s has no gene names; var_names are its (unversioned) gene ids.", source)
        names = ids if ids is not None else var[GENE_ID_KEY].astype(str)
        return make_unique(pd.Index(names), what="gene ids", source=source)
    names = var[GENE_NAME_KEY].astype(str)
    unnamed = names.str.strip().isin(["", "nan"])
    if unnamed.any():
        fallback = ids if ids is not None else var.get(GENE_ID_KEY, pd.Series("", index=var.index)).astype(str)
        names = names.where(~unnamed, fallback)
        logger.info("bulk: %d genes without a name keep their gene id as var_name.", int(unnamed.sum()))
    return make_unique(pd.Index(names), what="gene names", source=source)


def _check_same_genes(tables: list[_Table]) -> None:
    ref = tables[0]
    for t in tables[1:]:
        if np.array_equal(t.genes, ref.genes):
            continue
        if len(t.genes) != len(ref.genes):
            detail = f"{t.path} has {len(t.genes)} genes, {ref.path} has {len(ref.genes)}"
        else:
            i = int(np.argmax(t.genes != ref.genes))
            detail = f"gene {i + 1} of {t.path} is {str(t.genes[i])!r} where {ref.path} has {str(ref.genes[i])!r}"
        raise ValueError(f"`source`: every file must list the same genes in the same order, but {detail}.")


def _is_summary(labels: np.ndarray) -> np.ndarray:
    series = pd.Series(labels, dtype=object).astype(str)
    return (series.isin(_STAR_SUMMARY) | series.str.startswith("__")).to_numpy(dtype=bool)


def _summary_name(label: str) -> str:
    return label.lstrip("_")


def _sample(labels: np.ndarray, n: int = 2000) -> np.ndarray:
    """At most ``n`` evenly spaced labels: enough to tell what an axis holds."""
    labels = np.asarray(labels, dtype=object)
    return labels if len(labels) <= n else labels[np.linspace(0, len(labels) - 1, n).astype(int)]


def _gene_like(labels: np.ndarray) -> float:
    """Fraction of ``labels`` that are Ensembl gene ids or STAR / HTSeq summary rows."""
    if len(labels) == 0:
        return 0.0
    labels = _sample(labels)
    ensembl = pd.Series(labels, dtype=object).astype(str).str.match(_ENSEMBL).to_numpy(dtype=bool)
    return float(np.mean(_is_summary(labels) | ensembl))


def _fraction(labels: np.ndarray, pattern: re.Pattern) -> float:
    if len(labels) == 0:
        return 0.0
    return float(pd.Series(_sample(labels), dtype=object).astype(str).str.match(pattern).mean())


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
    name = _strip_suffix(path.name, (".gz", ".bz2", ".xz"))
    name = _strip_suffix(name, _COUNT_SUFFIXES)
    return _strip_suffix(name, _TOOL_SUFFIXES) or path.name


def _snake(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", column.strip()).strip("_").lower() or "column"
