"""Helpers shared by the readers: path checks, names, uniqueness, ``attrs["bitro"]``."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

_INVALID = re.compile(r"[^A-Za-z0-9_.-]")


def check_path(path: str | os.PathLike, *, name: str, kind: str = "file") -> Path:
    """Return ``path`` as :class:`~pathlib.Path` or raise naming the argument and what was expected.

    ``kind`` is ``"file"``, ``"dir"`` or ``"any"``.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`{name}` must be a path, got {type(path).__name__} {path!r}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"`{name}`: {p} does not exist.")
    if kind == "file" and not p.is_file():
        raise ValueError(f"`{name}`: {p} is not a file.")
    if kind == "dir" and not p.is_dir():
        raise ValueError(f"`{name}`: {p} is not a directory.")
    return p


MAX_ID_LENGTH = 128
"""Longest sample id: element names add suffixes (``_full_image``), folder names stop at 255 bytes."""


def sanitize_id(value: str, *, name: str) -> str:
    """Make ``value`` usable as an element-name prefix (``[A-Za-z0-9_.-]``, no leading ``_`` or ``.``), logging any change.

    A leading ``.`` would hide the elements in a zarr store (spatialdata does not read them back).
    """
    if not isinstance(value, str) or not value:
        raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
    clean = _INVALID.sub("_", value).lstrip("_.") or "sample"
    if len(clean) > MAX_ID_LENGTH:  # element folders are named after it: file systems stop at 255 bytes
        raise ValueError(
            f"`{name}` is {len(clean)} characters ({clean[:40]}...); give one of at most {MAX_ID_LENGTH}: the "
            "store's element folders are named after it."
        )
    if clean != value:
        logger.warning("`%s` %r is not a valid element name; using %r.", name, value, clean)
    return clean


def make_unique(index: pd.Index, *, what: str, source: str | os.PathLike) -> pd.Index:
    """Return ``index`` with duplicates made unique (``name-1``, ``name-2``, ...), warning with the count and file."""
    index = pd.Index(index.astype(str))
    if index.is_unique:
        return index
    n_dup = int(index.duplicated().sum())
    from anndata.utils import make_index_unique

    warnings.warn(
        f"{source}: {n_dup} duplicated {what} made unique by appending '-1', '-2', ...",
        UserWarning,
        stacklevel=3,
    )
    return make_index_unique(index)


def check_spots_inside(xy, shape: tuple[int, int], *, image, source) -> None:
    """Raise if any spot centre ``xy`` (pixels, x then y) lies outside an image of ``shape`` (height, width)."""
    import numpy as np

    xy = np.asarray(xy, dtype=float)
    height, width = shape
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.any():
        first = xy[outside][0].round(1).tolist()
        raise ValueError(
            f"{image}: the image ({width} x {height} px) is smaller than the spot coordinates in {source} imply: "
            f"{int(outside.sum())} of {len(xy)} spot centres fall outside it (e.g. at {first}). "
            "Is it the full-resolution image of this section?"
        )


def spot_sdata(
    *,
    sample_id: str,
    image,
    adata,
    xy,
    radius_px: float,
    mpp: float,
    shapes: dict | None = None,
    attrs: dict | None = None,
):
    """SpatialData of a spot section in µm: ``{sample_id}_full_image``, spot circles ``{sample_id}``, ``"table"``.

    ``image`` is a multiscale element already mapped to the coordinate system ``sample_id`` with
    ``Scale(mpp)``; ``xy`` are the spot centres in its level-0 pixels; ``adata`` gets ``spot_id``
    and ``region`` columns and becomes the table annotating the circles. ``shapes`` are further
    shapes elements (already parsed); ``attrs`` further ``attrs["bitro"]`` entries.
    """
    import geopandas as gpd
    import numpy as np
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    xy = np.asarray(xy, dtype=float)
    spot_ids = np.arange(len(xy))
    circles = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(len(xy), radius_px)}, geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), index=spot_ids
        ),
        transformations={sample_id: Scale([mpp, mpp], axes=("x", "y"))},
    )
    adata.obs[K.SPOT_ID_KEY] = spot_ids
    adata.obs[K.REGION_KEY] = pd.Categorical([sample_id] * len(xy))
    adata.obsm["spatial"] = xy
    image_key = f"{sample_id}{K.FULL_IMAGE_SUFFIX}"
    sdata = SpatialData(
        images={image_key: image},
        shapes={sample_id: circles, **(shapes or {})},
        tables={
            K.TABLE_KEY: TableModel.parse(adata, region=sample_id, region_key=K.REGION_KEY, instance_key=K.SPOT_ID_KEY)
        },
    )
    _sdata.record(
        sdata,
        **{
            K.ATTR_SAMPLE_ID: sample_id,
            K.ATTR_IMAGE: image_key,
            K.ATTR_SPOTS: sample_id,
            K.ATTR_TABLE: K.TABLE_KEY,
            K.ATTR_MPP: float(mpp),
            K.ATTR_IMAGE_MPP: float(mpp),
            K.ATTR_COORDINATE_SYSTEM: sample_id,
            **(attrs or {}),
        },
    )
    return sdata


def read_table(path, *, what: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` whose parse errors name the file and what it was expected to hold."""
    try:
        return pd.read_csv(path, **kwargs)
    except EOFError as err:  # a compressed file cut short, e.g. a partial download
        raise ValueError(f"{path}: could not read it as {what}: it ends early ({err}); is it complete?") from err
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: could not read it as {what}: {err}") from err
