"""Bulk RNA-seq: GDC augmented STAR gene counts, STAR ``ReadsPerGene``, HTSeq counts and plain matrices."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger
from bitro._validate import check_choice

from ._bulk_formats import _COMPRESSED_SUFFIXES, _COUNT_SUFFIXES, _head, _read_file, _split, _strip_suffix, _Table
from ._bulk_genes import _var_names
from ._common import check_path, make_unique, sanitize_id

if TYPE_CHECKING:
    import anndata as ad

_GENE_ID_CHOICES = ("symbol", "ensembl")
_VALUE_CHOICES = ("counts", "tpm")
_ORIENTATIONS = ("auto", "genes_x_samples", "samples_x_genes")

_SHEET_PREFIXES = ("gdc_sample_sheet", "gdc_manifest")
_SKIP_FILES = ("annotations.txt", "manifest.txt")
_EXPRESSION_TYPES = ("gene expression quantification", "")  # sample-sheet `Data Type`s of counts files


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


# --- checks and names ----------------------------------------------------------------------------


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


def _snake(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", column.strip()).strip("_").lower() or "column"
