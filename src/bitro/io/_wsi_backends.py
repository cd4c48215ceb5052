"""Whole-slide image backends: what a TIFF (tifffile/zarr, read lazily by level) or PIL image file offers."""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitro._logging import logger

from ._wsi_mpp import _tiff_mpp, _usable


@dataclass
class _Source:
    """What a file offers before any pixel is decoded: a pixel size and a way to make the lazy levels."""

    mpp: float | None
    mpp_from: str
    levels: object  # callable: chunks -> list of dask arrays (c, y, x) uint8 RGB, finest first
    codec_error: str | None = None  # why the pixels cannot be decoded here (a missing codec), if so
    mpp_ignored: list[str] = field(default_factory=list)  # pixel sizes in the file that are not usable, and why


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
                try:
                    img.load()
                except OSError as exc:  # e.g. "image file is truncated": a partial download
                    raise ValueError(f"`path`: {path} could not be decoded ({exc}); is the file complete?") from exc
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
