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
        cohort`` writes), or a folder of them (slides are searched one level down; hidden files,
        such as macOS ``._S1.svs``, are skipped). The sample id is the file name without the
        extension. A store is predicted in place (each step writes into it crash-safely) and counts
        as done once it holds cell predictions. A store that is the output of a slide beside it
        (``out`` is the slides' folder) is that slide's store, not another input.
    out
        Output folder (created): ``<sample>.zarr`` per slide file and ``slides.csv``. A slide counts
        as done when its store can be read and holds cell predictions; an empty folder or a store
        without predictions at that path is replaced (logged), a file or another folder there is
        left alone and the slide fails.
    model
        A :class:`bitro.models.BiTro`, the folder of a saved one (loaded once, before any slide), or
        ``None`` for the bundled model.
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
    One row per slide of this call, indexed by sample id: ``slide`` (path), ``store``, ``status``
    (``"done"``, ``"done before"`` or ``"failed"``), ``cells``, ``seconds`` and ``error`` (a slide done
    before keeps the ``cells`` and ``seconds`` of the run that did it). ``out/slides.csv`` holds these
    rows, then the rows of earlier runs' slides that are not in this call, as they were.

    Examples
    --------
    >>> import bitro as bt
    >>> table = bt.tl.predict_slides("slides/", "predicted/")  # doctest: +SKIP
    >>> table["status"].value_counts()  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bitro._settings import settings
    from bitro._validate import check_mpp

    out = _check_out(out)
    n_workers = check_int(n_workers, "n_workers", min_value=1)
    if mpp is not None:
        mpp = check_mpp(mpp, "mpp")
    if segmentation is not None:
        from bitro._validate import check_choice
        from bitro.pp._segment import METHODS

        segmentation = check_choice(segmentation, "segmentation", [m for m in METHODS if m != "import"])
    jobs = _jobs(slides, out)
    cluster = _Cluster(scheduler, n_workers)
    model = _load_model(model)  # once, here: a bad `model` fails before any slide is read or any cluster starts
    out.mkdir(parents=True, exist_ok=True)
    earlier = _read_manifest(out)
    table = pd.DataFrame(index=pd.Index(list(jobs), name="sample"), columns=COLUMNS, dtype=object)
    todo = {}
    for sample, (slide, store) in jobs.items():
        table.loc[sample, ["slide", "store"]] = [str(slide), str(store)]
        state, why = _state(slide, store)
        if state == "failed":
            table.loc[sample, ["status", "error"]] = ["failed", why]
            logger.warning("%s failed: %s", sample, why)
        elif state == "done" and not overwrite:
            table.loc[sample, "status"] = "done before"
            table.loc[sample, ["cells", "seconds"]] = _earlier_values(earlier, sample)
        else:
            if state == "empty":
                store.rmdir()  # an empty folder at this slide's output path: write_store makes the store anew
            if why:
                logger.warning("%s: %s", sample, why)
            todo[sample] = (slide, store)
    n_before = int((table["status"] == "done before").sum())
    n_failed = int((table["status"] == "failed").sum())
    logger.info(
        "%d slides: %d done before, %d to do, %d failed before starting", len(jobs), n_before, len(todo), n_failed
    )
    others = _other_rows(earlier, table)
    _write_manifest(table, out, others)
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
                    _write_manifest(table, out, others)
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


def _check_out(out) -> Path:
    """``out`` as a path to a folder (existing or to be made), or an error naming ``out``."""
    from bitro._store import is_store

    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"`out` must be the path of a folder, got {type(out).__name__}.")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"`out` must be a folder (for one <sample>.zarr per slide); {path} is a file.")
    if path.is_dir() and is_store(path):
        raise ValueError(f"`out` must be a folder for the slides' stores; {path} is itself a zarr store.")
    return path


def _load_model(model):
    """A model folder loaded once, in this process (its errors name ``model``); objects and ``None`` as given."""
    if model is None or _is_model(model):
        return model
    from bitro.models import BiTro

    try:
        return BiTro.load(model)
    except (FileNotFoundError, ValueError) as err:  # BiTro.load names its own argument, `dir_path`
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(str(err).replace("`dir_path`", "`model`")) from err


def _state(slide: Path, store: Path) -> tuple[str, str | None]:
    """Where a slide stands: ``("done" | "new" | "redo" | "empty" | "failed", why)``.

    Done means a readable store whose ``attrs["bitro"]`` names a cells prediction table that is there
    (what :func:`bitro.tl.predict` records last). An output store that is not done (a store left without
    predictions, a store that cannot be read, an empty folder) is this runner's own path and is made
    again; a file or a folder of other things there is not replaced (the slide fails). A store given
    as input that cannot be read fails; one without predictions is predicted in place.
    """
    from bitro import _constants as K
    from bitro._store import _root_attributes, is_store

    given = slide == store
    if not store.exists():
        return ("failed", f"{store} does not exist.") if given else ("new", None)
    if not store.is_dir():
        return "failed", f"{store} is a file, not a zarr store; it is not replaced. Move it away and run again."
    if not is_store(store):
        if not given and not any(store.iterdir()):
            return "empty", f"{store} is an empty folder; the slide is predicted again into it."
        what = "input" if given else "output"
        return "failed", (
            f"{what} {store} is a folder but not a zarr store (no zarr.json; an interrupted copy?); it is "
            "not replaced. Move it away and run again."
        )
    try:
        info = _root_attributes(store).get(K.ATTRS_KEY, {})
    except Exception as err:  # noqa: BLE001 - any unreadable zarr.json (bad JSON, wrong format)
        why = f"{store} is not a readable zarr store ({type(err).__name__}: {' '.join(str(err).split())})"
        if given:
            return "failed", why + "."
        return "redo", why + "; the slide is predicted again and the store replaced."
    key = info.get(K.ATTR_PRED_CELLS) if isinstance(info, dict) else None
    if key and is_store(store / "tables" / str(key)):
        return "done", None
    if given:
        return "redo", None  # a store as `bitro read` writes it, to predict in place
    why = f"{store} holds no cell predictions (an interrupted run?); the slide is predicted again, the store replaced."
    return "redo", why


def _inputs(slides) -> list[Path]:
    """Slide files and zarr stores: paths as given, or the contents of a folder (stores first, then slides)."""
    from bitro.io._cohort import _slide_paths

    if isinstance(slides, str | os.PathLike):
        path = Path(slides).expanduser()
        if path.suffix.lower() in (".tsv", ".csv", ".txt"):
            raise ValueError(f"`slides`: {slides} is a table; give slide files, zarr stores or a folder of them.")
        if _is_store(path):
            return [path]
        if path.is_dir():
            return _folder(path)
        return [p for _, p in _slide_paths(slides)]
    if isinstance(slides, Sequence):
        paths = [Path(p).expanduser() for p in slides]
        stores = [p for p in paths if _is_store(p)]
        others = [p for p in paths if not _is_store(p)]
        return stores + ([p for _, p in _slide_paths(others)] if others else [])
    raise TypeError(f"`slides` must be a path or a list of paths, got {type(slides).__name__}.")


def _folder(path: Path) -> list[Path]:
    """The zarr stores in a folder, then its slide files, also one level down (gdc-client's ``{id}/{name}``).

    Hidden names (a leading ``.``, e.g. macOS ``._S1.svs`` files) are skipped and counted.
    """
    from bitro.io._cohort import _SLIDE_SUFFIXES

    def hidden(p: Path) -> bool:
        return p.name.startswith(".")

    top = sorted(path.iterdir())
    below = [p for d in top if d.is_dir() and not _is_store(d) and not hidden(d) for p in sorted(d.iterdir())]
    stores = [p for p in top if _is_store(p)]
    files = [p for p in [*top, *below] if p.is_file() and p.name.lower().endswith(_SLIDE_SUFFIXES)]
    n_hidden = sum(hidden(p) for p in stores + files)
    stores, files = [p for p in stores if not hidden(p)], sorted(p for p in files if not hidden(p))
    if n_hidden:
        logger.info("%s: %d hidden files skipped (names starting with '.', e.g. macOS ._ files)", path, n_hidden)
    if not stores and not files:
        skipped = f" ({n_hidden} hidden files skipped)" if n_hidden else ""
        raise ValueError(
            f"`slides`: no slide files ({', '.join(_SLIDE_SUFFIXES)}) or zarr stores in {path} or its "
            f"subfolders{skipped}."
        )
    return stores + files


def _jobs(slides, out: Path) -> dict[str, tuple[Path, Path]]:
    """``{sample: (slide, store)}`` (a store given as input is its own output); sample ids must be unique.

    A store that is the output of a slide file among the inputs (``out`` is the slides' folder, on a
    rerun) is that slide's store, not an input of its own.
    """
    from bitro.io._common import sanitize_id
    from bitro.io._wsi import _stem

    paths = _inputs(slides)
    files: dict[str, tuple[Path, Path]] = {}
    for path in (p for p in paths if not _is_store(p)):
        sample = sanitize_id(_stem(path), name="slides")
        if sample in files:
            raise ValueError(
                f"`slides`: {files[sample][0]} and {path} would both be written to {sample}.zarr; rename one of them."
            )
        files[sample] = (path, out / f"{sample}.zarr")
    outputs = {store.resolve() for _, store in files.values()}
    stores: dict[str, tuple[Path, Path]] = {}
    n_outputs = 0
    for path in (p for p in paths if _is_store(p)):
        if path.resolve() in outputs:  # e.g. OUT/s1.zarr beside s1.svs when `out` is the slides' folder
            n_outputs += 1
            continue
        sample = sanitize_id(path.stem, name="slides")
        if sample in stores or sample in files:
            other = (stores.get(sample) or files[sample])[0]
            raise ValueError(f"`slides`: {other} and {path} are both named {sample}; rename one of them.")
        stores[sample] = (path, path)
    if n_outputs:
        logger.info("%d stores among the inputs are the outputs of slide files beside them, not inputs", n_outputs)
    jobs = {**stores, **files}
    if not jobs:
        raise ValueError("`slides`: no slide given.")
    return jobs


def _is_model(model) -> bool:
    return model is not None and not isinstance(model, str | os.PathLike)


def _read_manifest(out: Path):
    """The manifest of an earlier run in ``out`` (as text), or ``None`` (none, or unreadable: logged, then replaced)."""
    import pandas as pd

    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        earlier = pd.read_csv(path, index_col=0, dtype=str)
    except Exception as err:  # noqa: BLE001 - a damaged table is reported and written anew
        logger.warning("%s cannot be read (%s: %s); it is written anew", path, type(err).__name__, err)
        return None
    missing = set(COLUMNS) - set(earlier.columns)
    if missing:
        logger.warning("%s lacks the columns %s; it is written anew", path, sorted(missing))
        return None
    earlier.index = earlier.index.astype(str)
    return earlier[~earlier.index.duplicated(keep="last")]


def _earlier_values(earlier, sample: str) -> list:
    """``[cells, seconds]`` of a slide done in an earlier run, from its manifest (``None`` where unknown)."""
    import pandas as pd

    if earlier is None or sample not in earlier.index or earlier.loc[sample, "status"] not in ("done", "done before"):
        return [None, None]
    cells, seconds = earlier.loc[sample, "cells"], earlier.loc[sample, "seconds"]
    return [int(float(cells)) if pd.notna(cells) else None, float(seconds) if pd.notna(seconds) else None]


def _other_rows(earlier, table):
    """The earlier manifest's rows of slides not in this run, kept as they were."""
    if earlier is None:
        return None
    others = earlier.loc[~earlier.index.isin(table.index), COLUMNS]
    if len(others):
        logger.info("%d slides of an earlier run in %s are kept in its manifest", len(others), MANIFEST)
    return others if len(others) else None


def _write_manifest(table, out: Path, others=None) -> None:
    """``out/slides.csv``: this run's slides, then the earlier rows of slides not in it."""
    import pandas as pd

    from bitro._store import replace_file

    rows = table if others is None else pd.concat([table.astype(object), others.astype(object)])
    rows.index.name = "sample"
    with replace_file(out / MANIFEST) as tmp:
        rows.to_csv(tmp)


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
