"""Bulk RNA-seq: GDC augmented STAR gene counts, STAR ``ReadsPerGene``, HTSeq counts and plain matrices."""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
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

_GENE_ID_CHOICES = ("symbol", "ensembl")
_VALUE_CHOICES = ("counts", "tpm")
_ORIENTATIONS = ("auto", "genes_x_samples", "samples_x_genes")

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d{6,})\.\d+")
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
_SHEET_PREFIXES = ("gdc_sample_sheet", "gdc_manifest")
_SKIP_FILES = ("annotations.txt", "manifest.txt")
_GDC = "GDC augmented STAR counts"
_EXPRESSION_TYPES = ("gene expression quantification", "")  # sample-sheet `Data Type`s of counts files
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

    GDC, STAR and HTSeq counts must be integers: a file of FPKM, FPKM-UQ or TPM values in one of
    these layouts (legacy GDC ``*.FPKM.txt.gz``) raises a ValueError naming a non-integer value.

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
          (``gdc_sample_sheet*``, ``gdc_manifest*``), ``annotations.txt``, ``MANIFEST.txt``,
          ``logs/`` folders and files whose names contain ``FPKM`` (legacy GDC ``*.FPKM.txt.gz``,
          ``*.FPKM-UQ.txt.gz``; logged) are skipped;
        - a list of counts files;
        - a GDC sample sheet (the TSV the GDC portal's cart gives, columns ``File ID``, ``File Name``,
          ``Data Category``, ``Data Type``, ``Project ID``, ``Case ID``, ``Sample ID``, ``Sample Type``,
          ...) or a GDC manifest (columns ``id``, ``filename``, ``md5``, ``size``, ``state``). Each
          listed file is looked for at ``{folder}/{File ID}/{File Name}`` (the ``gdc-client`` layout)
          and then ``{folder}/{File Name}``, ``{folder}`` being the sheet's folder. ``Sample ID``
          gives the sample ids, ``Case ID`` ``obs["patient_id"]``, and the other columns go to ``obs``
          in snake case (``project_id``, ``sample_type``, ...). Rows of other files are skipped
          and logged: a ``Data Type`` other than ``Gene Expression Quantification`` (slide images,
          clinical files, ...), or a file name that is not a counts table as in a directory (above),
          so the sheet of a cart holding expression files and slides (see :func:`bitro.io.cohort`) reads.

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
            if len(table.samples) != 1:
                raise ValueError(
                    f"`source`: {label} lists {path}, which holds {len(table.samples)} samples; "
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
        X, layers = tpm_values, {K.COUNTS_LAYER: counts}
    else:
        X, layers = counts, ({K.TPM_LAYER: tpm_values} if has_tpm else {})
    adata = ad.AnnData(X=X, obs=obs, var=var, layers=layers)

    n_dropped = sum(len(t.dropped) for t in tables)
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


def _is_table_name(name: str) -> bool:
    return _strip_suffix(name.lower(), _COMPRESSED_SUFFIXES).endswith(_COUNT_SUFFIXES)


def _list_dir(folder: Path) -> list[Path]:
    subfolders = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "logs"]
    files = sorted(
        p
        for d in [folder, *subfolders]
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _SKIP_FILES and _is_table_name(p.name)
    )
    for p in files:
        if p.name.lower().startswith(_SHEET_PREFIXES):
            logger.info("bulk: skipping %s in %s; pass it as `source` to take sample ids from it.", p.name, folder)
    fpkm = [p for p in files if "fpkm" in p.name.lower()]  # legacy GDC *.FPKM.txt.gz, *.FPKM-UQ.txt.gz
    if fpkm:
        logger.info("bulk: skipping %d FPKM files in %s (e.g. %s): not counts.", len(fpkm), folder, fpkm[0].name)
    return [p for p in files if not p.name.lower().startswith(_SHEET_PREFIXES) and p not in fpkm]


def _read_sheet(path: Path) -> list[tuple[Path, dict]] | None:
    """Entries of a GDC sample sheet or manifest (its counts files only), or ``None`` when ``path`` is not one."""
    head = _head(path)
    header = _split(head.first, head.delimiter) if head.first else []
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
        skiprows=len(head.comments),
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    counts = sheet[file_col].map(lambda name: _is_table_name(name) and "fpkm" not in name.lower())
    if "Data Type" in sheet:
        counts &= sheet["Data Type"].str.strip().str.lower().isin(_EXPRESSION_TYPES)
    if not counts.any():
        raise ValueError(
            f"`source`: the sample sheet {path} lists no counts files (`Data Type` 'Gene Expression Quantification', "
            "*.tsv, *.txt, ... and no FPKM)."
        )
    if not counts.all():
        logger.info(
            "bulk: skipping %d of the %d rows of %s that list no counts file (e.g. %r).",
            int((~counts).sum()),
            len(sheet),
            path,
            sheet.loc[~counts, file_col].iloc[0],
        )
    rename = {"Sample ID": K.SAMPLE_ID_KEY, "Case ID": K.PATIENT_ID_KEY, "id": "file_id"}
    skip = {file_col, "md5", "size", "state"}
    entries = []
    for _, row in sheet[counts].iterrows():
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
    return pd.Series(labels, dtype=object).astype(str).str.match(_SUMMARY).to_numpy(dtype=bool)


def _fraction(labels: np.ndarray, pattern: re.Pattern) -> float:
    """Fraction of ``labels`` matching ``pattern``, of at most 2000 evenly spaced ones (enough to tell an axis)."""
    if len(labels) == 0:
        return 0.0
    some = np.asarray(labels, dtype=object)[np.linspace(0, len(labels) - 1, min(len(labels), 2000)).astype(int)]
    return float(pd.Series(some, dtype=object).astype(str).str.match(pattern).mean())


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


def _snake(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", column.strip()).strip("_").lower() or "column"
