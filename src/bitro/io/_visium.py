"""Visium (Space Ranger 1.x-3.x) into SpatialData: a checked wrapper over ``spatialdata_io.visium``."""

from __future__ import annotations

import gzip
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

VISIUM_SPOT_DIAMETER_UM = 55.0
"""Diameter of a Visium capture spot (10x Genomics: 55 µm spots, 100 µm centre to centre)."""

VISIUM_SPOT_PITCH_UM = 100.0
"""Centre-to-centre distance of neighbouring Visium spots; two array columns apart on one array row."""

SPACERANGER_SPOT_DIAMETER_UM = 65.0
"""What Space Ranger's ``spot_diameter_fullres`` spans according to 10x's documentation ("a theoretical 65 µm
spot"); only used for the pixel size when the spot pitch cannot be measured."""

POSITIONS_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")
"""Space Ranger >= 2.0 (with a header) and Space Ranger 1.x (without) names of the spot positions file."""

SCALEFACTORS_FILE = "scalefactors_json.json"
HIRES_IMAGE_FILE = "tissue_hires_image.png"
LOWRES_IMAGE_FILE = "tissue_lowres_image.png"
MTX_FILE = "matrix.mtx.gz"
LOWRES_IMAGE_SUFFIX = "_lowres_image"

_POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
_GEX = "Gene Expression"


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


# --- inputs ----------------------------------------------------------------------------------------


def _under(path: Path, name: str | os.PathLike) -> Path:
    if not isinstance(name, str | os.PathLike):
        raise TypeError(f"expected a path, got {type(name).__name__} {name!r}.")
    name = Path(name).expanduser()
    return name if name.is_absolute() else path / name


def _resolve(path: Path, given, default: Path, arg: str) -> Path:
    if given is not None:
        return check_path(_under(path, given), name=arg, kind="file")
    file = path / default
    if not file.is_file():
        raise FileNotFoundError(
            f"`{arg}`: {file} does not exist; `bt.io.visium` needs Space Ranger's spatial/ folder in `path`."
        )
    return file


def _resolve_counts(path: Path, counts_file) -> tuple[Path, str | None]:
    """The counts ``.h5`` file or mtx folder, and the library id of a ``{library_id}_{counts_file}`` name."""
    if not isinstance(counts_file, str | os.PathLike):
        raise TypeError(f"`counts_file` must be a path, got {type(counts_file).__name__} {counts_file!r}.")
    file = _under(path, counts_file)
    library_id = None
    if not file.exists() and not Path(counts_file).is_absolute() and len(Path(counts_file).parts) == 1:
        prefixed = sorted(path.glob(f"*_{Path(counts_file).name}"))
        if len(prefixed) > 1:
            raise ValueError(
                f"`counts_file`: {file} does not exist and several files end in _{Path(counts_file).name}: "
                f"{[p.name for p in prefixed]}; pass one of them as `counts_file`."
            )
        if prefixed:
            file = prefixed[0]
            library_id = file.name[: -len(f"_{Path(counts_file).name}")]
    file = check_path(file, name="counts_file", kind="any")
    if file.is_dir():
        if not (file / MTX_FILE).is_file():
            legacy = (
                " (uncompressed Cell Ranger 2 mtx folders are not supported)" if (file / "matrix.mtx").exists() else ""
            )
            raise FileNotFoundError(f"`counts_file`: {file / MTX_FILE} does not exist{legacy}.")
        for name in ("barcodes.tsv.gz", "features.tsv.gz"):
            check_path(file / name, name="counts_file", kind="file")
        return file, library_id
    if file.name == MTX_FILE:
        return _resolve_counts(path, file.parent)[0], library_id
    if file.suffix != ".h5":
        raise ValueError(
            f"`counts_file`: {file} is neither a 10x .h5 file nor a mtx folder (e.g. filtered_feature_bc_matrix/)."
        )
    return file, library_id


def _resolve_positions(path: Path, tissue_positions_file) -> Path:
    if tissue_positions_file is not None:
        file = check_path(_under(path, tissue_positions_file), name="tissue_positions_file", kind="file")
        if file.name not in POSITIONS_FILES:
            raise ValueError(
                f"`tissue_positions_file`: {file} must be named {' or '.join(POSITIONS_FILES)} "
                "(spatialdata-io tells the Space Ranger version from the name); rename or copy it."
            )
        return file
    spatial = path / "spatial"
    found = [spatial / name for name in POSITIONS_FILES if (spatial / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"`tissue_positions_file`: neither {' nor '.join(POSITIONS_FILES)} is in {spatial}. `bt.io.visium` "
            "needs Space Ranger's spatial/ folder; read a counts matrix without spot positions (e.g. "
            "raw_probe_bc_matrix.h5 alone) with scanpy.read_10x_h5."
        )
    if len(found) > 1:
        logger.warning("%s holds both %s; reading %s.", spatial, " and ".join(POSITIONS_FILES), found[0].name)
    return found[0]


def _read_positions(file: Path) -> pd.DataFrame:
    """Spot positions indexed by barcode; a header is read when present (also in Space Ranger 1.x files)."""
    try:
        raw = pd.read_csv(file, header=None, dtype=str)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{file}: the spot positions file is empty.") from None
    if raw.shape[1] != 6:
        raise ValueError(f"{file}: expected 6 columns (barcode, {', '.join(_POSITION_COLUMNS)}), found {raw.shape[1]}.")
    if "in_tissue" in raw.iloc[0].tolist():
        raw = raw.iloc[1:]
    elif file.name == POSITIONS_FILES[0]:
        # spatialdata-io reads the first line of tissue_positions.csv as its header
        raise ValueError(f"{file}: a Space Ranger >= 2.0 positions file needs its header line (barcode,in_tissue,...).")
    if raw.empty:
        raise ValueError(f"{file}: the spot positions file lists no spots.")
    positions = raw.set_index(0)
    positions.index = pd.Index(positions.index.astype(str), name="barcode")
    positions.columns = _POSITION_COLUMNS
    try:
        positions = positions.apply(pd.to_numeric)
    except ValueError as e:
        raise ValueError(f"{file}: non-numeric spot positions ({e}).") from None
    if positions.isna().any().any():
        raise ValueError(f"{file}: {int(positions.isna().any(axis=1).sum())} spots have missing positions.")
    if not positions.index.is_unique:
        dup = positions.index[positions.index.duplicated()].unique()
        raise ValueError(f"{file}: {len(dup)} barcodes are listed more than once, e.g. {list(dup[:3])}.")
    return positions


def _read_scalefactors(file: Path) -> dict:
    try:
        scalefactors = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a JSON file ({e}).") from None
    if not isinstance(scalefactors, dict):
        raise ValueError(f"{file}: expected a JSON object of scale factors.")
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        value = scalefactors.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{file}: '{key}' must be a positive number, got {value!r}.")
    diameter = scalefactors.get("spot_diameter_fullres")
    if diameter is not None and (
        isinstance(diameter, bool) or not isinstance(diameter, int | float) or not diameter > 0
    ):
        raise ValueError(f"{file}: 'spot_diameter_fullres' must be a positive number, got {diameter!r}.")
    return scalefactors


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _peek_counts(counts: Path) -> dict:
    """Barcodes, feature names/types, shape and library id of a counts file, without reading the matrix."""
    if counts.is_dir():
        return _peek_mtx(counts)
    import h5py

    try:
        f = h5py.File(counts, "r")
    except OSError as e:
        raise ValueError(f"`counts_file`: {counts} is not a readable HDF5 file ({e}).") from None
    with f:
        if "matrix" in f:  # Cell Ranger / Space Ranger >= 3.0 format (Space Ranger 1.0 onwards)
            group = f["matrix"]
            features = group.get("features")
            if features is None or "name" not in features:
                raise ValueError(
                    f"`counts_file`: {counts} is not a 10x feature-barcode matrix (no matrix/features/name)."
                )
            names = _decode(features["name"][:])
            types = _decode(features["feature_type"][:]) if "feature_type" in features else [_GEX] * len(names)
            probe_level = "probe_region" in features or "gene_name" in features
        else:  # Cell Ranger 2 format: one group per genome
            genomes = list(f.keys())
            if len(genomes) != 1 or "gene_names" not in f[genomes[0]]:
                raise ValueError(f"`counts_file`: {counts} is not a 10x feature-barcode matrix (groups {genomes}).")
            group = f[genomes[0]]
            names = _decode(group["gene_names"][:])
            types = [_GEX] * len(names)
            probe_level = False
        if "barcodes" not in group or "shape" not in group or "data" not in group:
            raise ValueError(f"`counts_file`: {counts} lacks barcodes, shape or data; not a 10x matrix.")
        barcodes = _decode(group["barcodes"][:])
        shape = tuple(int(s) for s in group["shape"][:])
        nnz = int(group["data"].shape[0])
        library_ids = f.attrs.get("library_ids")
    library_id = _decode(np.atleast_1d(library_ids))[0] if library_ids is not None and np.size(library_ids) else None
    return {
        "barcodes": pd.Index(barcodes),
        "names": names,
        "types": types,
        "shape": shape,
        "nnz": nnz,
        "library_id": library_id,
        "probe_level": probe_level,
    }


def _peek_mtx(folder: Path) -> dict:
    def _table(file: Path) -> pd.DataFrame:
        try:
            return pd.read_csv(file, header=None, sep="\t", dtype=str)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=[0, 1, 2])

    barcodes = _table(folder / "barcodes.tsv.gz")
    features = _table(folder / "features.tsv.gz")
    if features.shape[1] < 2:
        raise ValueError(f"`counts_file`: {folder / 'features.tsv.gz'} needs gene ids and names (2-3 columns).")
    with gzip.open(folder / MTX_FILE, "rt") as f:
        header = f.readline()
        if not header.startswith("%%MatrixMarket"):
            raise ValueError(f"`counts_file`: {folder / MTX_FILE} is not a Matrix Market file.")
        line = header
        while line.startswith("%"):
            line = f.readline()
    try:
        n_features, n_barcodes, nnz = (int(v) for v in line.split())
    except ValueError:
        raise ValueError(f"`counts_file`: {folder / MTX_FILE} has no 'rows columns entries' line.") from None
    if (n_features, n_barcodes) != (len(features), len(barcodes)):
        raise ValueError(
            f"`counts_file`: {folder / MTX_FILE} is {n_features} features x {n_barcodes} barcodes, but "
            f"features.tsv.gz lists {len(features)} and barcodes.tsv.gz {len(barcodes)}."
        )
    names = features[1].astype(str).tolist()
    types = features[2].astype(str).tolist() if features.shape[1] > 2 else [_GEX] * len(names)
    return {
        "barcodes": pd.Index(barcodes[0].astype(str)) if len(barcodes) else pd.Index([], dtype=str),
        "names": names,
        "types": types,
        "shape": (n_features, n_barcodes),
        "nnz": nnz,
        "library_id": None,
        "probe_level": False,
    }


def _match_barcodes(barcodes: pd.Index, positions: pd.DataFrame, *, counts: Path, positions_file: Path) -> None:
    """Refuse an empty matrix, duplicated barcodes and barcodes without a position; log what does not pair up."""
    if len(barcodes) == 0:
        raise ValueError(f"`counts_file`: {counts} holds no barcodes (an empty matrix).")
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()
        raise ValueError(f"`counts_file`: {counts} lists {len(dup)} barcodes more than once, e.g. {list(dup[:3])}.")
    missing = ~barcodes.isin(positions.index)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(barcodes)} barcodes of {counts} have no position in {positions_file}, "
            f"e.g. {list(barcodes[missing][:3])}: are the counts and the spatial/ folder from the same run?"
        )
    in_tissue = positions["in_tissue"].astype(bool)
    outside = int((~in_tissue.loc[barcodes]).sum())
    if outside:
        logger.info("%s: %d of %d barcodes lie outside the tissue (in_tissue = 0).", counts, outside, len(barcodes))
    uncounted = int((in_tissue & ~positions.index.isin(barcodes)).sum())
    if uncounted:
        logger.warning(
            "%s: %d in-tissue spots of %s have no counts and are left out.", counts, uncounted, positions_file
        )


def _spot_pitch_px(positions: pd.DataFrame) -> float | None:
    """Median distance in full-resolution pixels between spots two array columns apart on one array row."""
    spots = pd.DataFrame(
        {
            "r": positions["array_row"].to_numpy(),
            "c": positions["array_col"].to_numpy(),
            "x": positions["pxl_col_in_fullres"].to_numpy(float),
            "y": positions["pxl_row_in_fullres"].to_numpy(float),
        }
    )
    pairs = spots.merge(spots.assign(c=spots["c"] - 2), on=["r", "c"], suffixes=("", "_n"))
    dist = np.hypot(pairs["x_n"] - pairs["x"], pairs["y_n"] - pairs["y"]).to_numpy()
    dist = dist[dist > 0]
    return float(np.median(dist)) if dist.size else None


def _pixel_size(mpp, positions, scalefactors, *, positions_file: Path, scalefactors_file: Path) -> tuple[float, str]:
    diameter = scalefactors.get("spot_diameter_fullres")
    if mpp is not None:
        return mpp, "(given)"
    pitch = _spot_pitch_px(positions)
    if pitch is not None:
        mpp = VISIUM_SPOT_PITCH_UM / pitch
        how = f"from the {VISIUM_SPOT_PITCH_UM:g} µm spot pitch ({pitch:.3f} px) in {positions_file.name}"
        if diameter is not None:
            how += f"; spot_diameter_fullres spans {diameter * mpp:.1f} µm"
        return mpp, how
    if diameter is None:
        raise ValueError(
            f"Cannot tell the pixel size: {positions_file} has no two spots two array columns apart on one row "
            f"and {scalefactors_file} has no 'spot_diameter_fullres'; pass `mpp`."
        )
    mpp = SPACERANGER_SPOT_DIAMETER_UM / float(diameter)
    warnings.warn(
        f"{positions_file}: the spot pitch cannot be measured; pixel size {mpp:.4f} µm/px taken as "
        f"{SPACERANGER_SPOT_DIAMETER_UM:g} µm / spot_diameter_fullres ({diameter:.3f} px, {scalefactors_file}), "
        "which Space Ranger versions define differently; pass `mpp` if it is known.",
        UserWarning,
        stacklevel=3,
    )
    return mpp, f"from {SPACERANGER_SPOT_DIAMETER_UM:g} µm / spot_diameter_fullres"


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


def _rgb_in_um(sdata, dataset_id: str, *, mpp: float) -> None:
    """Map every element to the coordinate system ``dataset_id`` in µm (as all bitro readers do) and drop alpha.

    spatialdata-io maps to full-resolution pixels; scaling by ``mpp`` after that transformation
    keeps the pixel coordinate systems (``*_downscaled_*``) as they are.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, get_transformation, set_transformation

    to_um = Scale([mpp, mpp], axes=("x", "y"))
    for key, element in list(sdata.images.items()):
        level0 = _sdata.level0(element)
        if level0.sizes["c"] == 4:  # RGBA PNGs: alpha carries no stain
            transformations = get_transformation(level0, get_all=True)
            sdata.images[key] = Image2DModel.parse(
                level0.isel(c=slice(0, 3)).data,
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                transformations=transformations,
                scale_factors=[2] * (len(element) - 1) if hasattr(element, "keys") else None,
            )
            logger.info("visium %s: alpha channel of %s dropped", dataset_id, key)
    for _, _, element in sdata.gen_spatial_elements():
        t = get_transformation(element, to_coordinate_system=dataset_id)
        set_transformation(element, Sequence([t, to_um]), to_coordinate_system=dataset_id)


def _um_per_pixel(element, coordinate_system: str) -> float:
    """µm per level-0 pixel of an image mapped to a µm coordinate system (x scale of its affine)."""
    from spatialdata.transformations import get_transformation

    level0 = _sdata.level0(element)
    matrix = get_transformation(level0, to_coordinate_system=coordinate_system).to_affine_matrix(("x", "y"), ("x", "y"))
    return float(abs(matrix[0, 0]))
