"""Turn a synthetic section into SpatialData elements: image, true cells, spots or tissue, tables.

Everything is stored in full-resolution pixels and mapped to the coordinate system named after
the sample (in µm) by a scale of ``mpp`` and a translation: a non-identity transformation on
purpose, so code that assumes identity or a ``"global"`` system fails on the test data.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from bitro import _constants as K

from ._cell_types import CellType, Programs
from ._layout import Section
from ._render import Scene, Stain

CHUNK = 1024
EAGER_MAX_PIXELS = 64_000_000  # above this the image stays a lazy dask array
ORIGIN_UM = (1500.0, 800.0)  # stage position of the image's corner


def to_spatialdata(
    section: Section,
    *,
    sample_id: str,
    mpp: float,
    types: tuple[CellType, ...],
    programs: Programs,
    stain: Stain,
    image_suffix: str,
    spots: pd.DataFrame | None,
    spot_radius_um: float | None,
    uns: dict,
    lazy: bool | None,
    rng: np.random.Generator,
):
    """The SpatialData of one section: spots (``spots`` given, µm centres) or a whole-tissue bag."""
    from spatialdata import SpatialData
    from spatialdata.models import TableModel
    from spatialdata.transformations import Scale, Sequence, Translation

    from bitro import __version__

    transformations = {
        sample_id: Sequence([Scale([mpp, mpp], axes=("x", "y")), Translation(list(ORIGIN_UM), axes=("x", "y"))])
    }
    image_key = f"{sample_id}{image_suffix}"
    cells_key = f"{sample_id}{K.TRUE_CELLS_SUFFIX}"
    image = _image(section, types=types, stain=stain, mpp=mpp, lazy=lazy, rng=rng, transformations=transformations)
    cell_shapes, cell_obs = _true_cells(
        section, mpp=mpp, types=types, region=cells_key, transformations=transformations
    )
    var = pd.DataFrame(
        {K.MARKER_OF_KEY: pd.Categorical([types[m].name if m >= 0 else "none" for m in programs.marker_of])},
        index=[f"gene{j:04d}" for j in range(programs.rates.shape[1])],
    )
    if spots is not None:
        region, bag_shapes, bag, bag_obs, instance_key, obsm = _spot_bags(
            spots, cell_obs, radius_um=spot_radius_um, mpp=mpp, region=sample_id, transformations=transformations
        )
    else:
        region, bag_shapes, bag, bag_obs, instance_key, obsm = _tissue_bag(
            section, sample_id=sample_id, mpp=mpp, transformations=transformations
        )
    table = _bag_table(section, bag, bag_obs, obsm, var=var, region=region, n_types=len(types), uns=uns, rng=rng)
    true_cells = _true_cells_table(section, cell_obs, var=var, programs=programs, uns=uns)
    return SpatialData(
        images={image_key: image},
        shapes={cells_key: cell_shapes, region: bag_shapes},
        tables={
            K.TABLE_KEY: TableModel.parse(table, region=region, region_key=K.REGION_KEY, instance_key=instance_key),
            K.TRUE_CELLS_TABLE_KEY: TableModel.parse(
                true_cells, region=cells_key, region_key=K.REGION_KEY, instance_key=K.CELL_ID_KEY
            ),
        },
        attrs={
            K.ATTRS_KEY: {
                K.ATTR_SAMPLE_ID: sample_id,
                K.ATTR_IMAGE: image_key,
                K.ATTR_SPOTS if spots is not None else K.ATTR_TISSUE: region,
                K.ATTR_TABLE: K.TABLE_KEY,
                K.ATTR_TRUE_CELLS: cells_key,
                K.ATTR_MPP: mpp,
                K.ATTR_IMAGE_MPP: mpp,
                K.ATTR_COORDINATE_SYSTEM: sample_id,
                K.ATTR_VERSION: __version__,
            }
        },
    )


def _image(section: Section, *, types, stain: Stain, mpp: float, lazy: bool | None, rng, transformations):
    """Multiscale, chunked RGB image; rendered now, or lazily chunk by chunk when large."""
    from spatialdata.models import Image2DModel

    cells = section.cells
    probs = np.exp(section.region_logits - section.region_logits.max(axis=0))
    probs /= probs.sum(axis=0)
    scene = Scene(
        boundaries=cells.boundary / mpp,
        hematoxylin=cells.hematoxylin,
        texture=np.array([t.texture for t in types])[cells.cell_type],
        rim=np.array([t.rim for t in types])[cells.cell_type],
        tissue=np.asarray(section.tissue.exterior.coords) / mpp,
        eosin_grid=np.tensordot(np.array([t.eosin for t in types]), probs, axes=1),
        eosin_step=section.region_step_um / mpp,
        stain=stain,
        grain_px=max(0.8 / mpp, 1.0),
        seed=int(rng.integers(2**31)),
    )
    shape = (int(np.ceil(section.height_um / mpp)), int(np.ceil(section.width_um / mpp)))
    data = scene.to_dask(shape, CHUNK)
    if not (lazy if lazy is not None else shape[0] * shape[1] > EAGER_MAX_PIXELS):
        data = data.compute(scheduler="threads")
    scale_factors = [2]  # halve until the smallest level is about 256-512 px
    while max(shape) // 2 ** (len(scale_factors) + 1) >= 256:
        scale_factors.append(2)
    return Image2DModel.parse(
        data,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors,
        chunks=(3, CHUNK, CHUNK),
        transformations=transformations,
    )


def _true_cells(section: Section, *, mpp: float, types, region: str, transformations):
    """True nucleus polygons (shapes element) and their per-cell ``obs``."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    cells = section.cells
    polygons = shapely.polygons(cells.boundary / mpp)
    centroid = shapely.get_coordinates(shapely.centroid(polygons))
    cell_ids = np.arange(len(cells))
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=polygons, index=cell_ids), transformations=transformations)
    obs = pd.DataFrame(
        {
            K.CELL_ID_KEY: cell_ids,
            K.REGION_KEY: pd.Categorical([region] * len(cells)),
            K.CELL_TYPE_KEY: pd.Categorical.from_codes(cells.cell_type, categories=[t.name for t in types]),
            K.CENTROID_X_PX: centroid[:, 0],
            K.CENTROID_Y_PX: centroid[:, 1],
            K.CENTROID_X_UM: centroid[:, 0] * mpp,
            K.CENTROID_Y_UM: centroid[:, 1] * mpp,
            K.AREA_UM2_KEY: shapely.area(polygons) * mpp**2,
            "state": cells.state,
        },
        index=[f"cell{i}" for i in cell_ids],
    )
    return shapes, obs


def _spot_bags(
    spots: pd.DataFrame, cell_obs: pd.DataFrame, *, radius_um: float, mpp: float, region: str, transformations
):
    """Spot circles; a cell belongs to the spot whose circle contains its centroid (spots never overlap)."""
    import geopandas as gpd
    from scipy.spatial import cKDTree
    from spatialdata.models import ShapesModel

    centres_um = spots[["x_um", "y_um"]].to_numpy()
    dist, nearest = cKDTree(centres_um).query(cell_obs[[K.CENTROID_X_UM, K.CENTROID_Y_UM]].to_numpy())
    bag = np.where(dist <= radius_um, nearest, -1)
    cell_obs[K.SPOT_ID_KEY] = pd.array(np.where(bag >= 0, bag, 0), dtype="Int64")
    cell_obs.loc[bag < 0, K.SPOT_ID_KEY] = pd.NA
    centres_px = centres_um / mpp
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(len(spots), radius_um / mpp)},
            geometry=gpd.points_from_xy(centres_px[:, 0], centres_px[:, 1]),
            index=np.arange(len(spots)),
        ),
        transformations=transformations,
    )
    obs = spots[[K.ARRAY_ROW_KEY, K.ARRAY_COL_KEY]].copy()
    obs[K.SPOT_ID_KEY] = np.arange(len(spots))
    return region, shapes, bag, obs, K.SPOT_ID_KEY, {"spatial": centres_px}


def _tissue_bag(section: Section, *, sample_id: str, mpp: float, transformations):
    """The tissue polygon; every cell of the slide is in its one bag."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    polygon = shapely.affinity.scale(section.tissue, 1 / mpp, 1 / mpp, origin=(0, 0))
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=[polygon], index=[0]), transformations=transformations)
    obs = pd.DataFrame({K.TISSUE_ID_KEY: [0], K.SAMPLE_ID_KEY: [sample_id]}, index=[sample_id])
    bag = np.zeros(len(section.cells), dtype=int)
    return f"{sample_id}{K.TISSUE_SUFFIX}", shapes, bag, obs, K.TISSUE_ID_KEY, {}


def _bag_table(section: Section, bag: np.ndarray, obs: pd.DataFrame, obsm: dict, *, var, region, n_types, uns, rng):
    """Bags x genes: counts are Poisson draws of the summed true expression of each bag's cells."""
    import anndata as ad
    from scipy import sparse

    cells = section.cells
    member = np.flatnonzero(bag >= 0)
    membership = sparse.csr_matrix((np.ones(member.size), (bag[member], member)), shape=(len(obs), len(cells)))
    rate = np.asarray(membership @ cells.expression.astype(np.float64))
    counts = rng.poisson(rate).astype(np.float32)
    n_cells = np.asarray(membership.sum(axis=1)).ravel().astype(int)
    obs[K.REGION_KEY] = pd.Categorical([region] * len(obs))
    obs[K.N_CELLS_KEY] = n_cells
    obsm[K.TYPE_FRACTION_KEY] = (
        np.asarray(membership @ np.eye(n_types)[cells.cell_type]) / np.maximum(n_cells, 1)[:, None]
    )
    return ad.AnnData(
        X=sparse.csr_matrix(counts) if len(obs) > 1 else counts,
        obs=obs,
        var=var.copy(),
        layers={K.TRUE_RATE_LAYER: rate.astype(np.float32)},
        obsm=obsm,
        uns=copy.deepcopy(uns),
    )


def _true_cells_table(section: Section, obs: pd.DataFrame, *, var, programs: Programs, uns: dict):
    """Cells x genes of true expression (mean counts), with the type programs in ``varm``."""
    import anndata as ad

    return ad.AnnData(
        X=section.cells.expression,
        obs=obs,
        var=var.copy(),
        varm={K.TYPE_PROGRAM_KEY: programs.rates.T.copy()},
        uns=copy.deepcopy(uns),
    )
