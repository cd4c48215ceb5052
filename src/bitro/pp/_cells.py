"""The cells layer every preprocessing step reads and writes.

A segmentation writes polygons to a shapes element ``{method}_boundaries`` (in level-0 pixels of
the image, with the image's transformations) and a table ``bitro_cells`` annotating it
(``instance_key="cell_id"``, ``obs``: centroid in pixels and µm, area in µm²); both keys, the
image and its pixel size are recorded in ``sdata.attrs["bitro"]``. Later steps add columns
(``spot_id``), ``obsm["bitro_features"]`` and ``obsp`` graphs to the same table.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

DERIVED = (
    K.ATTR_FEATURES,
    K.ATTR_FEATURES_MPP,
    K.ATTR_SPOT_ASSIGNMENT,
    K.ATTR_GRAPH,
    K.ATTR_PRED_CELLS,
    K.ATTR_PRED_SPOTS,
)
"""attrs entries that describe results made from a cells layer: a new layer makes them stale."""


def write_cells(
    sdata,
    polygons,
    *,
    image: str,
    method: str,
    key_added: str | None = None,
    segmentation_mpp: float | None = None,
    segmentation: dict | None = None,
    cell_type=None,
) -> tuple[str, str]:
    """Add nucleus ``polygons`` (level-0 pixels of ``image``) as ``{method}_boundaries`` and the ``bitro_cells`` table.

    Replaces a previous cells layer of the same names (on a backed object the new layer is complete
    on disk before the old one goes); ``segmentation_mpp`` (the pixel size segmented at) and
    ``segmentation`` (the method and options, see ``segmentation_record``) are recorded in attrs;
    ``cell_type`` (one class per polygon, e.g. from an imported file) becomes ``obs["cell_type"]``. What was derived from the previous cells (features, spot assignment, graph: columns of
    the replaced table; predictions) is no longer recorded in attrs, so no step reads it for the new
    cells (the prediction tables stay, unreferenced, until ``bt.tl.predict`` replaces them).
    Returns ``(shapes_key, table_key)``.
    """
    import anndata as ad
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    shapes_key = key_added or f"{method}{K.BOUNDARIES_SUFFIX}"
    transformations = get_transformation(_sdata.level0(sdata.images[image]), get_all=True)
    mpp = _sdata.image_mpp(sdata, image)
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
    if cell_type is not None:  # classes an imported segmentation carries (CellViT, HoVer-Net, QuPath)
        obs[K.CELL_TYPE_KEY] = pd.Categorical(np.asarray(cell_type, dtype=object))
    table = TableModel.parse(
        ad.AnnData(obs=obs), region=shapes_key, region_key=K.REGION_KEY, instance_key=K.CELL_ID_KEY
    )
    previous = (sdata.attrs.get(K.ATTRS_KEY) or {}).get(K.ATTR_CELLS_SHAPES)
    stale = [k for k in DERIVED if k in (sdata.attrs.get(K.ATTRS_KEY) or {})]
    if previous is not None and stale:
        logger.info("new cells replace %s: %s no longer recorded (made from the old cells)", previous, ", ".join(stale))
    _sdata.write(
        sdata,
        {shapes_key: shapes, K.CELLS_TABLE_KEY: table},
        drop_attrs=DERIVED,
        attrs={
            K.ATTR_CELLS_SHAPES: shapes_key,
            K.ATTR_CELLS_TABLE: K.CELLS_TABLE_KEY,
            K.ATTR_CELLS_IMAGE: image,
            K.ATTR_SEGMENTATION_MPP: float(segmentation_mpp) if segmentation_mpp is not None else None,
            K.ATTR_SEGMENTATION: segmentation or {"method": method},
            K.ATTR_CELLS_ID: uuid.uuid4().hex,  # cell ids repeat across segmentations; this does not
        },
    )
    logger.info("%d cells written to %s and table %s", len(geometry), shapes_key, K.CELLS_TABLE_KEY)
    return shapes_key, K.CELLS_TABLE_KEY
