"""The synthetic-tissue demo behind ``bitro demo`` / ``make demo``.

Builds a toy section, round-trips it through zarr, runs segmentation, features, assignment and the
cell graph on the image alone, scores the cells against the true nuclei and writes figures a person
can check.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bitro import _constants as K
from bitro._store import replace_file, write_store


def run_demo(out: Path, *, n_spots: int = 64, seed: int = 0) -> dict:
    """Build a synthetic section, write it to ``out/toy.zarr``, read it back and plot it to ``out/toy.png``.

    Returns the summary figures it prints.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    import bitro as bt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sdata = bt.datasets.toy_st(n_spots=n_spots, seed=seed, sample_id="demo")
    t_build = time.perf_counter() - t0

    zarr_path = out / "toy.zarr"
    write_store(sdata, zarr_path, overwrite=True)  # the previous store stays until the new one is whole
    back = sd.read_zarr(zarr_path)
    table, cells = back[K.TABLE_KEY], back[K.TRUE_CELLS_TABLE_KEY]
    if not np.array_equal(table.X.toarray(), sdata[K.TABLE_KEY].X.toarray()):
        raise RuntimeError(f"The counts read back from {zarr_path} differ from those written.")

    info = back.attrs[K.ATTRS_KEY]
    cs, image_key, spots_key = info[K.ATTR_COORDINATE_SYSTEM], info[K.ATTR_IMAGE], info[K.ATTR_SPOTS]
    marker = table.var_names[np.argmax(table.X.toarray().std(axis=0))]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"wspace": 0.45})
    (
        back.pl.render_images(image_key)
        .pl.render_shapes(spots_key, color=marker, table_name=K.TABLE_KEY, fill_alpha=0.6)
        .pl.show(coordinate_systems=cs, ax=axes[0], title=f"{marker} counts per spot")
    )
    (
        back.pl.render_images(image_key)
        .pl.render_shapes(info[K.ATTR_TRUE_CELLS], color=K.CELL_TYPE_KEY, table_name=K.TRUE_CELLS_TABLE_KEY)
        .pl.show(coordinate_systems=cs, ax=axes[1], title="true cell types")
    )
    for ax in axes:
        ax.set_xlabel(f"x (µm, coordinate system {cs!r})")
        ax.set_ylabel("y (µm)")
    with replace_file(out / "toy.png") as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)

    by_type = cells.obs.groupby(K.CELL_TYPE_KEY, observed=True)[K.AREA_UM2_KEY].agg(["size", "mean"])
    summary = {
        "spots": table.n_obs,
        "genes": table.n_vars,
        "cells": cells.n_obs,
        "median_cells_per_spot": float(np.median(table.obs[K.N_CELLS_KEY])),
        "median_counts_per_spot": float(np.median(np.asarray(table.X.sum(axis=1)).ravel())),
        "mpp": info[K.ATTR_MPP],
        "build_seconds": round(t_build, 2),
    }
    summary.update(_cells_from_image(back, out))
    print(f"Synthetic section written to {zarr_path} and plotted to {out / 'toy.png'} and {out / 'cells.png'}")
    for key, value in summary.items():
        print(f"  {key:<24} {value}")
    print("  true cells per type (count, mean nucleus area µm²):")
    for name, row in by_type.iterrows():
        print(f"    {name:<12} {int(row['size']):>6} {row['mean']:8.1f}")
    return summary


def _cells_from_image(sdata, out: Path) -> dict:
    """The preprocessing that exists so far, on the image alone: segment, featurise, assign, graph."""
    import shapely

    import bitro as bt

    t0 = time.perf_counter()
    bt.pp.segment_cells(sdata, method="watershed")
    bt.pp.cell_features(sdata, method="morphology")
    bt.pp.assign_cells(sdata)
    bt.pp.cell_graph(sdata, within="spot")
    seconds = time.perf_counter() - t0
    info = sdata.attrs[K.ATTRS_KEY]
    found = sdata[info[K.ATTR_CELLS_SHAPES]].geometry.to_numpy()
    truth = sdata[info[K.ATTR_TRUE_CELLS]].geometry.to_numpy()
    # a true nucleus is found when a segmented cell overlaps it by IoU >= 0.5 (one-to-one above 0.5)
    tree = shapely.STRtree(found)
    pairs = tree.query(truth, predicate="intersects")
    inter = shapely.area(shapely.intersection(truth[pairs[0]], found[pairs[1]]))
    union = shapely.area(truth[pairs[0]]) + shapely.area(found[pairs[1]]) - inter
    hits = len(np.unique(pairs[0][inter / union >= 0.5]))
    bt.pl.segmentation(sdata, color=K.AREA_UM2_KEY, save=out / "cells.png")
    cells = sdata[K.CELLS_TABLE_KEY]
    return {
        "segmented_cells": cells.n_obs,
        "detection_f1": round(2 * hits / (len(truth) + len(found)), 3),
        "features_per_cell": cells.obsm[K.FEATURES_KEY].shape[1],
        "cells_in_spots": int(cells.obs[K.SPOT_ID_KEY].notna().sum()),
        "preprocess_seconds": round(seconds, 2),
    }
