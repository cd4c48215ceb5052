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
    uncertainty: bool = True,
    n_samples: int = 8,
    batch_size: int = 64,
    max_mpp_ratio: float = 2.0,
    copy: bool = False,
) -> SpatialData | None:
    """Predict gene expression of every spot (or the whole slide) and of every cell from the H&E image.

    Runs each preprocessing step the model needs that has not run yet (segmentation, cell
    features, cell-to-spot assignment, cell graph) with the model's own settings. Every cell is
    predicted: cells outside the spots get bags of their own (pseudo-spots covering them, with the
    spots' size and context), in the same pass; the spots keep their own predictions. Data without
    spots (an H&E image alone) get pseudo-spots on a hexagonal grid with the training spots' pitch
    and radius, where cells are (shapes ``{sample_id}_pseudo_spots``). A spot without a cell is NaN
    (counted in the log and in ``uns``), never zero.

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
        Prefix of the prediction tables.
    uncertainty
        Also estimate each prediction's standard deviation: Monte Carlo dropout (``n_samples`` extra
        passes with dropout on), plus for spots and slides the per-gene noise the model measured on
        its validation data (so a nominal 80 % interval, prediction ± 1.28 sd, covers about 80 % of
        measured values; the model records the coverage it reached).
    n_samples
        Monte Carlo samples for ``uncertainty`` (each costs one more pass).
    batch_size
        Sequences (spots or tiles) per forward pass; predictions are streamed, so memory is bounded
        by this, not by the number of cells.
    max_mpp_ratio
        Refuse cell features measured at a pixel size that differs from the training data's by more
        than this factor (intensity and texture change with resolution; see ``cell_features(mpp=)``).
    copy
        Return a modified copy instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes two tables (predicted log1p(CP10k),
    clipped at 0, genes as ``var_names``, ``obsm["spatial"]`` in µm, ``layers["std"]`` with
    ``uncertainty``; ``var``: each gene's validation Pearson ``val_pearson`` with its 95 % interval
    and whether it is ``predictable`` (interval above 0), when the model measured them):

    - ``f"{key_added}_spots"`` annotating the spots' shapes (one row per spot, ``n_cells``), or for
      a slide ``f"{key_added}_slide"`` annotating its tissue polygon;
    - ``f"{key_added}_cells"`` annotating the cell boundaries: every cell, its ``bag`` (spot or
      pseudo-spot), ``in_spot`` and its pooling ``weight`` within the bag (a bag's prediction is the
      weighted mean of its cells' predictions);

    and records both keys in ``sdata.attrs["bitro"]`` (:mod:`bitro.get` reads them).

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9)
    >>> bt.tl.predict(sdata)  # the bundled default model
    >>> sdata["bitro_pred_cells"].n_obs == sdata["bitro_cells"].n_obs
    True
    """
    from bitro._validate import check_float, check_int, check_name
    from bitro.models._config import data_settings
    from bitro.models._data import slide_bags, spot_bags

    from ._tables import cell_table, gene_var, slide_table, spot_table

    key_added = check_name(key_added, "key_added")
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    n_samples = check_int(n_samples, "n_samples", min_value=2) if uncertainty else 0
    max_mpp_ratio = check_float(max_mpp_ratio, "max_mpp_ratio", min_value=1)
    model = resolve_model(model)
    head = target or model.head
    if head not in model.config["genes"]:
        raise ValueError(f"`target`: the model has no {head!r} head (heads: {list(model.config['genes'])}).")
    _check_prediction_keys(sdata, [f"{key_added}_{K.PRED_LEVELS[head]}", f"{key_added}_cells"])
    sdata = _sdata.copy_or_self(sdata, copy)
    info = _sdata.info(sdata)
    sample = _sdata.sample_id(sdata)
    prep = model.config["preprocessing"]
    spots_key, table_key = info.get(K.ATTR_SPOTS), _sdata.spots_table_key(sdata)
    if head == "spot" and (spots_key not in sdata.shapes or table_key not in sdata.tables):
        # no spots (or spot circles without their table): cells first ("bulk" skips the assignment),
        # then pseudo-spots where they are
        ensure_preprocessed(sdata, prep, kind="bulk", features=model.config["features"])
        _add_pseudo_spots(sdata, model)
    ensure_preprocessed(sdata, prep, kind=head, features=model.config["features"])
    _check_mpp(sdata, model, max_mpp_ratio)

    data = data_settings(head, model.config.get("data"))
    factor = float(prep.get("assign", {}).get("factor", 1.5))
    bags = spot_bags(sdata, data, cover=factor) if head == "spot" else slide_bags(sdata, data)
    if bags.x.shape[1] != model.config["architecture"]["n_features"]:
        raise ValueError(
            f"{sample}: {bags.x.shape[1]} cell features, the model expects {model.config['architecture']['n_features']}."
        )
    prediction = model.predict_bags(bags, head=head, batch_size=batch_size, n_samples=n_samples)

    genes = list(model.config["genes"][head])
    calibration = (model.config.get("calibration") or {}).get(head)
    var = gene_var(genes, calibration)
    n_bags = bags.n_spots if bags.n_spots is not None else bags.n_bags
    bag_std = None
    if prediction.bags_std is not None:
        noise = var["noise_sd"].to_numpy() if "noise_sd" in var else 0.0
        bag_std = np.sqrt(prediction.bags_std[:n_bags] ** 2 + np.square(noise))
    empty = ~np.isfinite(prediction.bags[:n_bags]).all(axis=1)
    params = {
        "target": head,
        "n_genes": len(genes),
        "units": "log1p(CP10k)",
        "model_version": str(model.config.get("bitro_version", "unsaved")),
        "uncertainty": "mc_dropout+validation_noise"
        if uncertainty and calibration
        else ("mc_dropout" if uncertainty else "none"),
        "n_samples": int(n_samples),
        "n_bags_without_cells": int(empty.sum()),
    }
    if calibration and "coverage_80" in calibration:
        params["validation_coverage_80"] = float(calibration["coverage_80"])
    uns = {"params": params}
    level = K.PRED_LEVELS[head]
    bag_key, cells_key = f"{key_added}_{level}", f"{key_added}_cells"
    if head == "spot":
        bag_table = spot_table(
            sdata, bags, prediction, observed_key=_sdata.spots_table_key(sdata), var=var, uns=uns, std=bag_std
        )
    else:
        bag_table = slide_table(sdata, prediction, var=var, uns=uns, std=bag_std)
    cells_id = _sdata.info(sdata).get(K.ATTR_CELLS_ID)  # which cells layer these predictions are of
    cells = cell_table(sdata, bags, prediction, var=var, uns={**uns, K.ATTR_CELLS_ID: cells_id} if cells_id else uns)
    _sdata.write(
        sdata, {bag_key: bag_table, cells_key: cells}, attrs={K.ATTR_PRED_SPOTS: bag_key, K.ATTR_PRED_CELLS: cells_key}
    )
    if empty.any():
        logger.warning("%s: %d of %d %s have no cell and are predicted as NaN", sample, int(empty.sum()), n_bags, level)
    n_outside = int((~cells.obs["in_spot"]).sum()) if head == "spot" else 0
    logger.info(
        "%s: predicted %d genes for %d %s and %d cells (%d outside the spots) into %s and %s",
        sample,
        len(genes),
        int((~empty).sum()),
        level,
        int(np.isfinite(cells.X).all(axis=1).sum()),
        n_outside,
        bag_key,
        cells_key,
    )
    return sdata if copy else None


def _check_prediction_keys(sdata: SpatialData, names: list[str]) -> None:
    """The prediction tables may replace earlier predictions, never another table (e.g. the cells or the spots)."""
    info = sdata.attrs.get(K.ATTRS_KEY) or {}
    protected = {
        info.get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY),
        info.get(K.ATTR_TABLE, K.TABLE_KEY),
        info.get(K.ATTR_PSEUDO_TABLE),
    }
    for name in names:
        _sdata.check_element_name(sdata, name, "tables", argument="key_added")
        table = sdata.tables.get(name)
        written_here = table is not None and K.PRED_KEY in table.uns  # predict's tables carry their settings there
        if name in protected or (table is not None and not written_here):
            raise ValueError(
                f"`key_added`: the prediction table {name!r} would replace a table of `sdata` that is not a "
                "prediction; choose another prefix."
            )


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


def _check_mpp(sdata, model: BiTro, max_ratio: float) -> None:
    """Refuse features measured at a pixel size far from the model's (those of the features, else the image's)."""
    cells = sdata.tables[_sdata.cells_table_key(sdata)]
    params = cells.uns.get(_sdata.recorded(sdata, K.ATTR_FEATURES), {}).get("params", {})
    trained = (model.config.get("features") or {}).get("params", {}).get("mpp", model.config.get("mpp"))
    here = params.get("mpp", _sdata.info(sdata).get(K.ATTR_MPP))
    if trained is None or here is None or not math.isfinite(float(here)):
        return
    ratio = max(float(here) / trained, trained / float(here))
    if ratio > max_ratio:
        raise ValueError(
            f"the cell features were measured at {float(here):.3g} µm/px but the model was trained at {trained:.3g} "
            f"µm/px (ratio {ratio:.2f} > max_mpp_ratio={max_ratio}): intensity and texture change with "
            f"resolution. Measure them at the model's pixel size, bt.pp.cell_features(sdata, mpp={trained:.3g}) "
            "(bt.tl.predict does so when it computes them), or raise `max_mpp_ratio` to accept the shift."
        )
    if ratio > 1.25:
        logger.warning(
            "features measured at %.3g µm/px, the model's at %.3g µm/px (ratio %.2f)", float(here), trained, ratio
        )


def _add_pseudo_spots(sdata, model: BiTro) -> None:
    """Pseudo-spots on a hexagonal grid with the training spots' pitch and radius, where cells are."""
    import anndata as ad
    import geopandas as gpd
    import shapely
    from scipy.spatial import cKDTree
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    from bitro.models._data import hex_grid

    geometry = model.config.get("spots")
    if not geometry:
        raise ValueError("the model has no spot geometry to lay pseudo-spots with (it was not trained on spots).")
    sample, cs = _sdata.sample_id(sdata), _sdata.coordinate_system(sdata)
    _, xy = _sdata.cell_centroids_um(sdata)
    pitch, radius = geometry["pitch_um"], geometry["radius_um"]
    pts = hex_grid(xy.min(axis=0) - pitch, xy.max(axis=0) + pitch, pitch)
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
    # their own table: the sample's measured expression (a slide's bulk profile) stays its table_key
    table_key = f"{sample}{PSEUDO_SPOTS_SUFFIX}_table"
    _sdata.write(sdata, {key: shapes, table_key: table}, attrs={K.ATTR_SPOTS: key, K.ATTR_PSEUDO_TABLE: table_key})
    logger.info(
        "%s: no spots; %d pseudo-spots (pitch %.0f µm, radius %.0f µm) where cells are", sample, len(ids), pitch, radius
    )
