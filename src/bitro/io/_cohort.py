"""Join a bulk RNA-seq table with whole-slide images: one SpatialData per slide plus the cohort AnnData."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

from ._common import check_path, read_table, sanitize_id

if TYPE_CHECKING:
    from anndata import AnnData

_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".ome.tif", ".ome.tiff", ".jpg", ".jpeg", ".png")
_TCGA = re.compile(r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-(\d{2}[A-Z]?)", re.IGNORECASE)


def tcga_sample(barcode: str) -> str | None:
    """The sample-level part of a TCGA barcode (``TCGA-CR-7395-01A``), or ``None`` if there is none."""
    match = _TCGA.search(str(barcode))
    return f"{match.group(1)}-{match.group(2)}".upper() if match else None


def tcga_patient(barcode: str) -> str | None:
    """The patient (case) part of a TCGA barcode (``TCGA-CR-7395``), or ``None``."""
    match = _TCGA.search(str(barcode))
    return match.group(1).upper() if match else None


def cohort(
    expression: AnnData | str | os.PathLike | Sequence[str | os.PathLike],
    slides: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    sample_key: str | None = None,
    patient_key: str | None = None,
    mpp: float | Mapping[str, float] | None = None,
):
    """Pair bulk expression profiles with their whole-slide images.

    Each slide becomes a SpatialData (as :func:`bitro.io.wsi` reads it) with the slide's
    expression as a 1 x genes table annotating its tissue polygon, and the cohort AnnData keeps
    one row per paired sample with its ``patient_id`` for patient-grouped splits. Samples are
    matched on their id (a slide's file name, with or without its extension: ``S1`` or ``S1.svs``),
    or on the sample-level TCGA barcode (``TCGA-CR-7395-01A``) found in
    slide file names such as ``TCGA-CR-7395-01A-01-TS1.<uuid>.svs``. Samples without a slide and
    slides without expression are logged and listed in ``cohort.uns["bitro_cohort"]``.

    Parameters
    ----------
    expression
        Samples x genes :class:`anndata.AnnData` (e.g. from :func:`bitro.io.bulk`), or anything
        :func:`bitro.io.bulk` reads.
    slides
        A mapping ``{sample id: slide path}``; a list of slide paths; a folder of slides; or a
        GDC sample sheet (``.tsv`` with ``File Name`` and ``Sample ID`` columns, slides looked up
        next to it).
    sample_key
        ``expression.obs`` column with the sample ids (default: ``obs_names``).
    patient_key
        ``expression.obs`` column with the patient ids (default: the TCGA case barcode when the
        ids are TCGA barcodes, else the sample id: each sample its own patient).
    mpp
        µm per pixel for slides whose files do not record it: one value for all, or per sample id.

    Returns
    -------
    tuple[list[spatialdata.SpatialData], anndata.AnnData]
        The paired slides (in the cohort's order) and the cohort (paired samples x genes; ``obs``
        ``sample_id``, ``patient_id``, ``slide_id``, ``slide_path``).

    Examples
    --------
    >>> import bitro as bt
    >>> expr = bt.io.bulk("gdc_counts/")  # doctest: +SKIP
    >>> slides, cohort = bt.io.cohort(expr, "slides/", mpp=0.5)  # doctest: +SKIP
    """
    import anndata as ad
    from anndata.utils import make_index_unique
    from scipy import sparse
    from spatialdata.models import TableModel

    from ._bulk import bulk
    from ._wsi import wsi

    if not isinstance(expression, ad.AnnData):
        expression = bulk(expression)
    if expression.n_obs == 0:
        raise ValueError("`expression` has no samples.")
    samples = _column(expression, sample_key, "sample_key")
    patients = _patients(expression, patient_key, samples)
    paths = _slide_paths(slides)

    by_sample = _match(samples, paths)
    unmatched_samples = [s for s in samples if s not in by_sample]
    used = set(by_sample.values())
    unmatched_slides = [str(p) for _, p in paths if p not in used]
    if unmatched_samples:
        logger.warning("%d samples have no slide: %s", len(unmatched_samples), unmatched_samples[:10])
    if unmatched_slides:
        logger.warning("%d slides have no expression: %s", len(unmatched_slides), unmatched_slides[:10])
    if not by_sample:
        raise ValueError(
            f"No sample of `expression` (e.g. {samples[:3]}) matches a slide (e.g. {list(paths)[:3]}); "
            "match is by sample id (a slide's file name, with or without its extension) or by sample-level TCGA "
            "barcode."
        )

    out, rows = [], []
    for i, sample in enumerate(samples):
        if sample not in by_sample:
            continue
        sample_id = sanitize_id(sample, name="sample id")
        slide_mpp = mpp.get(sample) if isinstance(mpp, Mapping) else mpp
        sdata = wsi(by_sample[sample], sample_id=sample_id, mpp=slide_mpp, tissue=True)
        tissue_key = sdata.attrs[K.ATTRS_KEY].get(K.ATTR_TISSUE)
        if tissue_key is None:
            raise ValueError(
                f"{by_sample[sample]}: no tissue found on the slide, so its expression has nothing to annotate."
            )
        row = expression[i : i + 1]
        table = ad.AnnData(
            X=sparse.csr_matrix(row.X) if sparse.issparse(row.X) else np.asarray(row.X),
            var=expression.var.copy(),
            obs=pd.DataFrame(
                {
                    K.TISSUE_ID_KEY: [int(sdata[tissue_key].index[0])],
                    K.SAMPLE_ID_KEY: [sample],
                    K.PATIENT_ID_KEY: [patients[i]],
                    K.REGION_KEY: pd.Categorical([tissue_key]),
                },
                index=[sample_id],
            ),
            layers={k: v[i : i + 1] for k, v in expression.layers.items()},
        )
        sdata.tables[K.TABLE_KEY] = TableModel.parse(
            table, region=tissue_key, region_key=K.REGION_KEY, instance_key=K.TISSUE_ID_KEY
        )
        _sdata.record(sdata, **{K.ATTR_TABLE: K.TABLE_KEY, K.PATIENT_ID_KEY: patients[i]})
        out.append(sdata)
        rows.append((i, sample_id, patients[i], str(by_sample[sample])))

    index = [r[0] for r in rows]
    result = expression[index].copy()
    result.obs[K.SAMPLE_ID_KEY] = [samples[i] for i in index]
    result.obs[K.PATIENT_ID_KEY] = pd.Categorical([r[2] for r in rows])
    result.obs[K.SLIDE_KEY] = [r[1] for r in rows]
    result.obs[K.SLIDE_PATH_KEY] = [r[3] for r in rows]
    # dicts, not lists: zarr reads string lists back as arrays that numpy < 2.1 cannot deep-copy
    result.uns[K.COHORT_UNS_KEY] = {
        "samples_without_slide": dict.fromkeys(unmatched_samples, "no slide"),
        "slides_without_expression": dict(
            zip(make_index_unique(pd.Index([Path(p).name for p in unmatched_slides])), unmatched_slides, strict=True)
        ),
    }
    logger.info(
        "cohort: %d samples paired with slides (%d patients)", len(rows), result.obs[K.PATIENT_ID_KEY].nunique()
    )
    return out, result


def _column(adata, key: str | None, name: str) -> list[str]:
    if key is not None and key not in adata.obs:
        raise KeyError(f"`{name}`: {key!r} is not a column of expression.obs (has {list(adata.obs.columns)}).")
    values = pd.Series(adata.obs_names if key is None else adata.obs[key]).astype(str)
    if values.duplicated().any():  # two rows would pair with one slide, as two samples of one id
        where = f"`{name}`: {key!r} has" if key is not None else "`expression`: its obs_names have"
        raise ValueError(f"{where} duplicated sample ids: {values[values.duplicated()].unique()[:5].tolist()}.")
    return values.tolist()


def _patients(adata, key: str | None, samples: list[str]) -> list[str]:
    if key is not None:
        return _column_any(adata, key, "patient_key")
    tcga = [tcga_patient(s) for s in samples]
    return [t if t is not None else s for t, s in zip(tcga, samples, strict=True)]


def _column_any(adata, key: str, name: str) -> list[str]:
    if key not in adata.obs:
        raise KeyError(f"`{name}`: {key!r} is not a column of expression.obs (has {list(adata.obs.columns)}).")
    return adata.obs[key].astype(str).tolist()


def _slide_paths(slides) -> list[tuple[str, Path]]:
    """``(key, path)`` pairs: key is the sample id given (mapping, sheet) or the file name (list, folder)."""
    if isinstance(slides, Mapping):
        return [(str(k), check_path(v, name=f"slides[{k!r}]")) for k, v in slides.items()]
    if isinstance(slides, str | os.PathLike):
        path = check_path(slides, name="slides", kind="any")
        if path.is_dir():
            # the folder itself, and one level down (gdc-client saves {file id}/{file name})
            found = sorted(
                p
                for p in [*path.iterdir(), *path.glob("*/*")]
                if p.is_file() and p.name.lower().endswith(_SLIDE_SUFFIXES)
            )
            # hidden files are not slides: macOS writes ._S1.svs (AppleDouble) beside S1.svs on other disks
            hidden = [p for p in found if any(part.startswith(".") for part in p.relative_to(path).parts)]
            if hidden:
                logger.info(
                    "%s: %d hidden files skipped (names starting with '.', e.g. macOS ._ files)", path, len(hidden)
                )
            found = [p for p in found if p not in hidden]
            if not found:
                raise ValueError(
                    f"`slides`: no slide files ({', '.join(_SLIDE_SUFFIXES)}) in {path} or its subfolders"
                    + (f" ({len(hidden)} hidden files skipped)." if hidden else ".")
                )
            return [(p.name, p) for p in found]
        if path.suffix.lower() in (".tsv", ".txt", ".csv"):
            return _sample_sheet(path)
        return [(path.name, path)]
    if isinstance(slides, Sequence):
        return [(Path(p).name, check_path(p, name="slides")) for p in slides]
    raise TypeError(
        f"`slides` must be a mapping, a list of paths, a folder or a sample sheet, got {type(slides).__name__}."
    )


def _sample_sheet(path: Path) -> list[tuple[str, Path]]:
    sheet = read_table(path, what="a GDC sample sheet", sep="," if path.suffix.lower() == ".csv" else "\t")
    need = {"File Name", "Sample ID"}
    if not need <= set(sheet.columns):
        raise ValueError(f"{path}: a sample sheet needs the columns {sorted(need)} (has {list(sheet.columns)}).")
    out, n_other, n_missing = [], 0, 0
    for name, sample in zip(sheet["File Name"], sheet["Sample ID"], strict=True):
        if not str(name).lower().endswith(_SLIDE_SUFFIXES):
            n_other += 1  # expression files and the like: bt.io.bulk reads those
            continue
        found = next((c for c in (path.parent / name, *path.parent.glob(f"*/{name}")) if c.is_file()), None)
        if found is None:
            n_missing += 1
            logger.warning("%s: slide %s is listed but not found next to the sheet", path, name)
            continue
        out.append((str(sample), found))
    logger.info(
        "%s: %d slides found, %d listed but missing, %d rows that are not slides", path, len(out), n_missing, n_other
    )
    return out


def _match(samples: list[str], paths: list[tuple[str, Path]]) -> dict[str, Path]:
    """Sample -> slide: by the key, the file name without its extension, or the TCGA barcode; several -> first, logged.

    A slide ``S1.svs`` in a list or folder matches the sample ``S1`` (the sample id ``predict_slides`` gives it)
    as well as ``S1.svs``; else both sides' sample-level TCGA barcodes are compared.
    """
    from ._wsi import _stem

    by_key: dict[str, list[Path]] = {}
    for key, path in paths:
        by_key.setdefault(key, []).append(path)
        if key == path.name and _stem(path) != key:
            by_key.setdefault(_stem(path), []).append(path)
        barcode = tcga_sample(key) or tcga_sample(path.name)
        if barcode and barcode != key:
            by_key.setdefault(barcode, []).append(path)
    out = {}
    for sample in samples:
        hits = by_key.get(sample) or by_key.get(tcga_sample(sample) or "", [])
        hits = list(dict.fromkeys(hits))
        if len(hits) > 1:
            logger.warning(
                "sample %s matches %d slides (%s); using %s", sample, len(hits), [h.name for h in hits], hits[0].name
            )
        if hits:
            out[sample] = hits[0]
    return out
