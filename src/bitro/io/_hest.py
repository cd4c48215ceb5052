"""Reader for HEST-1k samples (Jaume et al. 2024): ``st/``, ``wsis/``, ``metadata/`` and nuclei."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger

from ._common import check_path, make_unique, record_attrs, sanitize_id

CELLVIT_KEY = "cellvit_boundaries"
"""Shapes element of the CellViT nuclei that HEST-1k ships (named as a segmentation output)."""


def hest(root: str | os.PathLike, sample_id: str, *, nuclei: bool = True, tissue: bool = True):
    """Read one HEST-1k sample into SpatialData.

    Expects the layout of a HEST-1k download: ``st/{sample_id}.h5ad`` (spots x genes, spot
    centres in full-resolution pixels in ``obsm["spatial"]``), ``wsis/{sample_id}.tif``
    (pyramidal TIFF), ``metadata/{sample_id}.json`` (pixel size, spot diameter, patient, ...) and,
    optionally, CellViT nuclei (``cellvit_seg/{sample_id}_cellvit_seg.parquet`` or ``.geojson``)
    and tissue contours (``tissue_seg/{sample_id}_contours.geojson``).

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
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    from ._wsi import wsi

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
    meta = json.loads(files["metadata"].read_text())
    mpp = _pixel_size(meta, files["metadata"])

    adata = ad.read_h5ad(files["st"])
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{files['st']}: the expression table is empty ({adata.n_obs} x {adata.n_vars}).")
    if "spatial" not in adata.obsm:
        raise ValueError(f"{files['st']}: no spot coordinates in obsm['spatial'].")
    adata.obs_names = make_unique(adata.obs_names, what="spot barcodes", source=files["st"])
    adata.var_names = make_unique(adata.var_names, what="gene names", source=files["st"])

    image = wsi(files["wsi"], sample_id=name, mpp=mpp, tissue=False)
    element = next(iter(image.images.values()))
    height, width = element["scale0"]["image"].shape[1:]
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.all():
        raise ValueError(
            f"{files['wsi']}: the image ({width} x {height} px) contains none of the spots of {files['st']}."
        )
    if outside.any():
        logger.warning("%s: %d of %d spots lie outside the image", files["st"], int(outside.sum()), len(xy))

    transformations = {name: Scale([mpp, mpp], axes=("x", "y"))}
    spot_um = _spot_diameter_um(meta)
    spot_ids = np.arange(adata.n_obs)
    shapes = {
        name: ShapesModel.parse(
            gpd.GeoDataFrame(
                {"radius": np.full(adata.n_obs, spot_um / 2 / mpp)},
                geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
                index=spot_ids,
            ),
            transformations=transformations,
        )
    }
    adata.obs[K.SPOT_ID_KEY] = spot_ids
    adata.obs[K.REGION_KEY] = pd.Categorical([name] * adata.n_obs)
    adata.uns.pop("spatial", None)  # scanpy's image cache; the image element replaces it

    extra = {}
    if nuclei and (path := _first(root / "cellvit_seg", f"{sample_id}_cellvit_seg", (".parquet", ".geojson"))):
        shapes[CELLVIT_KEY] = ShapesModel.parse(_read_polygons(path), transformations=transformations)
        extra[K.ATTR_CELLS_SHAPES] = CELLVIT_KEY
        logger.info("hest %s: %d CellViT nuclei from %s", sample_id, len(shapes[CELLVIT_KEY]), path)
    if tissue and (path := _first(root / "tissue_seg", f"{sample_id}_contours", (".geojson",))):
        contours = _read_polygons(path)
        shapes[f"{name}{K.TISSUE_SUFFIX}"] = ShapesModel.parse(contours, transformations=transformations)
        extra[K.ATTR_TISSUE] = f"{name}{K.TISSUE_SUFFIX}"

    image_key = f"{name}{K.FULL_IMAGE_SUFFIX}"
    sdata = SpatialData(
        images={image_key: element},
        shapes=shapes,
        tables={K.TABLE_KEY: TableModel.parse(adata, region=name, region_key=K.REGION_KEY, instance_key=K.SPOT_ID_KEY)},
    )
    record_attrs(
        sdata,
        **{
            K.ATTR_SAMPLE_ID: name,
            K.ATTR_IMAGE: image_key,
            K.ATTR_SPOTS: name,
            K.ATTR_TABLE: K.TABLE_KEY,
            K.ATTR_MPP: float(mpp),
            K.ATTR_COORDINATE_SYSTEM: name,
            K.PATIENT_ID_KEY: _text(meta.get("patient")),
            "technology": _text(meta.get("st_technology")),
            **extra,
        },
    )
    logger.info("hest %s: %d spots x %d genes, %.4f µm/px", sample_id, adata.n_obs, adata.n_vars, mpp)
    return sdata


def _pixel_size(meta: dict, path: Path) -> float:
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded"):
        value = meta.get(key)
        if value is not None and np.isfinite(float(value)) and float(value) > 0:
            return float(value)
    raise ValueError(f"{path}: no positive 'pixel_size_um_estimated' or 'pixel_size_um_embedded'.")


def _spot_diameter_um(meta: dict) -> float:
    value = meta.get("spot_diameter")
    if value is not None and np.isfinite(float(value)) and float(value) > 0:
        return float(value)
    technology = str(meta.get("st_technology", "")).lower()
    default = 100.0 if technology.startswith("spatial transcriptomics") else 55.0
    logger.warning("HEST metadata has no spot_diameter; using %g µm for %r", default, technology or "unknown")
    return default


def _first(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_polygons(path: Path):
    """Polygons from a (geo)parquet or GeoJSON file (a FeatureCollection or CellViT's list of features)."""
    import geopandas as gpd

    if path.suffix == ".parquet":
        gdf = gpd.read_parquet(path)
    else:
        data = json.loads(path.read_text())
        features = data if isinstance(data, list) else data.get("features", [])
        gdf = gpd.GeoDataFrame.from_features(features)
    if len(gdf) == 0:
        raise ValueError(f"{path}: no polygons.")
    gdf = gdf.explode(index_parts=False) if (gdf.geom_type == "MultiPolygon").any() else gdf
    keep = (gdf.geom_type == "Polygon") & gdf.is_valid & ~gdf.is_empty
    if not keep.all():
        logger.warning("%s: %d of %d shapes are not valid polygons and are skipped", path, int((~keep).sum()), len(gdf))
    gdf = gdf[keep]
    for column in list(gdf.columns):
        if column != "geometry" and gdf[column].map(lambda v: isinstance(v, dict | list)).any():
            gdf[column] = gdf[column].map(json.dumps)  # nested properties: keep as text
    return gdf.reset_index(drop=True)


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
