"""The pipeline commands: read data into zarr stores, then segment, featurise, fit, predict, transfer, evaluate.

Each command is a thin layer over the Python API with the same option names; stores are read with
:func:`bitro.io.read_zarr` and every step writes into them crash-safely (the new elements are complete
before the old ones go). Heavy modules load inside the commands, so ``bitro --help`` stays fast.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ._common import check_out, check_store, echo_json, open_store, set_verbosity, training_output

STORE = typer.Argument(help="A SpatialData zarr store written by `bitro read`.", exists=True, file_okay=False)


class Kind(StrEnum):
    visium = "visium"
    legacy_st = "legacy-st"
    hest = "hest"
    wsi = "wsi"
    cohort = "cohort"


class Method(StrEnum):
    unet = "unet"
    watershed = "watershed"
    cellpose = "cellpose"
    imported = "import"


class Target(StrEnum):
    spot = "spot"
    bulk = "bulk"


class Mode(StrEnum):
    lora = "lora"
    full = "full"
    head = "head"


Out = Annotated[Path, typer.Option("--out", "-o", help="Zarr store to write (a folder, e.g. C3.zarr).")]
Overwrite = Annotated[bool, typer.Option(help="Replace OUT if it exists (swapped in once the new store is whole).")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log lines (-v info, -vv debug).")]
NJobs = Annotated[int | None, typer.Option(help="Worker processes for the tiles (-1: all cores; default 1).")]
FullRes = Annotated[
    Path | None,
    typer.Option(
        help="visium: the full-resolution H&E given to Space Ranger (not in its outs folder); nuclei need it.",
        exists=True,
        dir_okay=False,
    ),
]


def read(
    kind: Annotated[Kind, typer.Argument(help="What the input is.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="visium: the Space Ranger folder; legacy-st: COUNTS SPOTS IMAGE; hest: ROOT (and --sample-id); "
            "wsi: the slide file; cohort: EXPRESSION SLIDES (bulk counts as for bt.io.bulk; a folder of slides "
            "or a GDC sample sheet), written as OUT/<sample>.zarr per slide and OUT/cohort.h5ad.",
            exists=True,
        ),
    ],
    out: Out,
    sample_id: Annotated[str | None, typer.Option(help="Sample id (element names, coordinate system).")] = None,
    mpp: Annotated[
        float | None, typer.Option(help="µm per pixel, when the file does not say (wsi, legacy-st, visium).")
    ] = None,
    fullres_image: FullRes = None,
    overwrite: Overwrite = False,
    verbose: Verbose = 0,
) -> None:
    """Read a Visium folder, a legacy ST section, a HEST-1k sample or a whole slide into a zarr store."""
    set_verbosity(verbose)
    summary = _read_store(
        kind, inputs, out, sample_id=sample_id, mpp=mpp, fullres_image=fullres_image, overwrite=overwrite
    )
    if summary is not None:
        echo_json(summary)


def _read_store(
    kind: Kind,
    inputs: list[Path],
    out: Path,
    *,
    sample_id: str | None,
    mpp: float | None,
    overwrite: bool,
    fullres_image: Path | None = None,
) -> dict | None:
    """Read ``inputs`` into the store ``out``; its summary (``None`` for a cohort, which prints its own)."""
    import bitro as bt
    from bitro._store import write_store

    expected = {Kind.visium: 1, Kind.legacy_st: 3, Kind.hest: 1, Kind.wsi: 1, Kind.cohort: 2}[kind]
    if len(inputs) != expected:
        raise typer.BadParameter(f"`{kind.value}` takes {expected} input path(s), got {len(inputs)}.")
    if fullres_image is not None and kind is not Kind.visium:
        raise typer.BadParameter("--fullres-image is for visium (the image given to Space Ranger).")
    if kind is Kind.cohort:
        _read_cohort(*inputs, out=out, mpp=mpp, overwrite=overwrite)
        return None
    check_store(out, overwrite=overwrite)
    if kind is Kind.visium:
        sdata = bt.io.visium(inputs[0], dataset_id=sample_id, mpp=mpp, fullres_image_file=fullres_image)
    elif kind is Kind.legacy_st:
        if sample_id is None:
            raise typer.BadParameter("legacy-st needs --sample-id (the section's name).")
        sdata = bt.io.legacy_st(*inputs, sample_id=sample_id, pixel_size=mpp)
    elif kind is Kind.hest:
        if sample_id is None:
            raise typer.BadParameter("hest needs --sample-id (the HEST-1k id, e.g. TENX95).")
        sdata = bt.io.hest(inputs[0], sample_id)
    else:
        sdata = bt.io.wsi(inputs[0], sample_id=sample_id, mpp=mpp)
    write_store(sdata, out, overwrite=overwrite)
    elements = [*sdata.images, *sdata.shapes, *sdata.tables]
    return {"store": str(out), "elements": elements, **_summary(sdata)}


def _read_cohort(expression: Path, slides: Path, *, out: Path, mpp: float | None, overwrite: bool) -> None:
    """One store per paired slide (``OUT/<sample>.zarr``) and the cohort table (``OUT/cohort.h5ad``)."""
    import bitro as bt
    from bitro._store import replace_file, write_store

    sdatas, cohort = bt.io.cohort(str(expression), str(slides), mpp=mpp)
    stores = [out / f"{sdata.attrs['bitro']['sample_id']}.zarr" for sdata in sdatas]
    for store in stores:  # all checked before any is written
        check_store(store, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for sdata, store in zip(sdatas, stores, strict=True):
        write_store(sdata, store, overwrite=overwrite)
    stores = [str(store) for store in stores]
    with replace_file(out / "cohort.h5ad") as tmp:
        cohort.write_h5ad(tmp)
    unpaired = cohort.uns.get("bitro_cohort", {})
    echo_json({"stores": stores, "cohort": str(out / "cohort.h5ad"), "samples": cohort.n_obs, **unpaired})


def segment(
    store: Annotated[Path, STORE],
    method: Annotated[
        Method, typer.Option(help="unet (bitro's, offline), watershed, cellpose or import.")
    ] = Method.unet,
    path: Annotated[str | None, typer.Option(help="import: a segmentation file or a shapes element.")] = None,
    model: Annotated[str | None, typer.Option(help="unet / cellpose weights (default: bundled U-Net).")] = None,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels.")] = 1024,
    mpp: Annotated[float | None, typer.Option(help="Read the pyramid level of this µm/px.")] = None,
    tta: Annotated[
        int, typer.Option(help="unet: average the network over 1, 2, 4 or 8 flips / turns (slower, more accurate).")
    ] = 1,
    n_jobs: NJobs = None,
    verbose: Verbose = 0,
) -> None:
    """Segment the nuclei of the store's image into a cells layer."""
    import bitro as bt

    set_verbosity(verbose, progress=True)
    if tta != 1 and method != Method.unet:
        raise typer.BadParameter(f"--tta applies to --method unet, not {method.value}.", param_hint="--tta")
    options = {"tta": tta} if method == Method.unet else {}
    sdata = open_store(store)
    bt.pp.segment_cells(
        sdata, method=method.value, path=path, model=model, tile_size=tile_size, mpp=mpp, n_jobs=n_jobs, **options
    )
    echo_json(_summary(sdata))


def features(
    store: Annotated[Path, STORE],
    method: Annotated[str, typer.Option(help="morphology, encoder or morphology+encoder.")] = "morphology",
    encoder: Annotated[
        str | None,
        typer.Option(
            help="A named encoder (python -c 'import bitro; print(bitro.models.encoders())'), folder or hub id."
        ),
    ] = None,
    encoder_path: Annotated[Path | None, typer.Option(help="Local copy of a named encoder (offline).")] = None,
    mode: Annotated[
        str, typer.Option(help="crop (one per cell) or tile (patch tokens pooled under each cell).")
    ] = "crop",
    device: Annotated[str | None, typer.Option(help="torch device (default: bt.settings.device).")] = None,
    mpp: Annotated[
        float | None, typer.Option(help="Measure at this µm/px (default: the encoder's, or the image's).")
    ] = None,
    n_jobs: NJobs = None,
    verbose: Verbose = 0,
) -> None:
    """Compute the cell features of the store's cells layer (kept when the same features are already there)."""
    import bitro as bt

    set_verbosity(verbose, progress=True)
    sdata = open_store(store)
    bt.pp.cell_features(
        sdata, method=method, encoder=encoder, encoder_path=encoder_path, mode=mode, device=device, mpp=mpp,
        n_jobs=n_jobs,
    )  # fmt: skip
    echo_json(_summary(sdata))


def fit(
    stores: Annotated[
        list[Path], typer.Argument(help="Training stores (sections or slides), or folders of them.", exists=True)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to save the model to.")],
    target: Annotated[Target, typer.Option(help="Label kind.")] = Target.spot,
    n_genes: Annotated[int, typer.Option(help="Most variable genes to predict.")] = 50,
    val: Annotated[list[str] | None, typer.Option(help="Validation sample ids (default: 25 % of patients).")] = None,
    max_epochs: Annotated[int, typer.Option(help="Epoch limit.")] = 60,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Training state per epoch; resumes.")] = None,
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator: auto, cpu, gpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Devices (a number, or auto).")] = "auto",
    strategy: Annotated[str, typer.Option(help="Lightning strategy, e.g. ddp for several devices.")] = "auto",
    overwrite: Overwrite = False,
    verbose: Verbose = 0,
) -> None:
    """Train a BiTro model on the stores' spots (or slides) and save it; stores are read one at a time."""
    import bitro as bt

    set_verbosity(verbose, progress=True)
    from bitro.models._model import CONFIG_FILE, WEIGHTS_FILE

    check_out(out, overwrite=overwrite, owned={CONFIG_FILE, WEIGHTS_FILE})
    interrupted = None
    try:
        with training_output():
            model = bt.tl.fit(
                stores,
                target=target.value,
                n_genes=n_genes,
                val=val if val else 0.25,
                max_epochs=max_epochs,
                lr=lr,
                seed=seed,
                checkpoint_dir=checkpoint_dir,
                accelerator=accelerator,
                devices=int(devices) if devices.isdigit() else devices,
                strategy=strategy,
            )
    except bt.models.TrainingInterrupted as err:  # Ctrl-C: keep the best weights so far, as bt.tl.fit does
        if err.model is None:
            raise
        model, interrupted = err.model, err
    model.save(out, overwrite=overwrite)
    summary = {
        "model": str(out),
        "genes": len(model.genes),
        "epochs": len(model.history),
        "best_epoch": model.best_epoch,
    }
    if interrupted is not None:
        summary["interrupted"] = True
        echo_json(summary)
        typer.echo(
            f"interrupted after {interrupted.epochs} epochs: the best weights so far are saved in {out}", err=True
        )
        raise typer.Exit(130)
    echo_json(summary)


def predict(
    store: Annotated[Path, STORE],
    model: Annotated[Path | None, typer.Option(help="A saved model folder; default: the bundled model.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="A LoRA adapter folder (`bitro transfer --mode lora`) for --model.")
    ] = None,
    target: Annotated[Target | None, typer.Option(help="Head (default: the model's).")] = None,
    uncertainty: Annotated[bool, typer.Option(help="Estimate each prediction's sd (MC dropout).")] = True,
    figure: Annotated[Path | None, typer.Option(help="PNG of the best-predicted genes over the tissue.")] = None,
    verbose: Verbose = 0,
) -> None:
    """Predict every spot (or the slide) and every cell of the store, written into it as tables."""
    import bitro as bt

    set_verbosity(verbose, progress=True)
    if adapter is not None:
        if model is None:
            raise ValueError("`--adapter` needs `--model`: the model the adapter was trained on.")
        model = bt.models.BiTro.load(model, adapter=adapter)
    elif model is not None:
        model = bt.models.BiTro.load(model)  # a bad folder fails before the store is touched
    sdata = open_store(store)
    bt.tl.predict(sdata, model, target=target.value if target else None, uncertainty=uncertainty)
    summary = _summary(sdata)
    if figure is not None:
        summary["figure"] = str(_figure(sdata, figure))
    echo_json(summary)


def transfer(
    stores: Annotated[list[Path], typer.Argument(help="Target stores, or folders of them.", exists=True)],
    model: Annotated[Path, typer.Option(help="The source model folder.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the adapter (lora) or the model.")],
    target: Annotated[Target, typer.Option(help="Label kind of the target data.")] = Target.spot,
    mode: Annotated[Mode, typer.Option(help="lora, full or head.")] = Mode.lora,
    max_epochs: Annotated[int, typer.Option(help="Epoch limit.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    overwrite: Overwrite = False,
    verbose: Verbose = 0,
) -> None:
    """Adapt a model to new labels (bulk -> spots, spots -> bulk) with LoRA, full or head-only training."""
    import bitro as bt

    set_verbosity(verbose, progress=True)
    from bitro.models._lora import ADAPTER_FILE, HEAD_FILE, PEFT_FILES
    from bitro.models._model import CONFIG_FILE, WEIGHTS_FILE

    owned = {ADAPTER_FILE, HEAD_FILE, *PEFT_FILES} if mode is Mode.lora else {CONFIG_FILE, WEIGHTS_FILE}
    check_out(out, overwrite=overwrite, owned=owned)
    source = bt.models.BiTro.load(model)
    with training_output():
        new = bt.tl.transfer(  # the stores' paths: read one at a time (see bt.tl.fit)
            stores, source, target=target.value, mode=mode.value, max_epochs=max_epochs, seed=seed
        )
    if mode is Mode.lora:
        new.save_adapter(out, overwrite=overwrite)
    else:
        new.save(out, overwrite=overwrite)
    echo_json({"saved": str(out), "mode": mode.value, "epochs": len(new.history), "genes": len(new.genes)})


def evaluate(
    stores: Annotated[list[Path], typer.Argument(help="Stores with predictions and measured counts.", exists=True)],
    spatial: Annotated[bool, typer.Option(help="Also Moran's I of predicted and observed maps.")] = True,
    verbose: Verbose = 0,
) -> None:
    """Score the predictions of the stores against their measured counts; prints one JSON row per section."""
    import bitro as bt

    set_verbosity(verbose)
    scores = bt.tl.evaluate([open_store(s) for s in stores], spatial=spatial)
    typer.echo(scores.to_json(orient="index", indent=1))


def run(
    kind: Annotated[Kind, typer.Argument(help="What the input is (as for `bitro read`).")],
    inputs: Annotated[list[Path], typer.Argument(help="As for `bitro read`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the store, the figure and summary.json.")],
    sample_id: Annotated[str | None, typer.Option(help="Sample id.")] = None,
    mpp: Annotated[float | None, typer.Option(help="µm per pixel, when the file does not say.")] = None,
    fullres_image: FullRes = None,
    model: Annotated[Path | None, typer.Option(help="A saved model folder; default: the bundled model.")] = None,
    segmentation: Annotated[
        Method | None, typer.Option(help="Nuclei by this method instead of the model's (unet, watershed, cellpose).")
    ] = None,
    n_jobs: NJobs = None,
    overwrite: Overwrite = False,
    verbose: Verbose = 0,
) -> None:
    """Read, segment, measure and predict one input end to end: OUT/<sample>.zarr, a figure and summary.json."""
    import time

    import bitro as bt
    from bitro._store import replace_file

    if kind is Kind.cohort:
        raise typer.BadParameter("`run` takes one section or slide; read a cohort with `bitro read cohort`.")
    set_verbosity(verbose, progress=True)
    if n_jobs is not None:
        bt.settings.n_jobs = n_jobs  # segmentation and features
    times = {}
    if model is not None:
        model = bt.models.BiTro.load(model)  # a bad --model fails before --overwrite replaces a store
    t0 = time.perf_counter()
    out = out.expanduser()  # `--out=~/x` reaches us unexpanded: never a folder named "~"
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"{sample_id or inputs[0].stem.split('.')[0]}.zarr"
    if segmentation is Method.imported:
        raise typer.BadParameter("`--segmentation import` needs a path: use `bitro segment --method import`.")
    new_store = not store.exists()
    _read_store(kind, inputs, store, sample_id=sample_id, mpp=mpp, fullres_image=fullres_image, overwrite=overwrite)
    times["read"] = round(time.perf_counter() - t0, 1)
    try:
        sdata = open_store(store)
        t0 = time.perf_counter()
        if segmentation is not None:
            bt.pp.segment_cells(sdata, method=segmentation.value)
        bt.tl.predict(sdata, model)
    except BaseException:  # failed or Ctrl-C: a store this run made goes, so the same command can run again
        if new_store:
            import shutil

            shutil.rmtree(store, ignore_errors=True)
        raise
    times["predict"] = round(time.perf_counter() - t0, 1)
    summary = {"store": str(store), **_summary(sdata)}
    table = bt.get.predictions(sdata)
    if kind is not Kind.wsi and sdata.attrs["bitro"].get("technology") is not None:
        try:
            row = bt.tl.evaluate(sdata, spatial=False).iloc[0]
            summary["pearson_mean"] = round(float(row["pearson_mean"]), 3)
        except KeyError:  # the model's genes are not measured here (another species or panel)
            summary["pearson_mean"] = None
    summary["figure"] = str(_figure(sdata, out / f"{store.stem}_prediction.png"))
    summary["seconds"] = times
    summary["genes"] = int(table.n_vars)
    with replace_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    echo_json(summary)


def predict_slides(
    slides: Annotated[
        list[Path],
        typer.Argument(help="Slide files, zarr stores (predicted in place), or one folder of them.", exists=True),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <sample>.zarr per slide and slides.csv.")],
    model: Annotated[Path | None, typer.Option(help="A saved model folder; default: the bundled model.")] = None,
    segmentation: Annotated[
        Method | None, typer.Option(help="Nuclei by this method instead of the model's (unet, watershed, cellpose).")
    ] = None,
    mpp: Annotated[float | None, typer.Option(help="µm per pixel, for slides whose files do not say.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="A dask scheduler address (e.g. tcp://host:8786); default: a local cluster.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes of the local cluster (slides at once).")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Redo slides whose stores exist (default: skip them).")] = False,
    verbose: Verbose = 0,
) -> None:
    """Predict many slides on a dask cluster; a rerun skips finished slides, a failed slide does not stop the rest.

    Exits with status 1 when a slide failed (its error is in OUT/slides.csv and in the JSON printed).
    """
    import bitro as bt
    from bitro._validate import check_mpp

    if segmentation is Method.imported:
        raise typer.BadParameter("`--segmentation import` needs a path per slide; segment each store instead.")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file; give a folder (for <sample>.zarr per slide).", param_hint="--out")
    if mpp is not None:
        mpp = check_mpp(mpp, "--mpp")
    set_verbosity(verbose, progress=True)
    if model is not None:
        model = bt.models.BiTro.load(model)  # once, before any slide: a bad --model is named at once
    table = bt.tl.predict_slides(
        slides[0] if len(slides) == 1 and slides[0].is_dir() else slides,
        out,
        model=model,
        segmentation=segmentation.value if segmentation else None,
        mpp=mpp,
        scheduler=scheduler,
        n_workers=workers,
        overwrite=overwrite,
    )
    counts = table["status"].value_counts()
    failed = table[table["status"] == "failed"]
    echo_json(
        {
            "out": str(out),
            "slides": int(len(table)),
            "done": int(counts.get("done", 0)),
            "done_before": int(counts.get("done before", 0)),
            "failed": {str(k): str(v) for k, v in failed["error"].items()},
        }
    )
    if len(failed):
        raise typer.Exit(1)


def _summary(sdata) -> dict:
    info = sdata.attrs.get("bitro", {})
    out = {"sample": info.get("sample_id"), "mpp": info.get("mpp")}
    for key, name in (("cells_table_key", "cells"), ("pred_spots_key", "predicted_bags")):
        if info.get(key) in sdata.tables:
            out[name] = int(sdata.tables[info[key]].n_obs)
    return out


def _figure(sdata, path: Path) -> Path:
    """The four genes the model predicts most reliably (validation r), cell by cell over the tissue."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    import bitro as bt
    from bitro._store import replace_file

    if not path.suffix:
        path = path.with_suffix(".png")
    var = bt.get.predictions(sdata).var
    order = var["val_pearson"].sort_values(ascending=False).index if "val_pearson" in var else var.index
    genes = list(order[:4])
    fig, axes = plt.subplots(1, len(genes), figsize=(4.2 * len(genes), 4))
    for ax, gene in zip(list(axes) if len(genes) > 1 else [axes], genes, strict=True):
        bt.pl.cell_expression(sdata, gene, crop=_whole(sdata), ax=ax, show=False)
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _whole(sdata) -> tuple[float, float, float, float]:
    """The box (µm) around every cell."""
    import numpy as np

    import bitro as bt

    xy = bt.get.predictions(sdata, level="cells").obsm["spatial"]
    lo, hi = np.nanmin(xy, axis=0) - 20, np.nanmax(xy, axis=0) + 20
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])
