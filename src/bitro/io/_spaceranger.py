"""Space Ranger ``outs`` folder: finding and checking its files, and peeking at the counts without reading them."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bitro._logging import logger

from ._common import check_path

POSITIONS_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")
"""Space Ranger >= 2.0 (with a header) and Space Ranger 1.x (without) names of the spot positions file."""

SCALEFACTORS_FILE = "scalefactors_json.json"
HIRES_IMAGE_FILE = "tissue_hires_image.png"
LOWRES_IMAGE_FILE = "tissue_lowres_image.png"
MTX_FILE = "matrix.mtx.gz"

_POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
_GEX = "Gene Expression"


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
        try:
            return _peek_mtx(counts)
        except (EOFError, OSError) as err:  # a truncated .gz (a partial download) or an unreadable file
            raise ValueError(f"`counts_file`: a file of {counts} could not be read ({err}); is it complete?") from err
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
