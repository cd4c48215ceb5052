"""``bt.tl.predict_slides``: segment, featurise and predict many whole slides on a dask cluster.

One task per slide (read -> segment -> features -> predict -> write ``OUT/<sample>.zarr``) on
``dask.distributed`` workers: a :class:`~distributed.LocalCluster` of worker processes by default
(the numpy / scipy / skimage work holds the GIL, so threads would not help), or any scheduler given
by address (e.g. one started by dask-jobqueue on SLURM). A slide's store is written only once its
predictions are complete, so a killed run leaves whole stores and a rerun skips them; a slide that
fails is recorded with its error in ``OUT/slides.csv`` and the others go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitro._logging import logger
from bitro._validate import check_int

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from bitro.models import BiTro

MANIFEST = "slides.csv"
"""Per-slide status table in the output folder (one row per slide, rewritten as slides finish)."""

COLUMNS = ["slide", "store", "status", "cells", "seconds", "error"]


def predict_slides(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: BiTro | str | os.PathLike | None = None,
    segmentation: str | None = None,
    mpp: float | None = None,
    scheduler: str | Client | None = None,
    n_workers: int = 2,
    overwrite: bool = False,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Predict the expression of every cell of many whole slides, one store per slide, on a dask cluster.

    Each slide is read with :func:`bitro.io.wsi`, segmented, measured and predicted with
    :func:`bitro.tl.predict` (the preprocessing the model records), then written to
    ``out/<sample>.zarr``. The store appears only when the slide is finished, so a run that is
    killed leaves the finished slides whole and a second call with the same ``out`` skips them. A
    slide that fails (an unreadable file, no tissue, a worker that dies) is recorded with its error
    and does not stop the others. ``out/slides.csv`` holds the status of every slide and is
    rewritten as each one finishes.

    Parameters
    ----------
    slides
        Slide files (``.svs``, ``.tif``, ``.ndpi``, ...), zarr stores (e.g. the ones ``bitro read
        cohort`` writes), or a folder of them (slides are searched one level down). The sample id
        is the file name without the extension. A store is predicted in place (each step writes
        into it crash-safely) and counts as done once it holds cell predictions.
    out
        Output folder (created): ``<sample>.zarr`` per slide file and ``slides.csv``.
    model
        A :class:`bitro.models.BiTro`, the folder of a saved one, or ``None`` for the bundled model.
    segmentation
        Nuclei by this method of :func:`bitro.pp.segment_cells` instead of the model's
        (e.g. ``"watershed"``, faster and coarser).
    mpp
        µm per level-0 pixel, for slides whose files do not say (see :func:`bitro.io.wsi`).
    scheduler
        ``None``: a :class:`~distributed.LocalCluster` of ``n_workers`` single-threaded worker
        processes, closed at the end. A scheduler address (``"tcp://host:8786"``) or a
        :class:`~distributed.Client`: the slides run on that cluster, which is left running.
    n_workers
        Worker processes of the local cluster (slides processed at once); each needs ~2 GB for a
        slide of 10⁵ cells (peak 1.8 GB in ``benchmarks/slide_scaling.py``, torch included).
    overwrite
        Process every slide again, replacing the stores of slides done before.
    progress
        Show a progress bar over slides (default: when ``bt.settings.verbosity`` >= 1).

    Returns
    -------
    One row per slide, indexed by sample id: ``slide`` (path), ``store``, ``status`` (``"done"``,
    ``"done before"`` or ``"failed"``), ``cells``, ``seconds`` and ``error``; the same table as
    ``out/slides.csv``.

    Examples
    --------
    >>> import bitro as bt
    >>> table = bt.tl.predict_slides("slides/", "predicted/")  # doctest: +SKIP
    >>> table["status"].value_counts()  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bitro._settings import settings

    out = Path(out).expanduser()
    n_workers = check_int(n_workers, "n_workers", min_value=1)
    jobs = _jobs(slides, out)
    cluster = _Cluster(scheduler, n_workers)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(index=pd.Index(list(jobs), name="sample"), columns=COLUMNS, dtype=object)
    todo = {}
    for sample, (slide, store) in jobs.items():
        table.loc[sample, ["slide", "store"]] = [str(slide), str(store)]
        if _finished(slide, store) and not overwrite:
            table.loc[sample, "status"] = "done before"
        else:
            todo[sample] = (slide, store)
    logger.info("%d slides: %d done before, %d to do", len(jobs), len(jobs) - len(todo), len(todo))
    _write_manifest(table, out)
    if todo:
        show = progress if progress is not None else settings.verbosity >= 1
        with cluster as client:
            from distributed import as_completed

            shared = client.scatter(model, broadcast=True) if _is_model(model) else model
            futures = {
                client.submit(
                    _process_slide,
                    str(slide),
                    str(store),
                    sample,
                    shared,
                    segmentation,
                    mpp,
                    key=f"bitro-slide-{sample}",
                    pure=False,
                ): sample
                for sample, (slide, store) in todo.items()
            }
            bar = tqdm(total=len(futures), desc="predict_slides", unit="slide", disable=not show)
            try:
                for future in as_completed(futures):
                    sample = futures[future]
                    try:
                        result = future.result()
                    except Exception as err:  # noqa: BLE001 - e.g. a worker that died (KilledWorker); recorded
                        result = {"error": f"{type(err).__name__}: {err}"}
                    if "error" in result:
                        table.loc[sample, ["status", "error"]] = ["failed", result["error"]]
                        logger.warning("%s failed: %s", sample, result["error"])
                    else:
                        table.loc[sample, ["status", "cells", "seconds", "error"]] = [
                            "done",
                            result["cells"],
                            result["seconds"],
                            None,
                        ]
                    _write_manifest(table, out)
                    bar.update()
            finally:
                bar.close()
    failed = int((table["status"] == "failed").sum())
    logger.info("predict_slides: %d of %d slides done, %d failed (%s)", len(table) - failed, len(table), failed, out)
    if failed:
        logger.warning("%d of %d slides failed; their errors are in %s", failed, len(table), out / MANIFEST)
    return table


def _is_store(path: Path) -> bool:
    return path.is_dir() and path.suffix == ".zarr"


def _finished(slide: Path, store: Path) -> bool:
    """A slide's store exists (it is written whole, at the end); a store given as input holds predictions."""
    if slide != store:
        return store.exists()
    from bitro import _constants as K
    from bitro._store import _root_attributes

    info = _root_attributes(store).get(K.ATTRS_KEY, {})
    return bool(info.get(K.ATTR_PRED_CELLS)) and (store / "tables" / info[K.ATTR_PRED_CELLS]).is_dir()


def _inputs(slides) -> list[Path]:
    """Slide files and zarr stores: paths as given, or the contents of a folder (stores first, then slides)."""
    from bitro.io._cohort import _SLIDE_SUFFIXES, _slide_paths

    if isinstance(slides, str | os.PathLike):
        path = Path(slides).expanduser()
        if path.suffix.lower() in (".tsv", ".csv", ".txt"):
            raise ValueError(f"`slides`: {slides} is a table; give slide files, zarr stores or a folder of them.")
        if path.is_dir() and not _is_store(path):
            stores = sorted(p for p in path.iterdir() if _is_store(p))
            if stores:  # e.g. the stores `bitro read cohort` wrote, and maybe some slides beside them
                # slides beside them, one level down as well (as for a folder of slides alone)
                near = [
                    *path.iterdir(),
                    *(p for d in path.iterdir() if d.is_dir() and not _is_store(d) for p in d.iterdir()),
                ]
                files = sorted(p for p in near if p.is_file() and p.name.lower().endswith(_SLIDE_SUFFIXES))
                return stores + files
        if _is_store(path):
            return [path]
        return [p for _, p in _slide_paths(slides)]
    if isinstance(slides, Sequence):
        paths = [Path(p).expanduser() for p in slides]
        stores = [p for p in paths if _is_store(p)]
        others = [p for p in paths if not _is_store(p)]
        return stores + ([p for _, p in _slide_paths(others)] if others else [])
    raise TypeError(f"`slides` must be a path or a list of paths, got {type(slides).__name__}.")


def _jobs(slides, out: Path) -> dict[str, tuple[Path, Path]]:
    """``{sample: (slide, store)}`` (a store given as input is its own output); sample ids must be unique."""
    from bitro.io._common import sanitize_id
    from bitro.io._wsi import _stem

    jobs: dict[str, tuple[Path, Path]] = {}
    for path in _inputs(slides):
        if _is_store(path):
            sample = sanitize_id(path.stem, name="slides")
            if sample in jobs:
                raise ValueError(f"`slides`: {jobs[sample][0]} and {path} are both named {sample}; rename one of them.")
            jobs[sample] = (path, path)
            continue
        sample = sanitize_id(_stem(path), name="slides")
        if sample in jobs:
            raise ValueError(
                f"`slides`: {jobs[sample][0]} and {path} would both be written to {sample}.zarr; rename one of them."
            )
        jobs[sample] = (path, out / f"{sample}.zarr")
    if not jobs:
        raise ValueError("`slides`: no slide given.")
    return jobs


def _is_model(model) -> bool:
    return model is not None and not isinstance(model, str | os.PathLike)


def _write_manifest(table, out: Path) -> None:
    from bitro._store import replace_file

    with replace_file(out / MANIFEST) as tmp:
        table.to_csv(tmp)


class _Cluster:
    """The cluster to run on: a LocalCluster made (and closed) here, or the caller's, left running."""

    def __init__(self, scheduler, n_workers: int) -> None:
        from distributed import Client

        if scheduler is not None and not isinstance(scheduler, str | Client):
            raise TypeError(
                f"`scheduler` must be None, a scheduler address or a distributed.Client, got {type(scheduler).__name__}."
            )
        self.scheduler, self.n_workers = scheduler, n_workers
        self.made: list = []

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            # ":0": a free port for the scheduler's HTTP server (None still binds 8787, and a second
            # cluster on the machine then warns that the port is taken)
            cluster = LocalCluster(
                n_workers=self.n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = Client(cluster)
            logger.info("local dask cluster of %d workers, dashboard %s", self.n_workers, client.dashboard_link)
            self.made = [client, cluster]
            return client
        if isinstance(self.scheduler, Client):
            return self.scheduler
        client = Client(self.scheduler)
        self.made = [client]
        return client

    def __exit__(self, *exc) -> None:
        for thing in self.made:
            thing.close()


def _process_slide(
    slide: str, store: str, sample: str, model: Any, segmentation: str | None, mpp: float | None
) -> dict:
    """One slide on a worker: read, (segment), predict, write the store once it is whole."""
    import dask

    import bitro as bt
    from bitro._store import write_store

    t0 = time.perf_counter()
    try:
        # a worker's tiles run in its own threads: nested cluster tasks would wait on busy workers
        with dask.config.set(scheduler="threads"):
            in_place = slide == store  # a store: every step writes into it crash-safely
            sdata = bt.io.read_zarr(store) if in_place else bt.io.wsi(slide, sample_id=sample, mpp=mpp)
            if segmentation is not None:
                bt.pp.segment_cells(sdata, method=segmentation, n_jobs=1)
            if model is not None and not _is_model(model):
                model = bt.models.BiTro.load(model)
            bt.tl.predict(sdata, model)
            if not in_place:
                write_store(sdata, store, overwrite=True)
    except Exception as err:  # noqa: BLE001 - the slide's error goes to the table, not as a worker traceback
        logger.debug("%s failed", slide, exc_info=True)
        return {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
    cells = int(bt.get.predictions(sdata, level="cells").n_obs)
    return {"cells": cells, "seconds": round(time.perf_counter() - t0, 1)}
