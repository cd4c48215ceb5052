"""Prediction tables: AnnData tables of the SpatialData that annotate the spots (or slide) and the cells.

Each table is genes as ``var_names`` and predicted log1p(CP10k) as ``X`` (dense float32), linked to
its shapes by spatialdata's ``region`` / ``instance_key`` columns, with ``obsm["spatial"]`` (µm of
the section's coordinate system) and, when computed, the uncertainty in ``layers["std"]``. So
``sdata.pl.render_shapes(color=GENE, table_name=...)``, squidpy and scanpy read them as they are.
Per-gene facts of the model (validation Pearson and its interval, calibrated noise) are ``var``
columns. No list of strings is stored in ``uns`` (they break ``AnnData.copy`` after a zarr round
trip with numpy < 2.1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata


def gene_var(genes: list[str], calibration: dict | None) -> pd.DataFrame:
    """``var`` of a prediction table: the genes, and per gene what the model's validation showed."""
    var = pd.DataFrame(index=pd.Index([str(g) for g in genes]))
    for column in ("val_pearson", "val_pearson_lo", "val_pearson_hi", "noise_sd"):
        values = (calibration or {}).get(column)
        if values:
            var[column] = [np.nan if values.get(g) is None else float(values[g]) for g in genes]
    if "val_pearson_lo" in var:
        var["predictable"] = var["val_pearson_lo"].to_numpy() > 0
    return var


def _table(X, obs, var, *, region, instance_key, xy, std, uns):
    import anndata as ad
    from spatialdata.models import TableModel

    adata = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    if std is not None:
        adata.layers[K.STD_LAYER] = np.asarray(std, dtype=np.float32)
    adata.uns[K.PRED_KEY] = uns
    return TableModel.parse(adata, region=region, region_key=K.REGION_KEY, instance_key=instance_key)


def spot_table(sdata, bags, prediction, *, observed_key: str, var: pd.DataFrame, uns: dict, std=None):
    """Predictions of the spots (the first ``bags.n_spots`` bags), annotating the spots' shapes."""
    observed = sdata.tables[observed_key]
    attrs = observed.uns["spatialdata_attrs"]
    region, instance_key = attrs["region"], attrs["instance_key"]
    n = len(observed)
    obs = pd.DataFrame(
        {
            K.REGION_KEY: pd.Categorical(observed.obs[attrs["region_key"]].astype(str).to_numpy()),
            instance_key: observed.obs[instance_key].to_numpy(),
            K.N_CELLS_KEY: np.array([len(c) for c in bags.seq_cells[:n]], dtype=np.int64),
        },
        index=observed.obs_names.copy(),
    )
    return _table(
        prediction.bags[:n], obs, var, region=region, instance_key=instance_key, xy=bags.bag_xy[:n], std=std, uns=uns
    )


def slide_table(sdata, prediction, *, var: pd.DataFrame, uns: dict, std=None):
    """The prediction of a whole slide, one row annotating its tissue polygon (when it has exactly one)."""
    import anndata as ad
    from spatialdata.models import TableModel

    sample = _sdata.sample_id(sdata, "slide")
    tissue = _sdata.info(sdata).get(K.ATTR_TISSUE)
    obs = pd.DataFrame({K.SAMPLE_ID_KEY: [sample]}, index=[sample])
    if tissue is not None and tissue in sdata.shapes and len(sdata.shapes[tissue]) == 1:
        obs[K.REGION_KEY] = pd.Categorical([tissue])
        obs[K.TISSUE_ID_KEY] = sdata.shapes[tissue].index.to_numpy()
        centre = _sdata.apply_affine(
            _sdata.affine_xy(sdata.shapes[tissue], _sdata.coordinate_system(sdata)),
            np.asarray(sdata.shapes[tissue].geometry.iloc[0].centroid.coords),
        )
        return _table(
            prediction.bags, obs, var, region=tissue, instance_key=K.TISSUE_ID_KEY, xy=centre, std=std, uns=uns
        )
    adata = ad.AnnData(X=np.asarray(prediction.bags, np.float32), obs=obs, var=var)
    if std is not None:
        adata.layers[K.STD_LAYER] = np.asarray(std, dtype=np.float32)
    adata.uns[K.PRED_KEY] = uns
    return TableModel.parse(adata)


def cell_table(sdata, bags, prediction, *, var: pd.DataFrame, uns: dict):
    """Predictions of every cell, annotating the cell boundaries: bag, pooling weight, whether it is in a spot."""
    cells_key = _sdata.cells_table_key(sdata)
    cells = sdata.tables[cells_key]
    attrs = cells.uns["spatialdata_attrs"]
    instance_key = attrs["instance_key"]
    n_rows = cells.n_obs
    bag_of_cell = np.full(n_rows, -1, np.int64)
    for s, members in enumerate(bags.seq_cells):
        bag_of_cell[bags.cell_index[members]] = bags.seq_bag[s]
    names = np.asarray(bags.bag_names).astype(str)
    n_spots = bags.n_spots if bags.n_spots is not None else bags.n_bags
    obs = pd.DataFrame(
        {
            K.REGION_KEY: pd.Categorical(cells.obs[attrs["region_key"]].astype(str).to_numpy()),
            instance_key: cells.obs[instance_key].to_numpy(),
            "bag": pd.Categorical(np.where(bag_of_cell >= 0, names[np.maximum(bag_of_cell, 0)], "none")),
            "in_spot": (bag_of_cell >= 0) & (bag_of_cell < n_spots),
            "weight": _rows(prediction.weight, bags.cell_index, n_rows),
        },
        index=cells.obs_names.copy(),
    )
    X = _rows(prediction.cells, bags.cell_index, n_rows)
    std = None if prediction.cells_std is None else _rows(prediction.cells_std, bags.cell_index, n_rows)
    xy = _rows(bags.xy, bags.cell_index, n_rows)
    return _table(X, obs, var, region=attrs["region"], instance_key=instance_key, xy=xy, std=std, uns=uns)


def _rows(values: np.ndarray, index: np.ndarray, n_rows: int) -> np.ndarray:
    """``values`` placed at rows ``index`` of an array of ``n_rows`` rows (NaN elsewhere).

    ``values`` itself when it already is that array (every row, in order: a slide-sized copy saved).
    """
    if values.dtype == np.float32 and len(index) == n_rows and np.array_equal(index, np.arange(n_rows)):
        return values
    out = np.full((n_rows, *values.shape[1:]), np.nan, dtype=np.float32)
    out[index] = values
    return out
