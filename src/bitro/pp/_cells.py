"""The cells layer every preprocessing step reads and writes.

A segmentation writes polygons to a shapes element ``{method}_boundaries`` (in level-0 pixels of
the image, with the image's transformations) and a table ``bitro_cells`` annotating it
(``instance_key="cell_id"``, ``obs``: centroid in pixels and µm, area in µm²); both keys, the
image and its pixel size are recorded in ``sdata.attrs["bitro"]``. Later steps add columns
(``spot_id``), ``obsm["bitro_features"]`` and ``obsp`` graphs to the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro._logging import logger


def bitro_info(sdata) -> dict:
    """``sdata.attrs["bitro"]``, or a clear error if no bitro reader made this object."""
    info = sdata.attrs.get(K.ATTRS_KEY)
    if not info:
        raise ValueError(
            "`sdata` has no attrs['bitro']: read it with a bt.io reader or bt.datasets, or record "
            "image_key, mpp and coordinate_system there."
        )
    return info


def image_key(sdata, key: str | None = None) -> str:
    """The image to work on: ``key``, or the one the reader recorded."""
    key = key if key is not None else bitro_info(sdata).get(K.ATTR_IMAGE)
    if key is None or key not in sdata.images:
        raise KeyError(f"`image_key`: {key!r} is not an image of `sdata` (images: {list(sdata.images)}).")
    return key


def image_mpp(sdata, key: str) -> float:
    """µm per level-0 pixel of image ``key`` in the recorded (µm) coordinate system."""
    from spatialdata.transformations import get_transformation

    info = bitro_info(sdata)
    element = sdata.images[key]
    level0 = element["scale0"]["image"] if hasattr(element, "keys") else element
    cs = info[K.ATTR_COORDINATE_SYSTEM]
    matrix = get_transformation(level0, to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def write_cells(sdata, polygons, *, image: str, method: str, key_added: str | None = None) -> tuple[str, str]:
    """Add nucleus ``polygons`` (level-0 pixels of ``image``) as ``{method}_boundaries`` and the ``bitro_cells`` table.

    Replaces a previous cells layer of the same names; returns ``(shapes_key, table_key)``.
    """
    import anndata as ad
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    shapes_key = key_added or f"{method}{K.BOUNDARIES_SUFFIX}"
    element = sdata.images[image]
    level0 = element["scale0"]["image"] if hasattr(element, "keys") else element
    transformations = get_transformation(level0, get_all=True)
    mpp = image_mpp(sdata, image)
    geometry = np.asarray(polygons.geometry if hasattr(polygons, "geometry") else polygons, dtype=object)
    cell_ids = np.arange(len(geometry))
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=geometry, index=cell_ids), transformations=transformations)
    centroid = shapely.get_coordinates(shapely.centroid(geometry)) if len(geometry) else np.zeros((0, 2))
    obs = pd.DataFrame(
        {
            K.CELL_ID_KEY: cell_ids,
            K.REGION_KEY: pd.Categorical([shapes_key] * len(geometry)),
            K.CENTROID_X_PX: centroid[:, 0],
            K.CENTROID_Y_PX: centroid[:, 1],
            K.CENTROID_X_UM: centroid[:, 0] * mpp,
            K.CENTROID_Y_UM: centroid[:, 1] * mpp,
            K.AREA_UM2_KEY: shapely.area(geometry) * mpp**2 if len(geometry) else np.zeros(0),
        },
        index=[f"cell{i}" for i in cell_ids],
    )
    table = TableModel.parse(
        ad.AnnData(obs=obs), region=shapes_key, region_key=K.REGION_KEY, instance_key=K.CELL_ID_KEY
    )
    add_element(sdata, shapes_key, shapes)
    add_element(sdata, K.CELLS_TABLE_KEY, table)
    info = dict(bitro_info(sdata))
    info.update({K.ATTR_CELLS_SHAPES: shapes_key, K.ATTR_CELLS_TABLE: K.CELLS_TABLE_KEY, K.ATTR_CELLS_IMAGE: image})
    sdata.attrs[K.ATTRS_KEY] = info
    if sdata.is_backed():
        sdata.write_attrs()
    logger.info("%d cells written to %s and table %s", len(geometry), shapes_key, K.CELLS_TABLE_KEY)
    return shapes_key, K.CELLS_TABLE_KEY


def add_element(sdata, name: str, element) -> None:
    """Put ``element`` into ``sdata`` under ``name``; when ``sdata`` is backed by zarr, write it there too.

    spatialdata refuses to overwrite an element inside its own store, so an existing one is
    deleted from disk first (spatialdata #1237).
    """
    import warnings

    sdata[name] = element
    if sdata.is_backed():
        if any(path.endswith(f"/{name}") for path in sdata.elements_paths_on_disk()):
            sdata.delete_element_from_disk(name)
        with warnings.catch_warnings():
            # anndata announces a future zarr default on every table it writes: nothing to act on
            warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
            sdata.write_element(name)


def clear_cells(sdata, shapes_key: str) -> None:
    """Remove a cells layer (``shapes_key`` and ``bitro_cells``), in memory and on disk, so no stale cells remain."""
    for name in (shapes_key, K.CELLS_TABLE_KEY):
        if name in sdata:
            if sdata.is_backed() and any(path.endswith(f"/{name}") for path in sdata.elements_paths_on_disk()):
                sdata.delete_element_from_disk(name)
            del sdata[name]
            logger.info("removed the previous cells layer element %s", name)
    info = dict(bitro_info(sdata))
    for key in (K.ATTR_CELLS_SHAPES, K.ATTR_CELLS_TABLE, K.ATTR_CELLS_IMAGE):
        info.pop(key, None)
    sdata.attrs[K.ATTRS_KEY] = info
