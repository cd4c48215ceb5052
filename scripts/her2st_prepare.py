"""Read the four HER2ST sections and run bitro's offline preprocessing, caching each as zarr.

The default segmentation (``DEFAULT_PREPROCESSING``) + morphology features + cell-to-spot
assignment + kNN graph (the settings the bundled default model uses); other features (e.g.
``morphology+encoder``) are derived from those sections, the same cells. Used by
``scripts/train_default_model.py`` and ``benchmarks/her2st_cv.py``; a cached section is reused, in a
folder named after the segmentation (with the U-Net weights' digest) and feature methods, so changing
them never reuses stale cells.

    python scripts/her2st_prepare.py --data ../shared/data/her2st --out ~/.cache/bitro/her2st_prepared
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

SECTIONS = ("C2", "C3", "C4", "C5")


def segmentation_label() -> str:
    """The default segmentation's method, with the bundled weights' digest for a network (new weights, new cells)."""
    import hashlib

    from bitro.tl._preprocess import DEFAULT_PREPROCESSING

    method = DEFAULT_PREPROCESSING["segmentation"]["method"]
    if method != "unet":
        return method
    from bitro.pp._unet import BUNDLED, WEIGHTS_NAME

    return f"unet-{hashlib.sha256((BUNDLED / WEIGHTS_NAME).read_bytes()).hexdigest()[:8]}"


def cached_folder(out: Path, label: str = "morphology") -> Path:
    """Where ``prepare`` caches the sections of a feature set ``label`` under ``out``."""
    return out / f"{segmentation_label()}_{label}"


def prepare(section: str, data_dir: Path, out: Path, features: dict | None = None, label: str | None = None):
    """Return the prepared section ``section``, computing and caching it under ``out`` when missing.

    ``features`` (options of ``bt.pp.cell_features``) replaces the default features; such a section is
    made from the default one (the same cells) and cached in its own folder, ``{segmentation}_{label}``
    (the segmentation's name carries the bundled U-Net's weights digest).
    """
    import spatialdata as sd

    import bitro as bt
    from bitro.tl._preprocess import DEFAULT_PREPROCESSING

    prep = {**DEFAULT_PREPROCESSING, "features": {"method": "morphology"}}  # the base: cells + morphology
    label = label or prep["features"]["method"]
    folder = cached_folder(out, label)
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / f"{section}.zarr"
    if (store / "zarr.json").exists() or (store / ".zgroup").exists():
        return sd.read_zarr(store)
    t0 = time.perf_counter()
    if features is not None:
        sdata = prepare(section, data_dir, out)  # the default section: same cells, assignment and graph
        sdata.path = None  # detached: the new features must not be written into the default section's store
        bt.pp.cell_features(sdata, **features)
    else:
        sdata = bt.datasets.her2st(section, data_dir=data_dir)
        bt.pp.segment_cells(sdata, **prep["segmentation"], progress=False)
        bt.pp.cell_features(sdata, **prep["features"])
        bt.pp.assign_cells(sdata, **prep["assign"])
        bt.pp.cell_graph(sdata, **prep["graph"])
    tmp = folder / f"{section}.tmp.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(tmp, overwrite=True)
    tmp.rename(store)
    print(f"{section} ({label}): {sdata['bitro_cells'].n_obs} cells in {time.perf_counter() - t0:.0f} s", flush=True)
    return sd.read_zarr(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "her2st")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_prepared")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for section in args.sections:
        prepare(section, args.data, args.out)


if __name__ == "__main__":
    main()
