"""Whole-slide images (SVS, pyramidal TIFF, OME-TIFF, NDPI; JPEG/PNG) into SpatialData, lazily."""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_float, check_int

from ._common import check_path, sanitize_id

if TYPE_CHECKING:
    from spatialdata import SpatialData
    from xarray import DataTree

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")
PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
CHANNELS = ["r", "g", "b"]

MAX_PLAUSIBLE_MPP = 50.0
"""A pixel size above this (µm/px, i.e. below ~500 dpi) is a software default such as 72 dpi, not a
microscope's: cells cannot be seen at that scale. Such metadata is ignored (``mpp=`` is then needed)."""

MIN_LEVEL_PX = 256
"""Single-level images get lazily averaged 2x levels until the smallest is below ``2 * MIN_LEVEL_PX`` px."""

TISSUE_MAX_PX = 2048
"""The tissue mask is computed on an image whose longer side is at most this many pixels."""

TISSUE_SIGMA_UM = 4.0
TISSUE_CLOSING_UM = 40.0
TISSUE_MIN_AREA_UM2 = 10_000.0
"""Tissue pieces smaller than 0.01 mm² (100 µm x 100 µm) are dropped."""

_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "nm": 1e-3}
"""µm per OME ``UnitsLength`` (micro sign; a Greek mu is read as one); other lengths are not pixel sizes."""
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([-+0-9.eE]+)")


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
        mpp = check_float(mpp, "mpp", min_value=0.0, strict_min=True)
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


# --- sources ---------------------------------------------------------------------------------------


@dataclass
class _Source:
    """What a file offers before any pixel is decoded: a pixel size and a way to make the lazy levels."""

    mpp: float | None
    mpp_from: str
    levels: object  # callable: chunks -> list of dask arrays (c, y, x) uint8 RGB, finest first
    codec_error: str | None = None  # why the pixels cannot be decoded here (a missing codec), if so
    mpp_ignored: list[str] = field(default_factory=list)  # pixel sizes in the file that are not usable, and why


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _open_tiff(path: Path) -> _Source:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ValueError(f"`path`: {path} could not be read as a TIFF: {exc}") from exc
    with tif:
        if not tif.series:
            raise ValueError(f"`path`: {path} holds no image.")
        index = max(range(len(tif.series)), key=lambda i: _yx_area(tif.series[i]))
        series = tif.series[index]
        axes = series.axes
        page = series.keyframe
        _check_tiff_layout(path, series)
        codec_error = _codec_error(page)
        segment_mb = math.prod(page.chunks) * page.dtype.itemsize / 2**20
        if segment_mb > 256:
            logger.warning(
                "%s: pixels are stored in segments of %s (%.0f MiB decoded), not in small tiles; "
                "every read decodes whole segments, so memory use follows their size.",
                path,
                page.chunks,
                segment_mb,
            )
        ignored = []
        file_mpp, mpp_from = _tiff_mpp(tif, page, series_index=index, ignored=ignored)
        level_info = [(tuple(level.shape), level.dtype) for level in series.levels]
    logger.debug("%s: series %d, axes %s, levels %s.", path.name, index, axes, [s for s, _ in level_info])

    def levels(chunks: int) -> list:
        import dask.array as da
        from dask.base import tokenize

        stat = path.stat()
        out = []
        for j, (shape, dtype) in enumerate(level_info):
            reader = _TiffLevel(path, series=index, level=j, shape=shape, dtype=dtype)
            chunk_shape = tuple(chunks if ax in "YX" else n for ax, n in zip(axes, shape, strict=True))
            name = "bitro-wsi-" + tokenize(str(path), stat.st_mtime_ns, stat.st_size, index, j, chunk_shape)
            arr = da.from_array(
                reader, chunks=chunk_shape, name=name, lock=False, meta=np.empty((0,) * len(shape), dtype=dtype)
            )
            out.append(_to_cyx_rgb(arr, axes, path=path))
        return out

    return _Source(mpp=file_mpp, mpp_from=mpp_from, levels=levels, codec_error=codec_error, mpp_ignored=ignored)


def _yx_area(series) -> int:
    sizes = dict(zip(series.axes, series.shape, strict=True))
    return int(sizes.get("Y", 0)) * int(sizes.get("X", 0))


def _check_tiff_layout(path: Path, series) -> None:
    """Only a 2-D image with an optional channel/sample axis is a slide; RGB(A) uint8 only."""
    from tifffile import PHOTOMETRIC

    axes, shape = series.axes, series.shape
    sizes = dict(zip(axes, shape, strict=True))
    other = [ax for ax in axes if ax not in "YXSC"]
    channel_axes = [ax for ax in axes if ax in "SC"]
    if "Y" not in axes or "X" not in axes or other or len(channel_axes) > 1:
        raise ValueError(
            f"`path`: {path} holds an image with axes {axes!r} and shape {shape}; "
            "bitro reads a 2-D RGB slide (axes YX plus 3 or 4 colour samples)."
        )
    n_channels = sizes[channel_axes[0]] if channel_axes else 1
    photometric = series.keyframe.photometric
    if n_channels < 3:
        raise ValueError(
            f"`path`: {path} is a grayscale image ({n_channels} channel(s), photometric {photometric.name}); "
            "bitro reads RGB brightfield (H&E) slides. Convert it to RGB first if it really is one."
        )
    if n_channels > 4 or photometric not in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR):
        raise ValueError(
            f"`path`: {path} has {n_channels} channels with photometric {photometric.name}, not an RGB image; "
            "bitro reads RGB brightfield (H&E) slides, not multi-channel fluorescence."
        )
    if series.dtype != np.uint8:
        raise ValueError(f"`path`: {path} has {series.dtype} pixels; bitro reads 8-bit (uint8) RGB slides.")


def _codec_error(page) -> str | None:
    """Why tifffile cannot decode this page's tiles here (e.g. JPEG 2000 without imagecodecs), or ``None``."""
    from tifffile import TIFF

    try:
        TIFF.DECOMPRESSORS[page.compression]
    except KeyError as exc:
        return (
            f"its tiles are compressed with {page.compression!r}, which tifffile cannot decode here "
            f"({exc.args[0] if exc.args else exc}); install the 'imagecodecs' package: pip install imagecodecs"
        )
    return None


def _to_cyx_rgb(arr, axes: str, *, path: Path):
    """Transpose a level to ``(c, y, x)`` and drop an alpha channel."""
    channel = next(ax for ax in axes if ax in "SC")
    arr = arr.transpose([axes.index(channel), axes.index("Y"), axes.index("X")])
    if arr.shape[0] == 4:
        logger.info("%s: alpha channel dropped.", path.name)
        arr = arr[:3]
    return arr


class _TiffLevel:
    """Array-like view of one pyramid level, opened on first access in each process (picklable by path).

    A :class:`tifffile.ZarrTiffStore` holds an open file and cannot be pickled; this wrapper keeps only
    the path, so dask graphs built on it run under multi-process schedulers and in data-loader workers.
    """

    def __init__(self, path: Path, *, series: int, level: int, shape: tuple[int, ...], dtype) -> None:
        self.path = Path(path)
        self.series = series
        self.level = level
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._lock = threading.Lock()
        self._array = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._array is None:
                import tifffile
                import zarr

                tif = tifffile.TiffFile(self.path)
                # close the file when this reader is garbage-collected (or at exit), not before
                weakref.finalize(self, tif.close)
                store = tif.series[self.series].aszarr(level=self.level)
                array = zarr.open_array(store=store, mode="r")
                if tuple(array.shape) != self.shape:
                    raise RuntimeError(f"{self.path} changed on disk: level {self.level} is now {array.shape}.")
                self._array = array
            return self._array

    def __getitem__(self, key):
        return self._open()[key]


def _open_pil(path: Path) -> _Source:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Histology images exceed PIL's decompression-bomb *warning* size (89 Mpx, e.g. a 9.5k x 9.5k
            # HER2ST JPEG); they are local files the user chose. PIL's hard limit (2x that) still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                mode, size, info = img.mode, img.size, dict(img.info)
                orientation = img.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"`path`: {path} is too large to decode into memory ({exc}); convert it to a tiled pyramidal TIFF."
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"`path`: {path} could not be read as an image: {exc}") from exc
    if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"):
        raise ValueError(
            f"`path`: {path} is a grayscale image (PIL mode {mode!r}); "
            "bitro reads RGB brightfield (H&E) slides. Convert it to RGB first if it really is one."
        )
    if mode not in ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr"):
        raise ValueError(f"`path`: {path} has PIL mode {mode!r}, not an RGB image; bitro reads RGB slides.")
    if orientation != 1:
        logger.warning(
            "%s: EXIF orientation %d is ignored; pixels are read as stored (not rotated for display).",
            path,
            orientation,
        )
    file_mpp, mpp_from, ignored = None, "", []
    dpi = info.get("dpi")
    if dpi and float(dpi[0]) > 0 and float(dpi[1]) > 0:
        mpp_from = f"its resolution of {float(dpi[0]):.4g} dpi"
        file_mpp = _usable(25_400.0 / float(dpi[0]), 25_400.0 / float(dpi[1]), mpp_from, ignored)

    def levels(chunks: int) -> list:
        import dask.array as da

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # as above
            with Image.open(path) as img:
                img.load()
                if img.mode in ("RGBA", "RGBa", "PA", "P"):
                    if img.mode != "RGBA":
                        img = img.convert("RGBA")
                    logger.info("%s: alpha channel dropped.", path.name)
                    rgb = np.asarray(img)[..., :3]
                else:
                    rgb = np.asarray(img.convert("RGB"))
        w_h = rgb.shape[1], rgb.shape[0]
        if w_h != size:
            raise RuntimeError(f"{path} changed while being read.")
        logger.info("%s: decoded into memory (%d x %d px).", path.name, *w_h)
        return [da.from_array(np.ascontiguousarray(rgb.transpose(2, 0, 1)), chunks=(3, chunks, chunks))]

    return _Source(mpp=file_mpp, mpp_from=mpp_from, levels=levels, mpp_ignored=ignored)


# --- pixel size -------------------------------------------------------------------------------------


def _tiff_mpp(tif, page, *, series_index: int, ignored: list[str]) -> tuple[float | None, str]:
    """µm per level-0 pixel from OME ``PhysicalSizeX``, Aperio ``MPP =``, or the resolution tags.

    The first usable one wins; why others were not usable is appended to ``ignored``.
    """
    if tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata, series_index=series_index, ignored=ignored)
        if mpp is not None:
            return mpp, "its OME PhysicalSizeX"
    description = page.description or ""
    if description.startswith("Aperio"):
        match = _APERIO_MPP.search(description)
        if match:
            try:
                value = float(match.group(1))
            except ValueError:
                value = math.nan
            if value > 0 and math.isfinite(value):
                return value, "its Aperio MPP"
            ignored.append(f"its Aperio MPP {match.group(1)!r} is not a pixel size")
    return _resolution_mpp(page, ignored)


def _ome_mpp(xml: str, *, series_index: int, ignored: list[str]) -> float | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        ignored.append(f"its OME-XML could not be parsed ({exc})")
        return None
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return None
    el = pixels[series_index] if series_index < len(pixels) else pixels[0]
    if el.get("PhysicalSizeX") is None:
        return None
    sizes = []
    for ax in ("X", "Y") if el.get("PhysicalSizeY") is not None else ("X", "X"):
        value, unit = el.get(f"PhysicalSize{ax}"), el.get(f"PhysicalSize{ax}Unit", "µm")
        try:
            sizes.append(float(value) * _UNIT_UM[unit.replace("\u03bc", "\u00b5")])  # Greek mu -> micro sign
        except (KeyError, ValueError):
            ignored.append(f"its OME PhysicalSize{ax} {value!r} {unit!r} is not a number in m, cm, mm, µm or nm")
            return None
    return _usable(*sizes, f"its OME PhysicalSizeX of {sizes[0]:.4g} µm", ignored)


def _resolution_mpp(page, ignored: list[str]) -> tuple[float | None, str]:
    """µm per pixel from the TIFF ``XResolution``/``YResolution`` tags in a length unit (not ``NONE``)."""
    from tifffile import RESUNIT

    if page.tags.get("XResolution") is None or page.tags.get("YResolution") is None:
        return None, ""
    try:
        unit = RESUNIT(page.resolutionunit)
    except ValueError:
        return None, ""
    if unit == RESUNIT.NONE:
        return None, ""
    px_per_um = page.get_resolution(RESUNIT.MICROMETER)
    if not (px_per_um[0] > 0 and px_per_um[1] > 0):
        return None, ""
    what = f"its XResolution of {page.get_resolution()[0]:.4g} per {unit.name.lower()}"
    return _usable(1 / px_per_um[0], 1 / px_per_um[1], what, ignored), what


def _usable(mpp_x: float, mpp_y: float, what: str, ignored: list[str]) -> float | None:
    """``mpp_x`` if it is a microscope's square pixel size, else ``None`` (and why in ``ignored``).

    Above :data:`MAX_PLAUSIBLE_MPP` it is a software default such as 72 dpi.
    """
    if not math.isclose(mpp_x, mpp_y, rel_tol=0.01):
        ignored.append(f"{what} gives non-square pixels ({mpp_x:.4g} x {mpp_y:.4g} µm)")
        return None
    if not (math.isfinite(mpp_x) and 0 < mpp_x <= MAX_PLAUSIBLE_MPP):
        ignored.append(f"{what} means {mpp_x:.4g} µm/px, which is not a microscope pixel size (a software default?)")
        return None
    return mpp_x


def _resolve_mpp(path: Path, source: _Source, *, mpp: float | None) -> float:
    """``mpp`` if given, else the file's; what the file had that was not usable is reported only if it was needed."""
    if mpp is None:
        if source.mpp is None:
            why = f" ({'; '.join(source.mpp_ignored)})" if source.mpp_ignored else ""
            raise ValueError(
                f"`path`: {path} has no pixel size (µm per pixel) in its metadata{why}. Pass it as `mpp=`, "
                "e.g. mpp=0.25 for a 40x scan or mpp=0.5 for 20x."
            )
        for reason in source.mpp_ignored:
            logger.warning("%s: %s; ignored.", path, reason)
        logger.info("%s: %.4g µm/px (from %s).", path.name, source.mpp, source.mpp_from)
        return float(source.mpp)
    for reason in source.mpp_ignored:
        logger.debug("%s: %s; not needed (`mpp` given).", path, reason)
    if source.mpp is not None and not math.isclose(mpp, source.mpp, rel_tol=0.01):
        logger.warning(
            "%s: `mpp`=%g overrides the file's %g µm/px (from %s).", path.name, mpp, source.mpp, source.mpp_from
        )
    return mpp


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
