"""``bt.pp.segment_cells``: tiled nucleus segmentation of an H&E image into the cells layer.

The image's level 0 is read tile by tile (each tile grown by an overlap on every side), every tile
is segmented on its own (``n_jobs`` local worker processes, or the active ``dask.distributed``
client), each tile's labels become polygons in global level-0 pixels, and a cell is kept only by
the tile whose core (the tile without its overlap) holds its centroid, so a nucleus cut by a tile
border appears once. Tiles without tissue are skipped before any segmentation runs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._settings import resolve_n_jobs
from bitro._validate import check_choice, check_float, check_int, check_mpp

from ._cells import write_cells
from ._watershed import DEFAULT_DIAMETER_UM, tissue_fraction, watershed_tile
from ._windows import in_dask_worker, level_for

METHODS = ("unet", "cellpose", "watershed", "import")
if TYPE_CHECKING:
    from spatialdata import SpatialData

MIN_TISSUE_FRACTION = 0.001
"""A tile with fewer stained pixels than this fraction is skipped as background."""


def segment_cells(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    method: Literal["unet", "cellpose", "watershed", "import"] = "unet",
    key_added: str | None = None,
    tile_size: int = 1024,
    overlap: int | None = None,
    diameter_um: float | None = None,
    n_jobs: int | None = None,
    model: Any = None,
    path: str | None = None,
    min_area_um2: float | None = None,
    max_area_um2: float | None = None,
    mpp: float | None = None,
    progress: bool | None = None,
    copy: bool = False,
    **method_kwargs: Any,
) -> SpatialData | None:
    """Segment the nuclei of an H&E image into polygons and a cells table.

    The image's level 0 is processed in overlapping tiles (never loaded whole), in parallel: on the
    active :class:`dask.distributed.Client` if there is one, else in ``n_jobs`` local worker
    processes. A cell cut by a tile border is kept once, by the tile whose core (the tile without
    its overlap) holds its centroid; tiles without tissue are skipped.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` made by a ``bt.io`` reader or ``bt.datasets``.
    image_key
        The RGB image to segment. Default: the one recorded in ``sdata.attrs["bitro"]``.
    method
        ``"unet"`` (the default: bitro's own nucleus network, bundled and offline, a U-Net trained
        on labelled H&E nuclei that predicts nuclei and their distance maps, split by a watershed;
        tiles are resampled to its 0.5 µm/px), ``"cellpose"`` (a cellpose 3 model; needs local weights),
        ``"watershed"`` (no network: hematoxylin deconvolution, adaptive threshold,
        distance-transform watershed) or ``"import"`` (read polygons from ``path``).
    key_added
        Name of the shapes element. Default: ``"{method}_boundaries"``.
    tile_size
        Width of the square core of each tile, in level-0 pixels (at least 64).
    overlap
        Pixels each tile is grown by on every side. Default: two expected nucleus diameters, at least 32.
    diameter_um
        Expected nucleus diameter in µm (watershed default 8; cellpose: the model's default when None).
    n_jobs
        Worker processes for the tiles (default ``bt.settings.n_jobs``, ``-1`` all cores; a pool
        per call, forked from a server that imports bitro once per session; threads for a network
        on a GPU and inside a dask worker);
        ignored when a ``dask.distributed`` client is active.
    model
        ``method="unet"``: a weights folder (default: the bundled weights); ``method="cellpose"``: a
        cellpose model name or weights file.
    path
        For ``method="import"``: a segmentation file (GeoJSON, CellViT parquet, HoVer-Net JSON, label
        image) or the name of a shapes element of ``sdata`` (e.g. sopa's ``cellpose_boundaries``).
    min_area_um2, max_area_um2
        Cells outside this area range (µm²) are dropped (defaults: watershed 8 and 400, U-Net 6 µm²
        chosen with its thresholds, which ``min_area_um2`` replaces; no limit otherwise).
    mpp
        Read the coarsest pyramid level whose pixels are at most this size (µm); ``None``: the
        U-Net's working scale (0.5 µm/px) for ``"unet"``, level 0 otherwise. Polygons are stored in
        level-0 pixels whatever level was read; ``tile_size`` and ``overlap`` count pixels of it.
    progress
        Show a progress bar (default: when there are more than 16 tiles and ``bt.settings.verbosity > 0``).
    copy
        Return a segmented copy instead of writing into ``sdata``.
    **method_kwargs
        Passed to the tile segmenter (e.g. ``fg_threshold=`` / ``marker_threshold=`` / ``tta=`` of the U-Net,
        ``boundary_threshold=`` of a U-Net trained with rims (``scripts/train_nucleus_unet.py --boundary``),
        ``offset=`` / ``floor_factor=`` of the watershed, see ``bitro.pp._watershed.watershed_tile``).

    Returns
    -------
    ``None``, or the segmented copy when ``copy=True``. Writes the shapes ``{method}_boundaries``
    (polygons in level-0 pixels, with the image's transformations) and the table ``bitro_cells``
    (centroid, area in µm²), and records both keys in ``sdata.attrs["bitro"]``. An image without
    any tissue, or without any cell, gives a warning and writes nothing: a previous cells layer
    (and its features) stays as it was. On a zarr-backed object the new layer is complete on disk
    before the old one is replaced.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=9, seed=0)
    >>> bt.pp.segment_cells(sdata, method="watershed")
    >>> sdata["bitro_cells"].n_obs > 0
    True
    """
    from bitro import settings

    method = check_choice(method, "method", METHODS)
    key = _sdata.image_key(sdata, image_key)
    target_mpp, level0_mpp = mpp, _sdata.image_mpp(sdata, key)
    mpp_given = mpp is not None
    net_mpp = None
    if method == "unet":
        from ._unet import working_mpp

        net_mpp = working_mpp(model)
    if target_mpp is not None:
        target_mpp = check_mpp(target_mpp, "mpp")
    elif method == "unet":
        target_mpp = net_mpp
    level, mpp = level_for(sdata.images[key], level0_mpp, target_mpp, _sdata.coordinate_system(sdata))
    tile_size = given_tile = check_int(tile_size, "tile_size", min_value=64)
    if method == "unet" and mpp > 1.5 * net_mpp:
        # the U-Net upsamples a coarse image to its scale: keep the upsampled tile near tile_size pixels
        # (a 1024 px tile at 4.7 µm/px would grow to 9 600 px a side, ~1 GB per feature map)
        tile_size = max(64, int(tile_size * net_mpp / mpp))
        logger.info("image coarser than the U-Net's %.3g µm/px: tiles of %d px", net_mpp, tile_size)
    if diameter_um is not None:
        diameter_um = check_float(diameter_um, "diameter_um", min_value=0, strict_min=True)
    d_px = (diameter_um or DEFAULT_DIAMETER_UM) / mpp
    default_overlap = overlap is None
    if default_overlap:
        overlap = max(32, int(np.ceil(2 * d_px)))
    overlap = check_int(overlap, "overlap", min_value=0)
    if overlap >= tile_size:
        what = f"`overlap` ({overlap})" if not default_overlap else f"the default `overlap` (two nuclei: {overlap} px)"
        tile = f"`tile_size` ({tile_size})" if tile_size == given_tile else (
            f"the tile ({tile_size} px: `tile_size` {given_tile} scaled to the U-Net's {net_mpp:g} µm/px)"
        )  # fmt: skip
        raise ValueError(f"{what} must be smaller than {tile}: give a larger `tile_size` or a smaller `overlap`.")
    if overlap < d_px and method != "import":
        warnings.warn(
            f"`overlap` ({overlap} px) is under one expected nucleus diameter ({d_px:.0f} px): nuclei cut by a "
            "tile border are in no tile whole and are lost. Leave `overlap` at its default (two diameters).",
            UserWarning,
            stacklevel=2,
        )
    n_jobs = resolve_n_jobs(n_jobs)
    for name, value in (("min_area_um2", min_area_um2), ("max_area_um2", max_area_um2)):
        if value is not None:
            check_float(value, name, min_value=0)
    if min_area_um2 is not None and max_area_um2 is not None and min_area_um2 > max_area_um2:
        raise ValueError(
            f"`min_area_um2` ({min_area_um2}) is larger than `max_area_um2` ({max_area_um2}): no cell could pass."
        )
    key_added = check_cells_key(sdata, f"{method}{K.BOUNDARIES_SUFFIX}" if key_added is None else key_added)
    sdata = _sdata.copy_or_self(sdata, copy)

    n_skipped = n_tiles = 0
    cell_type = None  # classes of an imported segmentation, one per polygon
    if method == "import":
        from ._import import read_segmentation

        if path is None:
            raise ValueError('`method="import"` needs `path=`: a segmentation file, or a shapes element of `sdata`.')
        gdf = read_segmentation(path, sdata=sdata, image_key=key)
        polygons = np.asarray(gdf.geometry.values, dtype=object)
        cell_type = gdf[K.CELL_TYPE_KEY].to_numpy(dtype=object) if K.CELL_TYPE_KEY in gdf else None
        on = _on_image(polygons, sdata, key, path)
        polygons, cell_type = polygons[on], (cell_type[on] if cell_type is not None else None)
    else:
        data = _level_rgb(sdata, key, level)
        white = _sdata.image_white(sdata.images[key], key)
        if np.issubdtype(data.dtype, np.floating) and white != 255.0:
            data = data * np.float32(255.0 / white)  # one scale for the whole image, not a guess per tile
        if method == "watershed":
            segmenter = functools.partial(
                watershed_tile,
                mpp=mpp,
                diameter_um=diameter_um,
                min_area_um2=min_area_um2,
                max_area_um2=max_area_um2,
                **method_kwargs,
            )
        elif method == "unet":
            from ._unet import unet_segmenter

            # a smaller minimum than the network's own (6 µm², its config) reaches its post-processing too
            floor = {"min_area_um2": min_area_um2} if min_area_um2 is not None else {}
            segmenter = unet_segmenter(model, mpp=mpp, **floor, **method_kwargs)
        else:
            from ._cellpose import cellpose_segmenter

            segmenter = cellpose_segmenter(model, mpp=mpp, diameter_um=diameter_um, **method_kwargs)
        # numpy / scipy / skimage hold the GIL: tiles in processes; a GPU network runs its kernels without it
        backend = "threads" if method != "watershed" and _on_gpu(method_kwargs.get("device")) else "processes"
        if progress is None:
            progress = settings.verbosity > 0
            progress = progress and _n_tiles(data.shape[1:], tile_size) > 16
        polygons, n_skipped, n_tiles = segment_tiled(
            data, segmenter, tile_size=tile_size, overlap=overlap, n_jobs=n_jobs, progress=bool(progress),
            backend=backend,
        )  # fmt: skip
        logger.info(
            "%d tiles of level %d (%.3g µm/px): %d skipped without tissue; %d cells found",
            n_tiles,
            level,
            mpp,
            n_skipped,
            len(polygons),
        )
        if level and len(polygons):  # polygons in level-0 pixels, as every other step expects
            import shapely

            scale = mpp / level0_mpp
            polygons = shapely.transform(polygons, lambda xy: xy * scale)
        if n_skipped == n_tiles:
            warnings.warn(
                f"No tissue found in image {key!r} (every tile is background): no cells; nothing written"
                f"{_kept(sdata)}.{_range_hint(sdata, key)}",
                UserWarning,
                stacklevel=2,
            )
    keep = _area_mask(polygons, level0_mpp, min_area_um2, max_area_um2)
    polygons, cell_type = polygons[keep], (cell_type[keep] if cell_type is not None else None)
    if not len(polygons):
        # spatialdata cannot hold an empty shapes element, and a step that finds nothing never deletes
        if method == "import" or n_skipped < n_tiles:
            warnings.warn(f"No cells found in image {key!r}: nothing written{_kept(sdata)}.", UserWarning, stacklevel=2)
        return sdata if copy else None
    options = {"model": model, "diameter_um": diameter_um, "min_area_um2": min_area_um2, "max_area_um2": max_area_um2}
    record = segmentation_record(
        method, mpp=target_mpp if mpp_given else None, **options, **(method_kwargs if method != "import" else {})
    )
    write_cells(
        sdata, polygons, image=key, method=method, key_added=key_added, segmentation_mpp=mpp, segmentation=record,
        cell_type=cell_type,
    )  # fmt: skip
    return sdata if copy else None


RUNTIME_OPTIONS = ("device", "batch_size")
"""Options of a tile segmenter that change where or how fast it runs, not which cells it finds."""
UNUSED_OPTIONS = {"watershed": ("model",), "import": ("model", "mpp", "diameter_um")}
"""Options a method does not read (recorded, they would claim a provenance the cells do not have)."""


def segmentation_record(method: str, **options: Any) -> dict:
    """What ``segment_cells`` ran with, as plain values: the ``preprocessing["segmentation"]`` that repeats it.

    Options left at their defaults (``None``), runtime ones and values that are not plain (a model
    object, an imported file's path) are left out; ``"model_object": True`` says a model object was given.
    """
    record = {"method": method}
    for name, value in options.items():
        if value is None or name in RUNTIME_OPTIONS or name in UNUSED_OPTIONS.get(method, ()):
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str | bool | int | float):
            record[name] = value
        elif name == "model":
            record["model_object"] = True
    return record


def _on_image(polygons: np.ndarray, sdata, key: str, path) -> np.ndarray:
    """Which imported polygons touch the image (level-0 pixels); those off it are left out and counted.

    Polygons in another frame (µm for pixels, another image's pixels) mostly miss the image: refused.
    """
    import shapely

    if not len(polygons):
        return np.ones(0, bool)
    _, height, width = _sdata.level0(sdata.images[key]).shape
    off = ~shapely.intersects(polygons, shapely.box(0, 0, width, height))
    if off.all():
        raise ValueError(
            f"`path`: none of the {len(polygons)} cells of {path} lie on image {key!r} ({width} x {height} px): "
            "are they in another frame (µm instead of pixels, another image's pixels)?"
        )
    if off.any():
        warnings.warn(
            f"{int(off.sum())} of {len(polygons)} cells of {path} lie outside image {key!r} and are left out.",
            UserWarning,
            stacklevel=3,
        )
    return ~off


def check_cells_key(sdata, key: str) -> str:
    """``key`` can name a new cells layer's shapes, or a clear error naming ``key_added``.

    It may replace the current cells layer or an unused element, never an element that is another
    element's subject: the spots, a tissue outline, true cells, or shapes another table annotates.
    """
    _sdata.check_element_name(sdata, key, "shapes", argument="key_added")
    if key.lower() == K.CELLS_TABLE_KEY.lower():
        raise ValueError(f"`key_added`: {key!r} is the name of the cells table itself; choose another name.")
    entries = sdata.attrs.get(K.ATTRS_KEY) or {}
    if key not in sdata.shapes or key == entries.get(K.ATTR_CELLS_SHAPES):
        return key
    roles = [attr for attr, value in entries.items() if attr.endswith("_key") and value == key]
    # the cells table and bitro's prediction tables annotate (or annotated) a cells layer: they may be replaced
    own_tables = {entries.get(K.ATTR_CELLS_TABLE, K.CELLS_TABLE_KEY), entries.get(K.ATTR_PRED_CELLS)}
    annotating = [
        name
        for name, table in sdata.tables.items()
        if name not in own_tables and not name.startswith(K.PRED_KEY) and key in _sdata.regions(table)
    ]
    if roles or annotating:
        used = f"attrs['bitro'][{roles[0]!r}]" if roles else f"table {annotating[0]!r}"
        raise ValueError(
            f"`key_added`: {key!r} names shapes that {used} refers to; segmenting into it would replace them. "
            "Choose another name."
        )
    return key


def _range_hint(sdata, key: str) -> str:
    """A hint when an integer image wider than 8 bits holds only 8-bit values (read as nearly black)."""
    pyramid = _sdata.levels(sdata.images[key])
    dtype = pyramid[0].dtype
    if not np.issubdtype(dtype, np.integer) or np.iinfo(dtype).max <= 255:
        return ""
    peak = int(np.asarray(pyramid[-1].data[:3]).max(initial=0))
    if peak > 255:
        return ""
    return (
        f" Its {dtype} pixels reach only {peak}, 8-bit values read on the {dtype} scale (nearly black): store it as "
        "uint8, or rescale it to the full range."
    )


def _kept(sdata) -> str:
    """`` (the existing cells layer X is kept)`` when there is one, for the no-cells warning."""
    key = (sdata.attrs.get(K.ATTRS_KEY) or {}).get(K.ATTR_CELLS_SHAPES)
    return f"; the existing cells layer {key!r} is kept" if key is not None and key in sdata.shapes else ""


def _level_rgb(sdata, key: str, index: int = 0):
    """Level ``index`` of image ``key`` as a ``(3, y, x)`` (dask) array (an alpha channel dropped), or a clear error."""
    level0 = _sdata.levels(sdata.images[key])[index]
    dims = tuple(level0.dims)
    if dims != ("c", "y", "x") or level0.shape[0] not in (3, 4):
        raise ValueError(
            f"Image {key!r} must be RGB (or RGBA) with dims ('c', 'y', 'x') to segment nuclei in H&E, "
            f"got dims {dims} and shape {tuple(level0.shape)}."
        )
    if level0.shape[0] == 4:
        logger.info("image %s: the alpha channel is ignored", key)
    return level0.data[:3]


def _n_tiles(shape, tile_size: int) -> int:
    return int(np.ceil(shape[0] / tile_size) * np.ceil(shape[1] / tile_size))


def _tiles(shape, tile_size: int, overlap: int):
    """``(core, grown)`` boxes ``(y0, y1, x0, x1)`` covering an image of ``shape`` ``(H, W)``."""
    height, width = shape
    for cy in range(0, height, tile_size):
        for cx in range(0, width, tile_size):
            core = (cy, min(cy + tile_size, height), cx, min(cx + tile_size, width))
            grown = (
                max(cy - overlap, 0),
                min(core[1] + overlap, height),
                max(cx - overlap, 0),
                min(core[3] + overlap, width),
            )
            yield core, grown


def _to_uint8(tile: np.ndarray) -> np.ndarray:
    """uint8 RGB of a tile: 16-bit (and wider) integers scaled by their type's range, floats taken as [0, 255].

    ``segment_cells`` scales a float image to [0, 255] once (see :func:`bitro._sdata.image_white`).
    """
    tile = np.asarray(tile)
    if tile.dtype == np.uint8:
        return tile
    if np.issubdtype(tile.dtype, np.integer) and np.iinfo(tile.dtype).max > 255:
        return (tile.astype(np.float64) * (255.0 / np.iinfo(tile.dtype).max)).round().clip(0, 255).astype(np.uint8)
    return np.clip(np.nan_to_num(tile), 0, 255).astype(np.uint8)


def _run_tile(tile, segmenter: Callable, core, grown, shape) -> tuple[np.ndarray, bool]:
    """Segment one grown tile ``(3, h, w)``; return the polygons it owns (global pixels) and whether it was skipped."""
    rgb = np.ascontiguousarray(np.moveaxis(_to_uint8(tile), 0, -1))
    if tissue_fraction(rgb) < MIN_TISSUE_FRACTION:
        return np.empty(0, dtype=object), True
    labels = np.asarray(segmenter(rgb))
    if labels.shape != rgb.shape[:2]:
        raise ValueError(
            f"The tile segmenter returned labels of shape {labels.shape} for a tile of shape {rgb.shape[:2]}."
        )
    return tile_polygons(labels, core=core, grown=grown, shape=shape), False


def tile_polygons(labels: np.ndarray, *, core, grown, shape) -> np.ndarray:
    """Polygons (global level-0 pixels) of the cells a tile owns, from its label image.

    ``core`` and ``grown`` are the tile's boxes ``(y0, y1, x0, x1)`` and ``shape`` the image's
    ``(H, W)``. A tile owns a cell whose centroid lies in its core and that does not touch a tile
    edge which is not an image edge (such a cell is cut; the neighbour tile holds it whole).
    """
    import shapely

    from bitro._vectorise import labels_to_polygons

    h, w = np.asarray(labels).shape

    def cut(rows: slice, cols: slice) -> bool:
        return (
            (rows.start == 0 and grown[0] > 0)
            or (rows.stop == h and grown[1] < shape[0])
            or (cols.start == 0 and grown[2] > 0)
            or (cols.stop == w and grown[3] < shape[1])
        )

    polys, _, _ = labels_to_polygons(labels, offset=(grown[2], grown[0]), simplify=0.25, skip=cut)
    if len(polys):
        c = shapely.get_coordinates(shapely.centroid(polys))
        own = (c[:, 1] >= core[0]) & (c[:, 1] < core[1]) & (c[:, 0] >= core[2]) & (c[:, 0] < core[3])
        polys = polys[own]
    return polys


def segment_tiled(
    data,
    segmenter: Callable,
    *,
    tile_size: int,
    overlap: int,
    n_jobs: int = 1,
    progress: bool = False,
    backend: str = "processes",
) -> tuple[np.ndarray, int, int]:
    """Run ``segmenter`` (``(H, W, 3)`` uint8 -> labels) over overlapping tiles of a ``(3, H, W)`` array.

    Tiles run on the active ``dask.distributed`` client if there is one; else, with ``n_jobs > 1``,
    in ``n_jobs`` worker processes (``backend="processes"``: the numpy / scipy / skimage work of a
    tile holds the GIL) or threads. Returns the de-duplicated polygons (global level-0 pixels), the
    number of tiles skipped without tissue and the number of tiles.
    """
    shape = tuple(int(s) for s in data.shape[1:])
    boxes = list(_tiles(shape, tile_size, overlap))
    client = _distributed_client()
    if client is None and n_jobs > 1 and backend == "processes" and not in_dask_worker():
        results = _compute_processes(data, boxes, segmenter, shape, n_jobs=n_jobs, progress=progress)
    else:
        import dask

        tasks = []
        for core, grown in boxes:
            tile = data[:, grown[0] : grown[1], grown[2] : grown[3]]
            tasks.append(dask.delayed(_run_tile, pure=True)(tile, segmenter, core, grown, shape))
        results = _compute(tasks, client=client, n_jobs=n_jobs, progress=progress)
    n_skipped = sum(skipped for _, skipped in results)
    parts = [p for p, _ in results if len(p)]
    polygons = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    polygons = _drop_border_duplicates(polygons, boxes, shape, overlap)
    return polygons, n_skipped, len(boxes)


def _compute_processes(data, boxes, segmenter: Callable, shape, *, n_jobs: int, progress: bool) -> list:
    """Tiles in ``n_jobs`` worker processes; the parent reads each tile just before a worker needs it."""
    from tqdm.auto import tqdm

    from ._windows import map_tiles

    jobs = (
        (np.asarray(data[:, grown[0] : grown[1], grown[2] : grown[3]]), segmenter, core, grown, shape)
        for core, grown in boxes
    )
    bar = tqdm(total=len(boxes), desc="segment_cells", unit="tile", disable=not progress)
    try:
        results = []
        for result in map_tiles(_run_tile, jobs, n_jobs=n_jobs):
            results.append(result)
            bar.update()
        return results
    finally:
        bar.close()


def _on_gpu(device: str | None) -> bool:
    from ._encoder import resolve_device

    return resolve_device(device).type != "cpu"


def _distributed_client():
    """The active dask.distributed client, or None inside a worker's task (e.g. a slide of ``predict_slides``).

    Inside a task the tiles run in local threads: nested cluster tasks would wait on busy workers.
    """
    try:
        from distributed import get_client
    except ImportError:
        return None
    if in_dask_worker():
        return None
    try:
        return get_client()
    except ValueError:
        return None


def _compute(tasks, *, client, n_jobs: int, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="segment_cells", unit="tile", disable=not progress)
    try:
        if client is not None:
            from distributed import as_completed

            futures = client.compute(tasks)
            index = {f.key: i for i, f in enumerate(futures)}
            results = [None] * len(futures)
            for future in as_completed(futures):
                results[index[future.key]] = future.result()
                bar.update()
            return results
        import dask
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    bar.update()

        with _Progress():
            return list(dask.compute(*tasks, scheduler="threads", num_workers=n_jobs))
    finally:
        bar.close()


def _drop_border_duplicates(polygons: np.ndarray, boxes, shape, overlap: int) -> np.ndarray:
    """Safety net for the centroid rule: near inner tile borders, drop a cell overlapping an earlier one by > 50%."""
    import shapely

    if len(polygons) < 2 or len(boxes) < 2:
        return polygons
    c = shapely.get_coordinates(shapely.centroid(polygons))
    ys = np.unique([b[0][0] for b in boxes if b[0][0] > 0])
    xs = np.unique([b[0][2] for b in boxes if b[0][2] > 0])
    near = np.zeros(len(polygons), bool)
    for edges, col in ((ys, 1), (xs, 0)):
        if len(edges):
            pos = np.searchsorted(edges, c[:, col])
            dist = np.minimum(
                np.abs(c[:, col] - edges[np.clip(pos - 1, 0, len(edges) - 1)]),
                np.abs(c[:, col] - edges[np.clip(pos, 0, len(edges) - 1)]),
            )
            near |= dist <= overlap
    idx = np.flatnonzero(near)
    if len(idx) < 2:
        return polygons
    band = polygons[idx]
    tree = shapely.STRtree(band)
    a, b = tree.query(band, predicate="intersects")
    pairs = a < b
    a, b = a[pairs], b[pairs]
    if not len(a):
        return polygons
    inter = shapely.area(shapely.intersection(band[a], band[b]))
    smaller = np.minimum(shapely.area(band[a]), shapely.area(band[b]))
    dup = inter > 0.5 * smaller
    drop = np.zeros(len(polygons), bool)
    drop[idx[b[dup]]] = True
    if drop.any():
        logger.debug("dropped %d duplicate cells on tile borders", int(drop.sum()))
    return polygons[~drop]


def _area_mask(polygons: np.ndarray, mpp: float, min_area_um2: float | None, max_area_um2: float | None) -> np.ndarray:
    """Which polygons are within the area limits (the others are counted in the log)."""
    import shapely

    if not len(polygons) or (min_area_um2 is None and max_area_um2 is None):
        return np.ones(len(polygons), bool)
    area = shapely.area(polygons) * mpp * mpp
    keep = np.ones(len(polygons), bool)
    if min_area_um2 is not None:
        keep &= area >= min_area_um2
    if max_area_um2 is not None:
        keep &= area <= max_area_um2
    if not keep.all():
        logger.info(
            "%d of %d cells dropped outside %s-%s µm²",
            (~keep).sum(),
            len(keep),
            min_area_um2 or 0,
            max_area_um2 or "inf",
        )
    return keep
