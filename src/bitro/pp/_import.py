"""Read a segmentation made elsewhere (QuPath, CellViT, HEST, HoVer-Net, a label image) as nucleus polygons.

:func:`read_segmentation` returns polygons in level-0 pixel coordinates of an image of the
SpatialData object, ready for :func:`bitro.pp._cells.write_cells`. Label images follow the
pixel convention of spatialdata: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
GEOJSON_SUFFIXES = (".geojson", ".json")


def read_segmentation(path: str | os.PathLike, *, sdata, image_key: str):
    """Nucleus polygons from a segmentation file, in level-0 pixels of image ``image_key``.

    Parameters
    ----------
    path
        The name of a shapes element of ``sdata`` (polygons, or circles: points with a ``radius``;
        e.g. ``cellpose_boundaries`` from sopa, or cells drawn in another tool), mapped into
        level-0 pixels of the image through both elements' transformations; or a file, one of:
        GeoJSON (``.geojson`` / ``.json``; a FeatureCollection or a bare list of features,
        as QuPath and CellViT export; Polygon / MultiPolygon; a ``classification`` name or a
        ``class`` property becomes ``cell_type``), HEST's CellViT GeoParquet (``.parquet``),
        HoVer-Net JSON (``{"nuc": {id: {"contour": [[x, y], ...], "type": int}}}``; ``type``
        becomes ``cell_type``), or a label image (``.tif`` / ``.tiff`` / ``.png`` / ``.npy``;
        0 = background, one integer per nucleus) of the same size as level 0 of the image.
    sdata
        The :class:`spatialdata.SpatialData` object holding the image.
    image_key
        The image the segmentation was made on; its level-0 size checks label images.

    Returns
    -------
    :class:`geopandas.GeoDataFrame` with one valid Polygon per nucleus (MultiPolygons are split),
    index ``0..n-1``, and a categorical ``cell_type`` column when the file has classes.
    Shapes that are not valid polygons are skipped and counted in a warning.
    """
    if image_key not in sdata.images:
        raise KeyError(f"`image_key`: {image_key!r} is not an image of `sdata` (images: {list(sdata.images)}).")
    if isinstance(path, str) and path in sdata.shapes and not Path(path).expanduser().is_file():
        return _from_element(sdata, path, image_key)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"`path`: {os.fspath(path)!r} is neither a segmentation file nor a shapes element of `sdata` "
            f"(shapes: {list(sdata.shapes)})."
        )
    suffix = path.suffix.lower()
    if suffix in LABEL_SUFFIXES:
        return _from_labels(path, _level0_shape(sdata, image_key))
    if suffix == ".parquet":
        from bitro.io._hest import _read_nuclei

        return _read_nuclei(path)
    if suffix in GEOJSON_SUFFIXES:
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: could not read JSON ({type(err).__name__}: {err}).") from err
        if isinstance(data, dict) and "nuc" in data:
            return _from_hovernet(path, data["nuc"])
        from bitro.io._hest import _read_nuclei

        return _read_nuclei(path)
    raise ValueError(
        f"{path}: unknown segmentation format {suffix!r}; expected GeoJSON (.geojson/.json), CellViT parquet, "
        f"HoVer-Net JSON or a label image ({', '.join(LABEL_SUFFIXES)})."
    )


def _from_element(sdata, name: str, image_key: str):
    """The polygons (circles buffered) of shapes element ``name`` in level-0 pixels of ``image_key``."""
    import geopandas as gpd
    import shapely

    cs = _sdata.coordinate_system(sdata)
    shapes = sdata.shapes[name]
    geometry = shapes.geometry.to_numpy()
    points = shapely.get_type_id(geometry) == 0
    if points.any():
        if "radius" not in shapes.columns:
            raise ValueError(f"`path`: shapes element {name!r} holds points without a `radius`; cells need outlines.")
        geometry = geometry.copy()
        geometry[points] = shapely.buffer(geometry[points], shapes["radius"].to_numpy(dtype=float)[points])
    to_um = _sdata.affine_xy(shapes, cs)
    from_um = np.linalg.inv(_sdata.affine_xy(_sdata.level0(sdata.images[image_key]), cs))
    matrix = from_um @ to_um
    geometry = shapely.transform(geometry, lambda xy: _sdata.apply_affine(matrix, xy))
    polygons, skipped = [], 0
    for geom in geometry:
        parts = [p for p in getattr(geom, "geoms", [geom]) if p.geom_type == "Polygon" and p.area > 0]
        if parts:
            polygons.append(max(parts, key=lambda p: p.area))
        else:
            skipped += 1
    if skipped:
        logger.warning(
            "shapes %s: %d of %d shapes are not areal polygons and are skipped", name, skipped, len(geometry)
        )
    if not polygons:
        raise ValueError(f"`path`: shapes element {name!r} holds no polygon.")
    out = gpd.GeoDataFrame(geometry=polygons)
    for column in ("cell_type", "classification", "class"):
        if column in shapes.columns and not skipped:
            out[K.CELL_TYPE_KEY] = pd.Categorical(shapes[column].astype(str).to_numpy())
            break
    logger.info("%d cells taken from shapes element %s", len(out), name)
    return out


def _level0_shape(sdata, image_key: str) -> tuple[int, int]:
    level0 = _sdata.level0(sdata.images[image_key])
    return int(level0.sizes["y"]), int(level0.sizes["x"])


def _from_hovernet(path: Path, nuclei) -> object:
    import geopandas as gpd
    import shapely

    if not isinstance(nuclei, dict):
        raise ValueError(f"{path}: HoVer-Net 'nuc' must map ids to nuclei, got {type(nuclei).__name__}.")
    geometry, kinds, skipped = [], [], 0
    for nucleus in nuclei.values():
        contour = nucleus.get("contour") if isinstance(nucleus, dict) else None
        try:
            polygon = shapely.Polygon(np.asarray(contour, dtype=float))
        except (TypeError, ValueError, shapely.errors.ShapelyError):
            polygon = None
        if polygon is None or polygon.is_empty or not polygon.is_valid:
            skipped += 1
            continue
        geometry.append(polygon)
        kinds.append(nucleus.get("type"))
    if skipped:
        logger.warning("%s: %d of %d shapes are not valid polygons and are skipped", path, skipped, len(nuclei))
    if not geometry:
        raise ValueError(f"{path}: no valid nucleus contours.")
    gdf = gpd.GeoDataFrame(geometry=geometry)
    if any(k is not None for k in kinds):
        gdf[K.CELL_TYPE_KEY] = pd.Categorical([str(k) for k in kinds])
    return gdf


def _read_label_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            labels = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            labels = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                labels = np.asarray(im)
    except (OSError, ValueError, EOFError) as err:  # truncated or not an image: numpy / tifffile / PIL errors
        raise ValueError(f"{path}: could not read it as a label image ({type(err).__name__}: {err}).") from err
    labels = np.squeeze(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: a label image must be a 2-D integer array, got {labels.dtype} {labels.shape}.")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:  # they would be dropped as background
        raise ValueError(
            f"{path}: a label image holds 0 for background and positive labels for cells; it has negative "
            f"values (down to {labels.min()})."
        )
    return labels


def _from_labels(path: Path, shape: tuple[int, int]):
    from bitro._vectorise import labels_to_polygons

    labels = _read_label_image(path)
    if labels.shape != shape:
        raise ValueError(
            f"{path}: label image is {labels.shape[1]} x {labels.shape[0]} px (width x height) but level 0 of "
            f"the image is {shape[1]} x {shape[0]} px; segment that image or resample the labels to its size."
        )
    geometry, _, skipped = labels_to_polygons(labels)
    if skipped:
        logger.warning("%s: %d labels give no valid polygon and are skipped", path, skipped)
    if not len(geometry):
        raise ValueError(f"{path}: no labelled nuclei.")
    import geopandas as gpd

    return gpd.GeoDataFrame(geometry=geometry)
