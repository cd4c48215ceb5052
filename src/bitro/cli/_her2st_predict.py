"""The real-data run behind ``bitro predict-her2st`` / ``make predict``.

Read a HER2ST section (H&E JPEG + spots + counts), segment its nuclei, compute cell features,
predict spot and cell expression with the bundled default model (or a given one), score it against
the measured counts, write the SpatialData to zarr and a figure of predicted beside observed.
"""

from __future__ import annotations

import time
from pathlib import Path

from bitro import _constants as K
from bitro import _sdata
from bitro._store import replace_file, write_store


def run_her2st(
    data_dir: Path,
    section: str,
    out: Path,
    *,
    model_dir: Path | None = None,
    crop: tuple[float, float, float, float] | None = None,
    n_genes_plot: int = 4,
) -> dict:
    """Run the pipeline on one section (or the ``crop`` box, µm: x0, y0, x1, y1) and return the figures it prints."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    import bitro as bt

    if crop is not None:
        _check_box(crop)  # before reading a 92 Mpx image
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    steps = ["read", "segment", "features", "predict", "evaluate", "write zarr", "plot"]
    bar = tqdm(total=len(steps), desc="bitro", unit="step")

    def step(name: str, t0: float) -> float:
        times[name] = round(time.perf_counter() - t0, 1)
        bar.set_postfix_str(f"{name} {times[name]} s")
        bar.update()
        return time.perf_counter()

    try:
        t = time.perf_counter()
        model = bt.models.BiTro.load(model_dir) if model_dir else bt.models.default_model()
        prep = model.config["preprocessing"]
        sdata = bt.datasets.her2st(section, data_dir=data_dir)
        if crop is not None:
            sdata = crop_section(sdata, crop)
        t = step("read", t)
        bt.pp.segment_cells(sdata, **prep["segmentation"], progress=False)
        t = step("segment", t)
        bt.pp.cell_features(sdata, **prep["features"])
        t = step("features", t)
        bt.tl.predict(sdata, model)  # assignment and graph run here, with the model's settings
        t = step("predict", t)
        scores = bt.tl.evaluate(sdata)
        t = step("evaluate", t)
        store = out / f"{section}.zarr"
        write_store(sdata, store, overwrite=True)  # the previous store stays until the new one is whole
        t = step("write zarr", t)
        table = sdata[_sdata.recorded(sdata, K.ATTR_TABLE)]
        scored = bt.get.predictions(sdata).var[K.PEARSON_KEY]
        best = scored.dropna().sort_values(ascending=False).index[:n_genes_plot].tolist()
        figure = out / f"{section}_predicted_vs_observed.png"
        fig = bt.pl.spatial_prediction(sdata, best, return_fig=True)
        with replace_file(figure) as tmp:
            fig.savefig(tmp, dpi=80, bbox_inches="tight")
        plt.close(fig)
        step("plot", t)
    finally:
        bar.close()  # an error prints after the bar, not inside it

    row = scores.iloc[0]
    summary = {
        "section": section,
        "crop_um": list(crop) if crop is not None else None,
        "spots": int(table.n_obs),
        "cells": int(sdata[K.CELLS_TABLE_KEY].n_obs),
        "genes": len(model.genes),
        "pearson_mean": round(float(row["pearson_mean"]), 3),
        "pearson_median": round(float(row["pearson_median"]), 3),
        "best_genes": {g: round(float(scored[g]), 3) for g in best},
        "seconds": times,
        "zarr": str(store),
        "figure": str(figure),
        "model_trained_on": model.config["training"]["samples"] + list(model.config["training"]["validation"] or []),
    }
    return summary


def crop_section(sdata, box: tuple[float, float, float, float]):
    """The part of ``sdata`` inside ``box`` (x0, y0, x1, y1 in µm of its coordinate system), attrs kept."""
    import spatialdata as sd

    x0, y0, x1, y1 = _check_box(box)
    cs = _sdata.coordinate_system(sdata)
    out = sd.bounding_box_query(
        sdata, axes=("x", "y"), min_coordinate=[x0, y0], max_coordinate=[x1, y1], target_coordinate_system=cs
    )
    if out is None or K.TABLE_KEY not in out.tables or out.tables[K.TABLE_KEY].n_obs == 0:
        raise ValueError(f"`crop` {box} (µm, coordinate system {cs!r}) holds no spot of the section.")
    out.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in sdata.attrs.items()}
    return _sdata.tidy_tables(out)  # the query leaves regions as one-element lists


def _check_box(box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"`crop` must be x0 y0 x1 y1 with x1 > x0 and y1 > y0 (µm), got {tuple(box)}.")
    return x0, y0, x1, y1
