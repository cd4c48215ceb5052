"""Apply a BiTro model: spot, slide and cell predictions written into the SpatialData's tables."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

from ._preprocess import ensure_preprocessed

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro

PSEUDO_SPOTS_SUFFIX = "_pseudo_spots"


def predict(
    sdata: SpatialData,
    model: BiTro | str | os.PathLike | None = None,
    *,
    target: Literal["spot", "bulk"] | None = None,
    key_added: str = K.PRED_KEY,
    batch_size: int = 64,
    max_mpp_ratio: float = 2.0,
    copy: bool = False,
) -> SpatialData | None:
    """Predict gene expression of every spot (or the whole slide) and of every cell from the H&E image.

    Runs each preprocessing step the model needs that has not run yet (segmentation, cell
    features, cell-to-spot assignment, cell graph) with the model's own settings. Data without
    spots (an H&E image alone) get pseudo-spots on a hexagonal grid with the training spots'
    pitch and radius, kept where cells are (shapes ``{sample_id}_pseudo_spots`` and a spots table
    without genes). A spot without any cell is predicted as NaN and counted in the log and in
    ``uns[key_added]``, never as zero.

    Parameters
    ----------
    sdata
        Spatial data of one section or slide (see :func:`bitro.tl.fit`).
    model
        A trained model, the folder of a saved one, or ``None`` for the bundled default
        (:func:`bitro.models.default_model`).
    target
        ``"spot"`` or ``"bulk"`` head; defaults to the head the model was trained with.
    key_added
        ``obsm`` and ``uns`` key of the predictions.
    batch_size
        Sequences (spots or tiles) per forward pass; predictions are streamed, so memory is bounded
        by this, not by the number of cells.
    max_mpp_ratio
        Refuse data whose pixel size differs from the training data's by more than this factor
        (features are in µm, but intensity and texture still change with resolution).
    copy
        Return a modified copy instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``table.obsm[key_added]``: ``(n_spots, n_genes)`` for spots, ``(1, n_genes)`` for a slide
      (a 1-row table annotating the tissue is created if the slide has none), log1p(CP10k);
    - ``bitro_cells.obsm[key_added]``: ``(n_cells, n_genes)`` per-cell predictions (NaN for cells
      in no bag), ``bitro_cells.obs[f"{key_added}_weight"]``: each cell's pooling weight within its
      bag (the bag prediction is the weighted mean of its cells' predictions);
    - ``uns[key_added]`` of both tables: ``{"var_names": {gene: column}, "params": {...}}``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st()
    >>> bt.tl.predict(sdata, model)  # doctest: +SKIP
    >>> sdata["table"].obsm["bitro_pred"].shape  # doctest: +SKIP
    """
    from bitro._validate import check_float, check_int, check_name
    from bitro.models._config import data_settings
    from bitro.models._data import slide_bags, spot_bags

    key_added = check_name(key_added, "key_added")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    max_mpp_ratio = check_float(max_mpp_ratio, "max_mpp_ratio", min_value=1)
    model = resolve_model(model)
    head = target or model.head
    if head not in model.config["genes"]:
        raise ValueError(f"`target`: the model has no {head!r} head (heads: {list(model.config['genes'])}).")
    sdata = _sdata.copy_or_self(sdata, copy)
    info = _sdata.info(sdata)
    sample = _sdata.sample_id(sdata)
    _check_mpp(info, model, max_mpp_ratio)
    prep = model.config["preprocessing"]
    if head == "spot" and (info.get(K.ATTR_SPOTS) is None or info.get(K.ATTR_SPOTS) not in sdata.shapes):
        # cells first (no spots yet: "bulk" skips the assignment), then pseudo-spots where they are
        ensure_preprocessed(sdata, prep, kind="bulk", features=model.config["features"])
        _add_pseudo_spots(sdata, model)
    ensure_preprocessed(sdata, prep, kind=head, features=model.config["features"])
    info = _sdata.info(sdata)

    data = data_settings(head, model.config.get("data"))
    bags = (spot_bags if head == "spot" else slide_bags)(sdata, data)
    if bags.x.shape[1] != model.config["architecture"]["n_features"]:
        raise ValueError(
            f"{sample}: {bags.x.shape[1]} cell features, the model expects {model.config['architecture']['n_features']}."
        )
    bag_pred, cell_pred, weight = model.predict_bags(bags, head=head, batch_size=batch_size)

    genes = list(model.config["genes"][head])
    params = {
        "target": head,
        "n_genes": len(genes),
        "model_samples": list(model.config["training"].get("samples", [])),
        "model_version": str(model.config.get("bitro_version", "unsaved")),
        "units": "log1p(CP10k)",
    }
    uns = {"var_names": {g: i for i, g in enumerate(genes)}, "params": params}

    cells_key = _sdata.cells_table_key(sdata)
    cells = _sdata.editable_table(sdata, cells_key)
    full = np.full((cells.n_obs, len(genes)), np.nan, np.float32)
    full[bags.cell_index] = cell_pred
    cells.obsm[key_added] = full
    w = np.full(cells.n_obs, np.nan, np.float32)
    w[bags.cell_index] = weight
    cells.obs[f"{key_added}_weight"] = w
    cells.uns[key_added] = uns

    table_key = _sdata.recorded(sdata, K.ATTR_TABLE)
    if head == "bulk" and table_key not in sdata.tables:
        table_key, table = K.TABLE_KEY, _slide_table(sdata)
    else:
        table = _sdata.editable_table(sdata, table_key)
    if table.n_obs != len(bag_pred):
        raise ValueError(f"{sample}: table {table_key!r} has {table.n_obs} rows for {len(bag_pred)} predicted bags.")
    empty = ~np.isfinite(bag_pred).all(axis=1)
    table.obsm[key_added] = bag_pred
    table.uns[key_added] = dict(uns, params=dict(params, n_bags_without_cells=int(empty.sum())))
    _sdata.write(sdata, {cells_key: cells, table_key: table}, attrs={K.ATTR_TABLE: table_key})
    if empty.any():
        logger.warning(
            "%s: %d of %d %s have no cell and are predicted as NaN",
            sample,
            int(empty.sum()),
            len(bag_pred),
            "spots" if head == "spot" else "slides",
        )
    n_cells = int(np.isfinite(full).all(axis=1).sum())
    logger.info(
        "%s: predicted %d genes for %d %s and %d cells (obsm[%r])",
        sample,
        len(genes),
        int((~empty).sum()),
        "spots" if head == "spot" else "slide",
        n_cells,
        key_added,
    )
    return sdata if copy else None


def resolve_model(model) -> BiTro:
    """``model`` as a :class:`~bitro.models.BiTro`: itself, loaded from a folder, or the bundled default for ``None``."""
    from bitro.models import BiTro, default_model

    if model is None:
        return default_model()
    if isinstance(model, str | os.PathLike):
        return BiTro.load(model)
    if not isinstance(model, BiTro):
        raise TypeError(
            f"`model` must be a bitro.models.BiTro, the folder of a saved model, or None (the bundled default); "
            f"got {type(model).__name__}."
        )
    return model


def _check_mpp(info: dict, model: BiTro, max_ratio: float) -> None:
    trained, here = model.config.get("mpp"), info.get(K.ATTR_MPP)
    if trained is None or here is None or not math.isfinite(float(here)):
        return
    ratio = max(float(here) / trained, trained / float(here))
    if ratio > max_ratio:
        raise ValueError(
            f"the image has {float(here):.3g} µm/px but the model was trained at {trained:.3g} µm/px "
            f"(ratio {ratio:.2f} > max_mpp_ratio={max_ratio}). Cell features are measured in µm, but "
            "intensity and texture change with resolution: resample the image, or raise `max_mpp_ratio` "
            "to accept the shift."
        )
    if ratio > 1.25:
        logger.warning(
            "pixel size %.3g µm/px differs from the model's %.3g µm/px (ratio %.2f): features are computed in µm",
            float(here),
            trained,
            ratio,
        )


def _add_pseudo_spots(sdata, model: BiTro) -> None:
    """Pseudo-spots on a hexagonal grid with the training spots' pitch and radius, where cells are."""
    import anndata as ad
    import geopandas as gpd
    import shapely
    from scipy.spatial import cKDTree
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    geometry = model.config.get("spots")
    if not geometry:
        raise ValueError("the model has no spot geometry to lay pseudo-spots with (it was not trained on spots).")
    sample, cs = _sdata.sample_id(sdata), _sdata.coordinate_system(sdata)
    _, xy = _sdata.cell_centroids_um(sdata)
    pitch, radius = geometry["pitch_um"], geometry["radius_um"]
    lo, hi = xy.min(axis=0) - pitch, xy.max(axis=0) + pitch
    dy = pitch * math.sqrt(3) / 2
    rows = []
    for i, y in enumerate(np.arange(lo[1], hi[1] + dy, dy)):
        xs = np.arange(lo[0] + (i % 2) * pitch / 2, hi[0], pitch)  # odd rows shifted by half a pitch
        rows.append(np.column_stack([xs, np.full_like(xs, y)]))
    pts = np.concatenate(rows)
    factor = model.config["preprocessing"]["assign"].get("factor", 1.5)
    near = cKDTree(xy).query_ball_point(pts, factor * radius, return_length=True)
    pts = pts[np.asarray(near) > 0]
    key = f"{sample}{PSEUDO_SPOTS_SUFFIX}"
    ids = np.arange(len(pts))
    gdf = gpd.GeoDataFrame({"radius": np.full(len(pts), radius)}, geometry=shapely.points(pts), index=ids)
    shapes = ShapesModel.parse(gdf, transformations={cs: Identity()})
    obs = pd.DataFrame(
        {K.REGION_KEY: pd.Categorical([key] * len(ids)), K.SPOT_ID_KEY: ids}, index=[f"pseudo{i}" for i in ids]
    )
    table = TableModel.parse(
        ad.AnnData(np.zeros((len(ids), 0), np.float32), obs=obs),
        region=key,
        region_key=K.REGION_KEY,
        instance_key=K.SPOT_ID_KEY,
    )
    table_key = _sdata.recorded(sdata, K.ATTR_TABLE)
    if table_key in sdata.tables:
        table_key = f"{sample}{PSEUDO_SPOTS_SUFFIX}_table"
    _sdata.write(sdata, {key: shapes, table_key: table}, attrs={K.ATTR_SPOTS: key, K.ATTR_TABLE: table_key})
    logger.info(
        "%s: no spots; %d pseudo-spots (pitch %.0f µm, radius %.0f µm) where cells are", sample, len(ids), pitch, radius
    )


def _slide_table(sdata):
    """A 1-row table (no genes) for a slide's prediction, annotating its tissue polygon when it has one."""
    import anndata as ad
    from spatialdata.models import TableModel

    sample = _sdata.sample_id(sdata, "slide")
    tissue = _sdata.info(sdata).get(K.ATTR_TISSUE)
    adata = ad.AnnData(np.zeros((1, 0), np.float32), obs=pd.DataFrame({K.SAMPLE_ID_KEY: [sample]}, index=[sample]))
    if tissue is not None and tissue in sdata.shapes and len(sdata.shapes[tissue]) == 1:
        adata.obs[K.REGION_KEY] = pd.Categorical([tissue])
        adata.obs[K.TISSUE_ID_KEY] = sdata.shapes[tissue].index.to_numpy()
        adata = TableModel.parse(adata, region=tissue, region_key=K.REGION_KEY, instance_key=K.TISSUE_ID_KEY)
    else:
        adata = TableModel.parse(adata)
    return adata
