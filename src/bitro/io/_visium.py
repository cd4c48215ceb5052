"""Visium (Space Ranger 1.x-3.x) into SpatialData: a checked wrapper over ``spatialdata_io.visium``."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_float

from ._common import check_path, make_unique, sanitize_id
from ._spaceranger import (
    _GEX,
    HIRES_IMAGE_FILE,
    LOWRES_IMAGE_FILE,
    MTX_FILE,
    SCALEFACTORS_FILE,
    _decode,
    _match_barcodes,
    _peek_counts,
    _read_positions,
    _read_scalefactors,
    _resolve,
    _resolve_counts,
    _resolve_positions,
    _under,
)
from ._visium_mpp import _pixel_size, _rgb_in_um, _um_per_pixel

VISIUM_SPOT_DIAMETER_UM = 55.0
"""Diameter of a Visium capture spot (10x Genomics: 55 µm spots, 100 µm centre to centre)."""

LOWRES_IMAGE_SUFFIX = "_lowres_image"


def visium(
    path: str | os.PathLike,
    *,
    dataset_id: str | None = None,
    counts_file: str | os.PathLike = "filtered_feature_bc_matrix.h5",
    fullres_image_file: str | os.PathLike | None = None,
    tissue_positions_file: str | os.PathLike | None = None,
    scalefactors_file: str | os.PathLike | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = VISIUM_SPOT_DIAMETER_UM,
    gex_only: bool = True,
    imread_kwargs: Mapping[str, Any] | None = None,
    image_models_kwargs: Mapping[str, Any] | None = None,
):
    """Read a Space Ranger output folder (Visium) into :class:`~spatialdata.SpatialData`.

    A wrapper over ``spatialdata_io.visium`` that checks the inputs first and says what is wrong
    with them: Space Ranger 1.x (headerless ``tissue_positions_list.csv``), 2.x and 3.x
    (``tissue_positions.csv`` with a header); counts as ``.h5`` (also probe-level, e.g.
    ``raw_probe_bc_matrix.h5``) or as a ``filtered_feature_bc_matrix/`` mtx folder; images that are
    missing are skipped with a warning. The element names are spatialdata-io's.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder: the counts file and a ``spatial/`` folder with the spot
        positions, ``scalefactors_json.json`` and the ``tissue_hires_image.png`` /
        ``tissue_lowres_image.png`` images.
    dataset_id
        Prefix of the element names and name of the coordinate system. Default: the library id from a
        ``{library_id}_{counts_file}`` file name, else the ``library_ids`` attribute of an ``.h5``
        counts file, else the name of ``path``. Characters outside ``[A-Za-z0-9_.-]`` are replaced.
    counts_file
        Counts, relative to ``path`` or absolute: a 10x ``.h5`` file (``filtered_feature_bc_matrix.h5``,
        ``raw_feature_bc_matrix.h5``, ``raw_probe_bc_matrix.h5``, ...), a 10x mtx folder
        (``filtered_feature_bc_matrix``) or its ``matrix.mtx.gz``. A file ``{library_id}_{counts_file}``
        is found when ``counts_file`` itself is not there.
    fullres_image_file
        The full-resolution image given to Space Ranger (relative to ``path`` or absolute), read as
        ``{dataset_id}_full_image``. It must exist when given.
    tissue_positions_file
        Spot positions, relative to ``path`` or absolute, named ``tissue_positions.csv`` or
        ``tissue_positions_list.csv`` (what spatialdata-io reads). Default: the one in ``spatial/``.
    scalefactors_file
        Space Ranger's scale factors JSON, relative to ``path`` or absolute. Default:
        ``spatial/scalefactors_json.json``.
    mpp
        Pixel size of the full-resolution image in µm per pixel. Default: measured as the 100 µm
        spot pitch in full-resolution pixels (spots two array columns apart on one array row); where
        that cannot be measured, 65 µm / ``spot_diameter_fullres`` (10x's definition of that value),
        with a warning.
    spot_diameter_um
        Diameter of the spot circles in µm (Visium: 55), drawn with a radius of
        ``spot_diameter_um / 2 / mpp`` full-resolution pixels. ``None`` keeps spatialdata-io's radius,
        ``spot_diameter_fullres / 2`` (Space Ranger's 65 µm "theoretical" spot).
    gex_only
        Keep only features of type ``"Gene Expression"``.
    imread_kwargs
        Keyword arguments for ``dask_image.imread.imread``.
    image_models_kwargs
        Keyword arguments for ``spatialdata.models.Image2DModel`` of the full-resolution image
        (e.g. ``chunks``, ``scale_factors``).

    Returns
    -------
    :class:`spatialdata.SpatialData`
        With, for ``dataset_id`` ``sid``:

        - shapes ``sid``: spot circles in full-resolution pixels, index ``spot_id``;
        - images ``sid_full_image`` / ``sid_hires_image`` / ``sid_lowres_image``, those that exist;
        - table ``"table"``: spots x genes, counts in ``X`` (CSR), ``obs`` ``in_tissue``, ``array_row``,
          ``array_col``, ``spot_id``, ``region`` (``= sid``), ``obsm["spatial"]`` (full-resolution
          pixels, x then y), gene ids in ``var["gene_ids"]`` and unique ``var_names``.

        Coordinate systems: ``sid`` in µm (as every bitro reader; spatialdata-io's full-resolution
        pixels scaled by ``mpp``), and spatialdata-io's ``sid_downscaled_hires`` /
        ``sid_downscaled_lowres`` in the pixels of those images; there is no ``"global"``. Images are
        RGB (an alpha channel is dropped). ``attrs["bitro"]`` records ``image_key`` (the
        highest-resolution image present) and its ``image_mpp``, ``spots_key``, ``table_key``,
        ``coordinate_system`` (``sid``), ``sample_id`` and ``mpp`` (µm per full-resolution pixel).

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.io.visium("outs", dataset_id="slide1")  # doctest: +SKIP
    >>> sdata = bt.io.visium("outs", counts_file="filtered_feature_bc_matrix")  # doctest: +SKIP
    """
    path = check_path(path, name="path", kind="dir")
    if dataset_id is not None and (not isinstance(dataset_id, str) or not dataset_id):
        raise TypeError(f"`dataset_id` must be a non-empty string or None, got {dataset_id!r}.")
    if mpp is not None:
        mpp = check_float(mpp, "mpp", min_value=0, strict_min=True)
    if spot_diameter_um is not None:
        spot_diameter_um = check_float(spot_diameter_um, "spot_diameter_um", min_value=0, strict_min=True)
    if not isinstance(gex_only, bool):
        raise TypeError(f"`gex_only` must be True or False, got {gex_only!r}.")

    counts, library_id = _resolve_counts(path, counts_file)
    positions_file = _resolve_positions(path, tissue_positions_file)
    scalefactors_path = _resolve(path, scalefactors_file, Path("spatial") / SCALEFACTORS_FILE, "scalefactors_file")
    fullres = None
    if fullres_image_file is not None:
        fullres = check_path(_under(path, fullres_image_file), name="fullres_image_file", kind="file")

    positions = _read_positions(positions_file)
    scalefactors = _read_scalefactors(scalefactors_path)
    if spot_diameter_um is None and "spot_diameter_fullres" not in scalefactors:
        raise ValueError(
            f"`spot_diameter_um=None` keeps Space Ranger's spot size, but {scalefactors_path} has no "
            "'spot_diameter_fullres'; pass `spot_diameter_um` instead."
        )
    peek = _peek_counts(counts)
    _match_barcodes(peek["barcodes"], positions, counts=counts, positions_file=positions_file)

    if dataset_id is None:
        dataset_id = library_id or peek["library_id"] or path.resolve().name
        logger.info(
            "visium: `dataset_id` %r taken from %s", dataset_id, counts if library_id or peek["library_id"] else path
        )
    dataset_id = sanitize_id(dataset_id, name="dataset_id")

    mpp, how = _pixel_size(
        mpp, positions, scalefactors, positions_file=positions_file, scalefactors_file=scalefactors_path
    )
    logger.info("visium %s: pixel size %.4f µm/px %s", dataset_id, mpp, how)

    _check_images(path)
    sdata = _read_with_spatialdata_io(
        path,
        dataset_id=dataset_id,
        counts=counts,
        positions_file=positions_file,
        scalefactors_file=scalefactors_path,
        scalefactors=scalefactors,
        fullres=fullres,
        gex_only=gex_only,
        imread_kwargs=dict(imread_kwargs or {}),
        image_models_kwargs=dict(image_models_kwargs or {}),
        placeholder_diameter=(spot_diameter_um or VISIUM_SPOT_DIAMETER_UM) / mpp,
    )
    table = sdata.tables[K.TABLE_KEY]
    _check_table(table, peek, counts=counts, gex_only=gex_only)

    # spot circles: the physical spot, unless asked to keep Space Ranger's (65 µm) theoretical spot
    if spot_diameter_um is not None:
        radius = spot_diameter_um / 2 / mpp
        logger.info(
            "visium %s: spot radius %.3f px (%g µm spots at %.4f µm/px)", dataset_id, radius, spot_diameter_um, mpp
        )
    else:
        radius = float(scalefactors["spot_diameter_fullres"]) / 2
        logger.info("visium %s: spot radius %.3f px (spot_diameter_fullres / 2)", dataset_id, radius)
    sdata.shapes[dataset_id]["radius"] = radius

    image_key = _image_key(sdata, dataset_id, path=path, fullres=fullres)
    _rgb_in_um(sdata, dataset_id, mpp=mpp)
    _sdata.record(
        sdata,
        **{
            K.ATTR_IMAGE: image_key,
            K.ATTR_IMAGE_MPP: _um_per_pixel(sdata[image_key], dataset_id) if image_key else None,
            K.ATTR_SPOTS: dataset_id,
            K.ATTR_TABLE: K.TABLE_KEY,
            K.ATTR_COORDINATE_SYSTEM: dataset_id,
            K.ATTR_SAMPLE_ID: dataset_id,
            K.ATTR_MPP: float(mpp),
            K.ATTR_TECHNOLOGY: "Visium",
        },
    )
    logger.info(
        "visium %s: %d spots x %d features, %.0f counts, image %s, from %s",
        dataset_id,
        table.n_obs,
        table.n_vars,
        float(table.X.sum()),
        image_key,
        counts,
    )
    return sdata


# --- reading ---------------------------------------------------------------------------------------


def _as_counts_arg(path: Path, counts: Path) -> str:
    """``counts_file`` for spatialdata-io: a path relative to ``path`` that contains a ``/``.

    spatialdata-io matches ``counts_file`` against the names in ``path`` to guess a library id and may
    then pick another file; a name with a ``/`` matches none, so it reads exactly this file.
    """
    target = counts / MTX_FILE if counts.is_dir() else counts
    try:
        rel = Path(os.path.relpath(target, path)).as_posix()
    except ValueError:  # another drive on Windows
        return target.resolve().as_posix()
    return rel if "/" in rel else f"./{rel}"


def _read_with_spatialdata_io(
    path: Path,
    *,
    dataset_id: str,
    counts: Path,
    positions_file: Path,
    scalefactors_file: Path,
    scalefactors: dict,
    fullres: Path | None,
    gex_only: bool,
    imread_kwargs: dict,
    image_models_kwargs: dict,
    placeholder_diameter: float,
):
    import spatialdata_io

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # bitro warns about duplicated gene names itself, naming the file; spatialdata-io makes them unique
        warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
        # spatialdata-io writes `region` as strings and TableModel converts it; nothing is lost
        warnings.filterwarnings(
            "ignore", message="Converting `region_key: region` to categorical", category=UserWarning
        )
        if "spot_diameter_fullres" not in scalefactors:
            # spatialdata-io needs it for the circles; bitro sets the radius itself afterwards
            scalefactors_file = Path(tmp) / SCALEFACTORS_FILE
            scalefactors_file.write_text(json.dumps({**scalefactors, "spot_diameter_fullres": placeholder_diameter}))
        counts_arg = _as_counts_arg(path, counts)
        try:
            re.compile(f".*{counts_arg}")
        except re.error:
            # spatialdata-io compiles `counts_file` into a regular expression: link it under a plain name
            link = Path(tmp) / ("counts" if counts.is_dir() else "counts.h5")
            try:
                link.symlink_to(counts.resolve(), target_is_directory=counts.is_dir())
            except OSError:  # no symlinks (Windows without privileges): copy
                (shutil.copytree if counts.is_dir() else shutil.copy)(counts, link)
            counts_arg = _as_counts_arg(path, link)
        return spatialdata_io.visium(
            path,
            dataset_id=dataset_id,
            counts_file=counts_arg,
            fullres_image_file=None if fullres is None else fullres.resolve(),
            tissue_positions_file=positions_file.resolve(),
            scalefactors_file=scalefactors_file.resolve(),
            var_names_make_unique=True,
            imread_kwargs=imread_kwargs,
            image_models_kwargs=image_models_kwargs,
            gex_only=gex_only,
        )


def _check_images(path: Path) -> None:
    """Space Ranger's PNGs read whole: a file cut short (a partial copy) is named here, not deep in pims."""
    from PIL import Image

    for name in (HIRES_IMAGE_FILE, LOWRES_IMAGE_FILE):
        file = path / "spatial" / name
        if not file.is_file():
            continue
        try:
            with Image.open(file) as image:
                image.verify()  # chunk by chunk, CRCs checked; no pixels decoded
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated / corrupt files
            raise ValueError(
                f"{file}: not a readable image ({err}); a partial copy? Copy it again from Space Ranger's outs/spatial."
            ) from err


def _check_table(table, peek: dict, *, counts: Path, gex_only: bool) -> None:
    """CSR counts, unique var names (warning about duplicates, naming the file), a matrix with counts in it."""
    from anndata.utils import make_index_unique
    from scipy import sparse

    if table.n_vars == 0:
        what = "no 'Gene Expression' features (pass `gex_only=False` to keep the others)" if gex_only else "no features"
        raise ValueError(f"`counts_file`: {counts} has {what}.")
    if not table.obs_names.equals(peek["barcodes"]):
        raise RuntimeError(f"{counts}: spatialdata-io returned other spots than the file lists; please report this.")
    names = pd.Index(peek["names"])
    if gex_only:
        names = names[np.asarray(peek["types"]) == _GEX]
    if len(names) == table.n_vars and make_index_unique(names).equals(table.var_names):
        table.var_names = make_unique(names, what="feature names", source=counts)
    elif not table.var_names.is_unique:  # not expected: spatialdata-io makes them unique
        table.var_names = make_unique(table.var_names, what="feature names", source=counts)
    # Space Ranger 1.x h5 attributes are arrays of bytes; zarr v3 has no stable encoding for them
    for meta in table.uns.get("spatial", {}).values():
        for key, value in list(meta.get("metadata", {}).items()):
            if isinstance(value, bytes | np.ndarray):
                meta["metadata"][key] = ", ".join(_decode(np.atleast_1d(value)))
    if sparse.issparse(table.X) and table.X.format != "csr":
        table.X = table.X.tocsr()
    total = float(table.X.sum())
    if total == 0:
        raise ValueError(f"`counts_file`: {counts} holds no counts (every entry is 0).")
    if peek["probe_level"]:
        logger.info(
            "%s: probe-level matrix; features are probes, var['gene_ids'] and var['gene_name'] name their genes.",
            counts,
        )


def _image_key(sdata, dataset_id: str, *, path: Path, fullres: Path | None) -> str | None:
    """The highest-resolution image read; warn about a missing hires (or any) image."""
    keys = [dataset_id + suffix for suffix in (K.FULL_IMAGE_SUFFIX, K.HIRES_IMAGE_SUFFIX, LOWRES_IMAGE_SUFFIX)]
    present = [key for key in keys if key in sdata.images]
    hires = path / "spatial" / HIRES_IMAGE_FILE
    if fullres is None and not hires.is_file():
        instead = f"using {present[0]}" if present else "no image was read"
        warnings.warn(f"{hires} does not exist; {instead}.", UserWarning, stacklevel=3)
    elif not present:
        warnings.warn(f"{path}: no image was read.", UserWarning, stacklevel=3)
    return present[0] if present else None
