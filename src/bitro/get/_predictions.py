"""The prediction tables ``bt.tl.predict`` writes, and measured expression, in the units of the predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bitro import _constants as K
from bitro import _sdata
from bitro._validate import check_names

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

LEVELS = ("spots", "slide", "cells")


def predictions(
    sdata: SpatialData, *, level: Literal["spots", "slide", "cells"] = "spots", key: str | None = None
) -> AnnData:
    """The prediction table of a level, as :func:`bitro.tl.predict` wrote it (not a copy).

    Parameters
    ----------
    sdata
        Spatial data with predictions.
    level
        ``"spots"`` (or ``"slide"`` for a whole slide): the bag predictions; ``"cells"``: every cell's.
    key
        The table's name; default: the one the last :func:`bitro.tl.predict` recorded in
        ``sdata.attrs["bitro"]``.

    Returns
    -------
    :class:`anndata.AnnData`
        Genes as ``var_names``, predicted log1p(CP10k) as ``X``, ``obsm["spatial"]`` in µm,
        ``layers["std"]`` when the uncertainty was estimated.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9)
    >>> bt.tl.predict(sdata)
    >>> bt.get.predictions(sdata, level="cells").n_obs == sdata["bitro_cells"].n_obs
    True
    """
    from bitro._validate import check_choice

    level = check_choice(level, "level", LEVELS)
    attr = K.ATTR_PRED_CELLS if level == "cells" else K.ATTR_PRED_SPOTS
    key = key if key is not None else _sdata.info(sdata).get(attr)
    if key is None or key not in sdata.tables:
        what = f"no prediction table {key!r}" if key is not None else "no predictions recorded"
        raise KeyError(
            f"`key`: {what} for level {level!r} in `sdata` (tables: {list(sdata.tables)}); run bt.tl.predict "
            "first (again after a new segmentation)."
        )
    table = sdata.tables[key]
    info = _sdata.info(sdata)
    inputs = {
        info.get(K.ATTR_TABLE, K.TABLE_KEY),
        info.get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY),
        K.TRUE_CELLS_TABLE_KEY,
    }
    if key in inputs and K.PRED_KEY not in table.uns:
        raise ValueError(f"`key`: {key!r} holds the data (counts or cells), not predictions; see bt.tl.predict.")
    if level != "cells" and key.endswith("_cells"):
        raise ValueError(f"`key`: {key!r} holds cell predictions; pass level='cells'.")
    if level == "cells" and not key.endswith("_cells"):
        raise ValueError(f"`key`: {key!r} holds spot (or slide) predictions; pass its cells table, or level='spots'.")
    if level == "cells":
        _check_current(sdata, key, table)
    return table


def _check_current(sdata: SpatialData, key: str, table) -> None:
    """Cell predictions annotate the current cells layer, cell for cell, or a clear error (segmented again since)."""
    info = _sdata.info(sdata)
    shapes = info.get(K.ATTR_CELLS_SHAPES)
    cells = sdata.tables.get(info.get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY))
    region = _sdata.regions(table)
    made_from, current = (table.uns.get(K.PRED_KEY) or {}).get(K.ATTR_CELLS_ID), info.get(K.ATTR_CELLS_ID)
    other_cells = made_from is not None and current is not None and made_from != current
    if shapes not in region or cells is None or cells.n_obs != table.n_obs or other_cells:
        raise ValueError(
            f"`key`: {key!r} holds predictions for another segmentation ({table.n_obs} cells of {region}); the "
            f"current cells layer is {shapes!r}"
            f"{f' with {cells.n_obs} cells' if cells is not None else ''}. Run bt.tl.predict again."
        )


def prediction_df(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    level: Literal["spots", "slide", "cells"] = "spots",
    layer: str | None = None,
    key: str | None = None,
) -> pd.DataFrame:
    """Predictions of some genes as a DataFrame (rows: spots or cells, columns: genes), like :func:`scanpy.get.obs_df`.

    Parameters
    ----------
    sdata
        Spatial data with predictions.
    genes
        One gene or a list (``bt.get.predictions(sdata).var_names`` for all of them).
    level
        ``"spots"``, ``"slide"`` or ``"cells"``.
    layer
        ``None`` for the predictions, ``"std"`` for their standard deviations.
    key
        The prediction table (default: the recorded one).

    Returns
    -------
    :class:`pandas.DataFrame`
        Index: the table's ``obs_names``; columns: the genes, in the order asked.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9)
    >>> bt.tl.predict(sdata)
    >>> bt.get.prediction_df(sdata, ["IGKC", "CD74"]).shape
    (9, 2)
    """
    table = predictions(sdata, level=level, key=key)
    names = list(table.var_names)
    genes = check_names(genes, "genes", unique=False)
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise KeyError(f"`genes`: {missing[:5]} were not predicted ({len(names)} genes: {shown}).")
    if layer is not None and layer not in table.layers:
        raise KeyError(f"`layer`: {layer!r} is not a layer of the predictions (layers: {list(table.layers)}).")
    values = table.layers[layer] if layer is not None else table.X
    cols = table.var_names.get_indexer(genes)
    return pd.DataFrame(np.asarray(values[:, cols], dtype=np.float32), index=table.obs_names.copy(), columns=genes)


def observed_df(sdata: SpatialData, genes: str | Sequence[str], *, table_key: str | None = None) -> pd.DataFrame:
    """Measured expression of some genes as log1p(CP10k), the units of the predictions (rows: spots or samples).

    Parameters
    ----------
    sdata
        Spatial data with an expression table (counts in ``X``).
    genes
        One gene or a list (matched on ``var_names``, else ``var["gene_name"]``).
    table_key
        The expression table; default: the one the reader recorded.

    Returns
    -------
    :class:`pandas.DataFrame`
        Index: the table's ``obs_names`` (NaN rows for spots without counts); columns: the genes.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9, n_genes=20)
    >>> bt.get.observed_df(sdata, ["gene0000", "gene0001"]).shape
    (9, 2)
    """
    from bitro._expression import gene_columns, log_cp10k

    key = table_key if table_key is not None else _sdata.recorded(sdata, K.ATTR_TABLE)
    if key not in sdata.tables:
        raise KeyError(f"`table_key`: {key!r} is not a table of `sdata` (tables: {list(sdata.tables)}).")
    table = sdata.tables[key]
    if K.PRED_KEY in table.uns:  # already log1p(CP10k): normalising it again would give other numbers
        raise ValueError(f"`table_key`: {key!r} holds predictions, not counts; see bt.get.prediction_df.")
    genes = check_names(genes, "genes", unique=False)
    cols = gene_columns(table, genes, where=f"`genes` in table {key!r}")
    values = log_cp10k(table.X, where=f"table {key!r}", columns=cols)
    return pd.DataFrame(values, index=table.obs_names.copy(), columns=genes)
