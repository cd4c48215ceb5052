"""Whole-slide images (SVS, pyramidal TIFF, OME-TIFF, NDPI; JPEG/PNG) into SpatialData, lazily."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_int, check_mpp

from ._common import check_path, sanitize_id
from ._wsi_backends import _open_pil, _open_tiff
from ._wsi_mpp import _resolve_mpp

if TYPE_CHECKING:
    from spatialdata import SpatialData
    from xarray import DataTree

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")
PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
CHANNELS = ["r", "g", "b"]

MIN_LEVEL_PX = 256
"""Single-level images get lazily averaged 2x levels until the smallest is below ``2 * MIN_LEVEL_PX`` px."""

TISSUE_MAX_PX = 2048
"""The tissue mask is computed on an image whose longer side is at most this many pixels."""

TISSUE_SIGMA_UM = 4.0
TISSUE_CLOSING_UM = 40.0
TISSUE_MIN_AREA_UM2 = 10_000.0
"""Tissue pieces smaller than 0.01 mm² (100 µm x 100 µm) are dropped."""


def wsi(
    path: str | os.PathLike,
    *,
    sample_id: str | None = None,
    mpp: float | None = None,
    tissue: bool = True,
    chunks: int = 1024,
) -> SpatialData:
    """Read a whole-slide H&E image into :class:`~spatialdata.SpatialData`, lazily.

    Pyramidal TIFF files (Aperio ``.svs``, generic tiled ``.tif``/``.tiff``, OME-TIFF, Hamamatsu ``.ndpi``)
    are opened with ``tifffile`` and every pyramid level already in the file becomes one level of
    a multiscale, chunked (dask) image: nothing is decoded until a chunk is used, so a slide of any size
    opens in constant memory. Single-level images (and ``.jpg``/``.jpeg``/``.png``, which are decoded into
    memory and so should be small) get lazily averaged 2x levels.

    Parameters
    ----------
    path
        The slide: ``.svs``, ``.tif``, ``.tiff`` (also ``.ome.tif``), ``.ndpi``, ``.jpg``, ``.jpeg`` or ``.png``.
        For a TIFF with several images (label, macro, thumbnail), the largest one is read.
    sample_id
        Prefix of the element names and name of the coordinate system. Default: the file name without
        extension (``.ome.tif`` removed as a whole). Characters outside ``[A-Za-z0-9_.-]`` become ``_``.
    mpp
        Micrometres per level-0 pixel. Default: from the file's metadata (Aperio ``MPP =`` in the
        description, OME ``PhysicalSizeX``, TIFF ``XResolution``/``ResolutionUnit``, PNG/JPEG dpi). A value
        given here wins over the file's (a disagreement of more than 1 % is logged as a warning). A file
        without a usable pixel size needs ``mpp=``: resolution tags of 72 or 96 dpi and the like (more than
        50 µm/px) are software defaults, and non-square pixels are not supported; such metadata is ignored
        (and reported only when it was needed, i.e. without ``mpp=``).
    tissue
        Detect the tissue on a low-resolution level (Otsu threshold on the colour saturation, clean-up, holes
        filled) and add its outline as a shapes element. If no tissue is found a warning is logged and no tissue
        element is written.
    chunks
        Chunk size (pixels, in y and x) of every level.

    Returns
    -------
    :class:`~spatialdata.SpatialData` with

    - ``images["{sample_id}_he_image"]``: multiscale ``(c, y, x)`` uint8 RGB image (alpha dropped),
      level ``scale0`` the full resolution;
    - ``shapes["{sample_id}_tissue"]``: one row (index 0), a polygon or multipolygon in level-0 pixels
      (only with ``tissue=True`` and tissue found);
    - both mapped to the coordinate system ``sample_id`` by a scale of ``mpp``, so that system is in µm;
    - ``attrs["bitro"]``: ``sample_id``, ``image_key``, ``tissue_key``, ``mpp``, ``coordinate_system``.

    Notes
    -----
    TIFF pixels are read through ``tifffile``'s zarr store of each level; the dask graph holds only the file's
    path and opens the file again in each process that reads it, so it works with multi-process dask
    schedulers and data-loader workers. JPEG, JPEG 2000 (as in many Aperio ``.svs``) and most other tile
    compressions need the ``imagecodecs`` package. Memory use follows the file's own tiling: a level stored as
    one huge strip is decoded whole by every read (a warning says so). The tissue mask of a TIFF without
    pyramid levels reads the whole image once, chunk by chunk.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unsupported extension; not an 8-bit RGB(A) 2-D image; no usable (square, plausible) pixel size in the
        file and no ``mpp=``; ``mpp <= 0``; a file that cannot be parsed.
    ImportError
        The tiles need a codec that is not installed (with ``tissue=True``; otherwise a warning).

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.io.wsi("slide.svs")  # doctest: +SKIP
    >>> sdata = bt.io.wsi("frozen.svs", mpp=0.25, sample_id="patient1_A")  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    if not isinstance(tissue, bool):
        raise TypeError(f"`tissue` must be True or False, got {tissue!r}.")
    path = check_path(path, name="path")
    sample_id = sanitize_id(sample_id if sample_id is not None else _stem(path), name="sample_id")
    image, mpp, levels = _read_image(path, coordinate_system=sample_id, mpp=mpp, chunks=chunks, pixels_needed=tissue)

    image_key = f"{sample_id}{K.HE_IMAGE_SUFFIX}"
    shapes = {}
    tissue_key = None
    if tissue:
        geometry = _detect_tissue(levels, mpp=mpp, path=path)
        if geometry is None:
            logger.warning(
                "%s: no tissue found (saturation threshold on a low-resolution level); no %r element written.",
                path,
                f"{sample_id}{K.TISSUE_SUFFIX}",
            )
        else:
            tissue_key = f"{sample_id}{K.TISSUE_SUFFIX}"
            shapes[tissue_key] = _tissue_element(geometry, transformations=_to_um(sample_id, mpp))

    sdata = SpatialData(images={image_key: image}, shapes=shapes)
    _sdata.record(
        sdata,
        **{
            K.ATTR_SAMPLE_ID: sample_id,
            K.ATTR_IMAGE: image_key,
            K.ATTR_TISSUE: tissue_key,
            K.ATTR_MPP: mpp,
            K.ATTR_IMAGE_MPP: mpp,
            K.ATTR_COORDINATE_SYSTEM: sample_id,
        },
    )
    return sdata


def read_image(
    path: str | os.PathLike, *, coordinate_system: str, mpp: float | None = None, chunks: int = 1024
) -> tuple[DataTree, float]:
    """Read an RGB slide or image as a lazy multiscale image element in µm, and its pixel size.

    The reading behind :func:`wsi`, for readers that put the image next to other elements: the
    file's own pyramid levels (averaged 2x levels added below a single-level image), nothing decoded
    until used (``.jpg``/``.jpeg``/``.png`` are decoded into memory).

    Parameters
    ----------
    path
        ``.svs``, ``.tif``, ``.tiff`` (also ``.ome.tif``), ``.ndpi``, ``.jpg``, ``.jpeg`` or ``.png``.
    coordinate_system
        Name of the coordinate system the element is mapped to (used as given).
    mpp
        Micrometres per level-0 pixel; default: from the file's metadata, as in :func:`wsi`.
    chunks
        Chunk size (pixels, in y and x) of every level.

    Returns
    -------
    ``(image, mpp)``: the multiscale ``(c, y, x)`` uint8 RGB image (:class:`xarray.DataTree`, levels
    ``scale0``, ``scale1``, ..., channels ``r``, ``g``, ``b``) mapped to ``coordinate_system`` by
    ``Scale([mpp, mpp])`` (level 0; coarser levels by their shape ratio first), and ``mpp``, the µm per
    level-0 pixel used (``mpp`` if given, else the file's).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        As in :func:`wsi`: unsupported extension, not an 8-bit RGB(A) 2-D image, no usable pixel size
        in the file and no ``mpp=``, ``mpp <= 0``, a file that cannot be parsed.
    """
    image, mpp, _ = _read_image(path, coordinate_system=coordinate_system, mpp=mpp, chunks=chunks)
    return image, mpp


def _read_image(path, *, coordinate_system, mpp, chunks, pixels_needed: bool = False) -> tuple[DataTree, float, list]:
    """:func:`read_image`, also returning the levels (dask arrays); ``pixels_needed`` makes a missing codec an error."""
    path = check_path(path, name="path")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + PIL_SUFFIXES:
        raise ValueError(
            f"`path`: {path} has an unsupported extension {path.suffix!r}; "
            f"supported are {', '.join(TIFF_SUFFIXES + PIL_SUFFIXES)}."
        )
    if not isinstance(coordinate_system, str) or not coordinate_system:
        raise TypeError(f"`coordinate_system` must be a non-empty string, got {coordinate_system!r}.")
    if mpp is not None:
        mpp = check_mpp(mpp, "mpp")
    chunks = check_int(chunks, "chunks", min_value=16)

    source = _open_tiff(path) if suffix in TIFF_SUFFIXES else _open_pil(path)
    mpp = _resolve_mpp(path, source, mpp=mpp)
    if source.codec_error is not None:
        if pixels_needed:
            raise ImportError(f"`path`: {path}: {source.codec_error}. (With tissue=False the slide opens lazily.)")
        logger.warning("%s: %s. The image is opened, but reading its pixels will fail.", path, source.codec_error)
    levels = source.levels(chunks)
    if len(levels) == 1:
        levels = _add_levels(levels[0], chunks=chunks)
    image = _image_element(levels, transformations=_to_um(coordinate_system, mpp))
    h, w = levels[0].shape[1:]
    logger.info(
        "%s: %d x %d px at %.4g µm/px, %d level(s), in coordinate system %r.",
        path.name,
        w,
        h,
        mpp,
        len(levels),
        coordinate_system,
    )
    return image, mpp, levels


def _to_um(coordinate_system: str, mpp: float) -> dict:
    from spatialdata.transformations import Scale

    return {coordinate_system: Scale([mpp, mpp], axes=("x", "y"))}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --- elements ---------------------------------------------------------------------------------------


def _add_levels(level0, *, chunks: int) -> list:
    """Lazily averaged 2x levels below a single-level image, until the smallest is under ``2 * MIN_LEVEL_PX``.

    Not ``Image2DModel.parse(scale_factors=...)``: its coarsening (spatialdata 0.7) truncates the means and, for an
    odd size, drops the first row/column, shifting the level by a pixel against its ``Scale`` transformation.
    """
    import dask.array as da

    levels = [level0]
    while max(levels[-1].shape[1:]) >= 2 * MIN_LEVEL_PX and min(levels[-1].shape[1:]) >= 4:
        coarse = da.coarsen(np.mean, levels[-1], {1: 2, 2: 2}, trim_excess=True, dtype=np.float32)
        levels.append(da.round(coarse).astype(np.uint8).rechunk((3, chunks, chunks)))
    return levels


def _image_element(levels: list, *, transformations: dict):
    """A multiscale image (DataTree) from existing levels; each level is scaled to level 0 by its shape ratio."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import set_transformation
    from xarray import DataArray, Dataset, DataTree

    h0, w0 = levels[0].shape[1:]
    nodes = {}
    for i, arr in enumerate(levels):
        h, w = arr.shape[1:]
        # pixel centres in level-0 pixel units, as spatialdata computes them for a multiscale image
        coords = {
            "c": CHANNELS,
            "y": np.linspace(0, h0, h + 1)[:-1] + h0 / h / 2,
            "x": np.linspace(0, w0, w + 1)[:-1] + w0 / w / 2,
        }
        nodes[f"scale{i}"] = Dataset({"image": DataArray(arr, dims=("c", "y", "x"), coords=coords)})
    tree = DataTree.from_dict(nodes)
    # sets `transformations` on scale0 and `Scale(level-0 shape / level shape)` then `transformations` below
    set_transformation(tree, transformations, set_all=True)
    Image2DModel.validate(tree)
    return tree


def _tissue_element(geometry, *, transformations: dict):
    import geopandas as gpd
    from spatialdata.models import ShapesModel

    return ShapesModel.parse(gpd.GeoDataFrame(geometry=[geometry], index=[0]), transformations=transformations)


def _detect_tissue(levels: list, *, mpp: float, path: Path):
    """Tissue outline in level-0 pixels from a level whose longer side is about 1-2k pixels."""
    import dask.array as da

    from ._tissue import tissue_polygons

    h0, w0 = levels[0].shape[1:]
    if min(h0, w0) < 2:
        return None
    # the coarsest level still at least TISSUE_MAX_PX / 2 on its longer side (or level 0 if it is smaller)
    j = max((i for i, a in enumerate(levels) if max(a.shape[1:]) >= TISSUE_MAX_PX // 2), default=0)
    level = levels[j]
    h, w = level.shape[1:]
    k = max(1, math.ceil(max(h, w) / TISSUE_MAX_PX))
    if min(h, w) // k < 2:
        k = 1
    if k > 1:
        level = da.coarsen(np.mean, level, {1: k, 2: k}, trim_excess=True, dtype=np.float32)
    rgb = np.asarray(level.compute()).transpose(1, 2, 0)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    downsample = (h0 / h * k, w0 / w * k)  # level-0 pixels per low-resolution pixel (y, x)
    px_um = mpp * math.sqrt(downsample[0] * downsample[1])
    logger.debug("%s: tissue mask on level %d / %d at %.3g µm/px, %s.", path.name, j, k, px_um, rgb.shape[:2])
    return tissue_polygons(
        rgb,
        downsample=downsample,
        sigma_px=TISSUE_SIGMA_UM / px_um,
        closing_px=int(np.clip(round(TISSUE_CLOSING_UM / px_um), 1, 15)),
        min_object_px=max(4, round(TISSUE_MIN_AREA_UM2 / px_um**2)),
        simplify_px=1.0,
    )
