"""Reader for HEST-1k samples (Jaume et al. 2024): ``st/``, ``wsis/``, ``metadata/`` and nuclei."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import MPP_RANGE

from ._common import check_path, check_spots_inside, make_unique, sanitize_id, spot_sdata

CELLVIT_KEY = "cellvit_boundaries"
"""Shapes element of the CellViT nuclei that HEST-1k ships (named as a segmentation output)."""


def hest(root: str | os.PathLike, sample_id: str, *, nuclei: bool = True, tissue: bool = True):
    """Read one HEST-1k sample into SpatialData.

    Expects the layout of a HEST-1k download: ``st/{sample_id}.h5ad`` (spots x genes, spot
    centres in full-resolution pixels in ``obsm["spatial"]``), ``wsis/{sample_id}.tif``
    (pyramidal TIFF), ``metadata/{sample_id}.json`` (pixel size, spot diameter, patient, ...) and,
    optionally, CellViT nuclei (``cellvit_seg/{sample_id}_cellvit_seg.parquet``, else ``.geojson``, else
    the ``.geojson.zip`` HEST-1k ships) and tissue contours (``tissue_seg/{sample_id}_contours.geojson``).

    The pixel size is the metadata's ``pixel_size_um_estimated`` (HEST's calibration against
    the spot pitch), else ``pixel_size_um_embedded``.

    Parameters
    ----------
    root
        The HEST-1k folder (the one holding ``st/``, ``wsis/``, ``metadata/``).
    sample_id
        Sample id, e.g. ``"TENX95"``; also names the elements and the coordinate system.
    nuclei
        Read the CellViT nuclei when present.
    tissue
        Read the tissue contours when present.

    Returns
    -------
    :class:`spatialdata.SpatialData`
        Image ``{sample_id}_full_image``, spot circles ``{sample_id}`` (``radius`` in pixels),
        table ``"table"`` (the h5ad's counts and ``obs``, with ``region`` and ``spot_id``), and when
        present shapes ``cellvit_boundaries`` (nuclei, with their CellViT class) and
        ``{sample_id}_tissue``. ``attrs["bitro"]`` records the keys, ``mpp``, ``patient_id`` and
        the metadata's technology.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.io.hest("hest_data", "TENX95")  # doctest: +SKIP
    """
    import anndata as ad
    from scipy import sparse
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    from ._wsi import read_image

    root = check_path(root, name="root", kind="dir")
    if not isinstance(sample_id, str) or not sample_id:
        raise TypeError(f"`sample_id` must be a non-empty string, got {sample_id!r}.")
    files = {
        "st": root / "st" / f"{sample_id}.h5ad",
        "wsi": root / "wsis" / f"{sample_id}.tif",
        "metadata": root / "metadata" / f"{sample_id}.json",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"`sample_id` {sample_id!r}: HEST-1k files missing under {root}: {missing}.")
    name = sanitize_id(sample_id, name="sample_id")
    try:
        meta = json.loads(files["metadata"].read_text())
    except ValueError as err:
        raise ValueError(f"{files['metadata']}: not valid JSON ({err}).") from err
    if not isinstance(meta, dict):
        raise ValueError(
            f"{files['metadata']}: expected a JSON object of sample metadata, got a {type(meta).__name__}."
        )
    mpp = _positive(meta, ("pixel_size_um_estimated", "pixel_size_um_embedded"), files["metadata"], MPP_RANGE)
    if mpp is None:
        raise ValueError(f"{files['metadata']}: no positive 'pixel_size_um_estimated' or 'pixel_size_um_embedded'.")
    spot_um = _positive(meta, ("spot_diameter",), files["metadata"], SPOT_UM_RANGE)
    if spot_um is None and meta.get("spot_diameter") is not None:
        raise ValueError(
            f"{files['metadata']}: 'spot_diameter' must be a spot diameter in µm > 0, got {meta['spot_diameter']!r}."
        )
    if spot_um is None:
        technology = str(meta.get("st_technology", "")).lower()
        spot_um = 100.0 if technology.startswith("spatial transcriptomics") else 55.0
        logger.warning("%s: no spot_diameter; using %g µm for %r", files["metadata"], spot_um, technology or "unknown")

    try:
        adata = ad.read_h5ad(files["st"])
    except (OSError, KeyError, ValueError) as err:  # not HDF5, cut short, or not an AnnData
        raise ValueError(f"{files['st']}: not a readable h5ad file ({' '.join(str(err).split())}).") from err
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{files['st']}: the expression table is empty ({adata.n_obs} x {adata.n_vars}).")
    if "spatial" not in adata.obsm:
        raise ValueError(f"{files['st']}: no spot coordinates in obsm['spatial'].")
    adata.obs_names = make_unique(adata.obs_names, what="spot barcodes", source=files["st"])
    adata.var_names = make_unique(adata.var_names, what="gene names", source=files["st"])
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)  # as the other readers keep counts
    adata.uns.pop("spatial", None)  # scanpy's image cache; the image element replaces it

    element, mpp = read_image(files["wsi"], coordinate_system=name, mpp=mpp)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    check_spots_inside(xy, _sdata.level0(element).shape[1:], image=files["wsi"], source=files["st"])

    transformations = {name: Scale([mpp, mpp], axes=("x", "y"))}
    shapes, attrs = (
        {},
        {K.PATIENT_ID_KEY: _text(meta.get("patient")), K.ATTR_TECHNOLOGY: _text(meta.get("st_technology"))},
    )
    cellvit_suffixes = (".parquet", ".geojson", ".geojson.zip")
    if nuclei and (path := _first(root / "cellvit_seg", f"{sample_id}_cellvit_seg", cellvit_suffixes)):
        shapes[CELLVIT_KEY] = ShapesModel.parse(_read_nuclei(path), transformations=transformations)
        attrs[K.ATTR_CELLS_SHAPES] = CELLVIT_KEY
        logger.info("hest %s: %d CellViT nuclei from %s", sample_id, len(shapes[CELLVIT_KEY]), path)
    if tissue and (path := _first(root / "tissue_seg", f"{sample_id}_contours", (".geojson",))):
        shapes[f"{name}{K.TISSUE_SUFFIX}"] = ShapesModel.parse(_read_tissue(path), transformations=transformations)
        attrs[K.ATTR_TISSUE] = f"{name}{K.TISSUE_SUFFIX}"

    sdata = spot_sdata(
        sample_id=name,
        image=element,
        adata=adata,
        xy=xy,
        radius_px=spot_um / 2 / mpp,
        mpp=mpp,
        shapes=shapes,
        attrs=attrs,
    )
    logger.info("hest %s: %d spots x %d genes, %.4f µm/px", sample_id, adata.n_obs, adata.n_vars, mpp)
    return sdata


SPOT_UM_RANGE = (1.0, 1000.0)
"""Plausible spot diameters in µm (Visium HD bins to legacy ST's 100 µm spots, with margin)."""


def _positive(meta: dict, keys: tuple[str, ...], path: Path, plausible: tuple[float, float]) -> float | None:
    """The first of ``keys`` holding a positive number (within ``plausible``, else an error), or ``None``."""
    for key in keys:
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool):  # float(True) would be 1.0
            raise ValueError(f"{path}: {key!r} must be a number, got {value!r}.")
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {key!r} must be a number, got {meta[key]!r}.") from err
        if np.isfinite(value) and value > 0:
            lo, hi = plausible
            if not lo <= value <= hi:
                raise ValueError(
                    f"{path}: {key!r} is {value:g}, outside the plausible {lo:g}-{hi:g} µm (a unit slip: nm, mm?)."
                )
            return value
    return None


def _first(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_polygons(path: Path):
    """Polygons from a (geo)parquet or GeoJSON file (a FeatureCollection or CellViT's list of features)."""
    import geopandas as gpd

    try:
        if path.suffix == ".parquet":
            gdf = gpd.read_parquet(path)
        else:
            data = json.loads(_geojson_text(path))
            gdf = gpd.GeoDataFrame.from_features(data if isinstance(data, list) else data.get("features", []))
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: could not read polygons ({type(err).__name__}: {err}).") from err
    if len(gdf) == 0:
        raise ValueError(f"{path}: no polygons.")
    return gdf


def _geojson_text(path: Path) -> str:
    """The text of a GeoJSON file, or of the one ``.geojson`` member of a ``.zip``."""
    if path.suffix != ".zip":
        return path.read_text()
    with zipfile.ZipFile(path) as archive:
        members = [name for name in archive.namelist() if name.endswith(".geojson")]
        if len(members) != 1:
            raise ValueError(f"expected one .geojson member in the zip, found {members or 'none'}")
        return archive.read(members[0]).decode()


def _read_nuclei(path: Path):
    """One row per nucleus polygon, with CellViT's class as a categorical ``cell_type`` when present."""
    gdf = _read_polygons(path).explode(index_parts=False)
    keep = (gdf.geom_type == "Polygon") & gdf.is_valid & ~gdf.is_empty
    if not keep.all():
        logger.warning("%s: %d of %d shapes are not valid polygons and are skipped", path, int((~keep).sum()), len(gdf))
    gdf = gdf[keep].reset_index(drop=True)
    kind = None
    if "classification" in gdf:  # CellViT / QuPath: {"name": ..., "color": [...]}
        kind = gdf["classification"].map(lambda c: c.get("name") if isinstance(c, dict) else c)
    elif "class" in gdf:
        kind = gdf["class"]
    out = gdf[["geometry"]].copy()
    if kind is not None:
        out[K.CELL_TYPE_KEY] = pd.Categorical(kind.astype(str))
    return out


def _read_tissue(path: Path):
    """The tissue outline as one (Multi)Polygon row, holes kept as holes."""
    import geopandas as gpd

    geometry = _read_polygons(path).geometry.make_valid().union_all()
    return gpd.GeoDataFrame(geometry=[geometry], index=[0])


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
