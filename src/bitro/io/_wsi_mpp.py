"""Pixel size (µm per level-0 pixel) of a slide from its file's metadata, and the choice between it and ``mpp=``."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bitro._logging import logger
from bitro._validate import MPP_RANGE

if TYPE_CHECKING:
    from ._wsi_backends import _Source

_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "nm": 1e-3}
"""µm per OME ``UnitsLength`` (micro sign; a Greek mu is read as one); other lengths are not pixel sizes."""
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([^|\r\n]*)")


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
            text = match.group(1).strip()
            try:  # a decimal comma (a scanner set to a German or French locale) is a decimal point
                value = float(re.sub(r"^(\d+),(\d+)$", r"\1.\2", text))
            except ValueError:
                value = math.nan
            usable = _usable(value, value, f"its Aperio MPP {text!r}", ignored)
            if usable is not None:
                return usable, "its Aperio MPP"
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

    Outside ``bitro._validate.MPP_RANGE`` it is a unit slip or a software default such as 72 dpi.
    """
    if not (math.isfinite(mpp_x) and math.isfinite(mpp_y)):
        ignored.append(f"{what} is not a number")
        return None
    if not math.isclose(mpp_x, mpp_y, rel_tol=0.01):
        ignored.append(f"{what} gives non-square pixels ({mpp_x:.4g} x {mpp_y:.4g} µm)")
        return None
    if not (math.isfinite(mpp_x) and MPP_RANGE[0] <= mpp_x <= MPP_RANGE[1]):
        ignored.append(
            f"{what} means {mpp_x:.4g} µm/px, which is not a microscope pixel size (a unit slip or a software default?)"
        )
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
