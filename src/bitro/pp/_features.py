"""Per-cell features: ``bt.pp.cell_features`` writes ``bitro_cells.obsm["bitro_features"]``."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._settings import resolve_n_jobs
from bitro._validate import check_choice, check_float, check_int, check_mpp, check_name

from ._windows import Window, map_tiles, tiles

if TYPE_CHECKING:
    from spatialdata import SpatialData

_METHODS = ("morphology", "encoder", "morphology+encoder")
_MODES = ("crop", "tile")

# morphology constants (recorded in uns[key_added]["params"])
RING_UM = 2.0
"""Width of the ring around each nucleus in which eosin (cytoplasm / stroma) is measured."""
DENSITY_RADIUS_UM = 50.0
N_NEIGHBORS = 8
H_RANGE = (0.0, 0.3)
"""Fixed hematoxylin range quantised into ``GLCM_LEVELS`` grey levels for the co-occurrence texture."""
GLCM_LEVELS = 32
QUANTILES = (0.1, 0.5, 0.9)

MORPHOLOGY_FEATURES = (
    "area_um2",
    "perimeter_um",
    "eccentricity",
    "solidity",
    "major_axis_um",
    "minor_axis_um",
    "circularity",
    "h_mean",
    "h_std",
    "h_q10",
    "h_q50",
    "h_q90",
    "e_mean",
    "h_ring_mean",
    "e_ring_mean",
    "e_ring_std",
    "h_glcm_contrast",
    "h_glcm_homogeneity",
    "h_gradient_mean",
    "n_neighbors_50um",
    "knn_dist_um",
)


def cell_features(
    sdata: SpatialData,
    *,
    method: str = "morphology",
    key_added: str = K.FEATURES_KEY,
    image_key: str | None = None,
    tile_size: int = 2048,
    encoder: str | os.PathLike | None = None,
    encoder_path: str | os.PathLike | None = None,
    mode: str = "crop",
    crop_um: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    mpp: float | None = None,
    n_jobs: int | None = None,
    copy: bool = False,
) -> SpatialData | None:
    """Compute a feature vector for every segmented cell.

    Reads the cells layer (the ``{method}_boundaries`` polygons and the ``bitro_cells`` table that
    ``bt.pp.segment_cells`` writes) and the level-0 image, tile by tile: each cell belongs to
    the tile holding its centroid, and a tile is read with the margin its cells need, so the whole
    slide is never in memory and the result does not depend on ``tile_size``.

    ``method="morphology"`` gives handcrafted, interpretable features per nucleus (21 columns):

    - shape, from the polygon: ``area_um2``, ``perimeter_um``, ``eccentricity``, ``solidity``,
      ``major_axis_um``, ``minor_axis_um`` (of the ellipse with the same second moments), ``circularity``
      (4πA/P²);
    - stain, after colour deconvolution (``skimage.color.rgb2hed``): hematoxylin mean, std and
      10/50/90 % quantiles and eosin mean inside the nucleus; hematoxylin mean, eosin mean and std in a
      ring of 2 µm around it (background pixels closer to this nucleus than to any other);
    - texture of the hematoxylin inside the nucleus: grey-level co-occurrence contrast and homogeneity
      (distance 1 px, 0° and 90°, symmetric, 32 levels over the fixed range 0-0.3, like
      ``skimage.feature.graycomatrix`` restricted to nucleus pixels) and the mean Sobel gradient;
    - context: number of other cells within 50 µm and mean distance to the 8 nearest cells (µm).

    Values are raw (no per-slide scaling); standardise them with statistics fitted on the training
    data only (the model does this), never per slide. A nucleus too small to cover a pixel centre is
    measured at the pixel under its centroid.

    ``method="encoder"`` runs an image encoder: a name of :func:`bitro.models.encoders` (UNI, Virchow2,
    H-optimus, Phikon, DINOv2, ...; loaded from the Hugging Face cache or hub, or from
    ``encoder_path``), a folder (bitro, ``transformers`` or ``timm`` layout) or a hub id. With
    ``mode="crop"`` each cell gets one crop of ``crop_um`` µm centred on it, resampled (bilinear) to the
    encoder's input size, padded with white beyond the image. With ``mode="tile"`` the image is cut
    into overlapping tiles of the encoder's input size, each tile goes through the encoder once, and a
    cell's feature is the mean of the patch tokens under its polygon weighted by the area it covers
    (tens of times fewer forwards than crops; the cell sees the tile's context). Either way the image is
    read at the encoder's pixel size when it is known (``mpp`` overrides), in batches on ``device``, in
    half precision on CUDA. Features already in the table from the same encoder and settings are kept:
    a slide is never featurised twice (delete ``obsm[key_added]`` to force it).
    ``method="morphology+encoder"`` concatenates the two, both measured at the encoder's pixel size.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with a cells layer (``sdata.attrs["bitro"]`` names it).
    method
        ``"morphology"``, ``"encoder"`` or ``"morphology+encoder"``.
    key_added
        The ``obsm`` and ``uns`` key of the cells table to write.
    image_key
        The image to measure; by default the one the cells were segmented on.
    tile_size
        Side of the tiles, in level-0 pixels.
    encoder
        Encoder methods only: ``"bitro"`` (default: the bundled offline encoder, trained by the project on
        cell-centred H&E crops; no download), a name listed by :func:`bitro.models.encoders`, a local
        folder, or a Hugging Face hub id.
    encoder_path
        A local copy of a named encoder's repository (offline; nothing is downloaded).
    mode
        ``"crop"`` (a crop per cell) or ``"tile"`` (patch tokens of tiles pooled under each cell).
    crop_um
        ``mode="crop"`` only: side of the crop around each cell, in µm; by default the one the encoder
        was trained with, else its input size at its pixel size, else 32.
    batch_size
        Images per forward pass: crops (default 256) or tiles (default 8).
    device
        ``method="encoder"`` only: the torch device; by default ``bt.settings.device``.
    mpp
        Measure at this pixel size (µm per pixel): windows are read from the pyramid level closest to
        it and resampled, so intensity and texture match those of a model trained at that size
        (:func:`bitro.tl.predict` passes its model's). ``None``: at the image's own pixel size.
    n_jobs
        Worker processes for the morphology features' tiles (default ``bt.settings.n_jobs``, ``-1``
        all cores); the parent reads each tile's window, a worker measures it. Encoders run in this
        process (torch parallelises inside each forward).
    copy
        Return a modified copy instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the modified copy if ``copy=True``. Writes ``obsm[key_added]`` (float32, cells x
    features) and ``uns[key_added]`` = ``{"names": {name: column}, "method": ..., "params": {...}}`` of
    the cells table and records ``key_added`` in ``sdata.attrs["bitro"]``.

    Examples
    --------
    >>> import bitro as bt
    >>> sdata = bt.datasets.toy_st(n_spots=16, seed=1)
    >>> bt.pp.segment_cells(sdata, method="watershed")
    >>> bt.pp.cell_features(sdata)
    >>> sdata["bitro_cells"].obsm["bitro_features"].shape[1]  # 21 morphology features per cell
    21
    """
    method = check_choice(method, "method", _METHODS)
    mode = check_choice(mode, "mode", _MODES)
    tile_size = check_int(tile_size, "tile_size", min_value=16)
    key_added = check_name(key_added, "key_added")
    n_jobs = resolve_n_jobs(n_jobs)
    deep = method != "morphology"
    if deep:
        encoder = "bitro" if encoder is None else encoder  # the bundled offline encoder
        if crop_um is not None:
            crop_um = check_float(crop_um, "crop_um", min_value=0, max_value=1000, strict_min=True)
        if batch_size is not None:
            batch_size = check_int(batch_size, "batch_size", min_value=1)
    sdata = _sdata.copy_or_self(sdata, copy)

    info = _sdata.info(sdata)
    table_key = _sdata.recorded(sdata, K.ATTR_CELLS_TABLE)
    shapes_key = info.get(K.ATTR_CELLS_SHAPES)
    if table_key not in sdata.tables or shapes_key is None or shapes_key not in sdata.shapes:
        raise ValueError(
            f"`sdata` has no cells layer (table {table_key!r} and shapes {shapes_key!r}): run "
            "bt.pp.segment_cells first."
        )
    img_key = _sdata.image_key(sdata, image_key if image_key is not None else info.get(K.ATTR_CELLS_IMAGE))
    model = None
    if deep:
        from ._encoder_load import load_cell_encoder

        model = load_cell_encoder(encoder, path=encoder_path)
        if mpp is None and model.mpp is not None:
            mpp = model.mpp  # read the image at the scale the encoder was trained at
    target_mpp, mpp = mpp, _sdata.image_mpp(sdata, img_key)
    table = sdata.tables[table_key]
    if deep:
        # the image too: the same encoder on another image (image_key=) gives other features
        settings = {**_encoder_settings(model, encoder, mode, crop_um, target_mpp or mpp), "image_key": img_key}
        done = table.uns.get(key_added, {})
        if key_added in table.obsm and done.get("method") == method and _same(done.get("params", {}), settings):
            logger.info(
                "%s.obsm[%r] already holds these %s features (%s); kept. Delete it to recompute.",
                table_key, key_added, method, settings["encoder"],
            )  # fmt: skip
            return sdata if copy else None
    table = _sdata.editable_table(sdata, table_key)
    geometry = _cell_geometry(sdata[shapes_key], table.obs[K.CELL_ID_KEY].to_numpy())
    image = _sdata.level0(sdata.images[img_key]).data
    white = _sdata.image_white(sdata.images[img_key], img_key)
    if white != 1.0:  # floats in [0, 255]: read as [0, 1] like every float image
        image = image / np.float32(white)
    scale = 1.0
    if target_mpp is not None:
        target = check_mpp(target_mpp, "mpp")
        if abs(target / mpp - 1) > 0.02:  # at another pixel size: a resampled view, polygons scaled alike
            from ._windows import ResampledImage

            image = ResampledImage(
                sdata.images[img_key], level0_mpp=mpp, target_mpp=target, cs=_sdata.coordinate_system(sdata),
                white=white,
            )  # fmt: skip
            scale = mpp / target  # image pixels per polygon pixel
            logger.info("cell features measured at %.3g µm/px (the image has %.3g)", target, mpp)
            mpp = target

    start = time.perf_counter()
    values, names, params = np.zeros((len(geometry), 0), np.float32), [], {"image_key": img_key, "mpp": mpp}
    if method in ("morphology", "morphology+encoder"):
        values, names = _morphology(image, geometry, mpp, int(tile_size), n_jobs, scale)
        params.update({
            "tile_size": int(tile_size),
            "ring_um": RING_UM,
            "density_radius_um": DENSITY_RADIUS_UM,
            "n_neighbors": N_NEIGHBORS,
            "h_range": list(H_RANGE),
            "glcm_levels": GLCM_LEVELS,
        })  # fmt: skip
    if deep:
        if scale != 1:
            import shapely

            geometry = shapely.transform(geometry, lambda xy: xy * scale)
        deep_values = _encode(image, geometry, mpp, model, settings, batch_size, int(tile_size), device)
        values = np.concatenate([values, deep_values], axis=1)
        names = names + [f"enc_{i}" for i in range(deep_values.shape[1])]
        params.update({**settings, "batch_size": batch_size or (8 if mode == "tile" else 256)})
    elapsed = time.perf_counter() - start

    table.obsm[key_added] = np.ascontiguousarray(values, dtype=np.float32)
    table.uns[key_added] = {"names": {name: i for i, name in enumerate(names)}, "method": method, "params": params}
    bad = ~np.isfinite(values) if len(values) else np.zeros((0, len(names)), bool)
    if bad.any():
        # e.g. a nucleus packed in by others has no background ring; the model reads NaN as the training mean
        counts = ", ".join(f"{name} {int(n)}" for name, n in zip(names, bad.sum(axis=0), strict=True) if n)
        logger.warning(
            "%d of %d cells have non-finite features (%s); models read them as the training mean",
            int(bad.any(axis=1).sum()), len(values), counts,
        )  # fmt: skip
    _sdata.write(sdata, {table_key: table}, attrs={K.ATTR_FEATURES: key_added, K.ATTR_FEATURES_MPP: float(mpp)})
    logger.info(
        "%s features (%d) of %d cells written to %s.obsm[%r] in %.1f s",
        method,
        len(names),
        len(values),
        table_key,
        key_added,
        elapsed,
    )
    return sdata if copy else None


# --- inputs --------------------------------------------------------------------------------------
def _cell_geometry(shapes, cell_ids: np.ndarray) -> np.ndarray:
    """Polygons of the cells in table order; multipolygons reduced to their largest part."""
    import shapely

    missing = ~np.isin(cell_ids, shapes.index.to_numpy())
    if missing.any():
        raise KeyError(
            f"{int(missing.sum())} cells of the cells table have no polygon (e.g. cell_id {cell_ids[missing][0]!r})."
        )
    geometry = np.asarray(shapes.geometry.loc[cell_ids].to_numpy(), dtype=object)
    types = shapely.get_type_id(geometry)
    for i in np.flatnonzero(types != 3):  # 3 = Polygon
        geom = geometry[i]
        if types[i] == 6:  # MultiPolygon
            parts = shapely.get_parts(geom)
            geometry[i] = parts[np.argmax(shapely.area(parts))]
        else:
            raise TypeError(f"cell {cell_ids[i]!r} is a {geom.geom_type}, not a polygon.")
    return geometry


# --- morphology ----------------------------------------------------------------------------------
def _shape_features(geometry: np.ndarray, mpp: float, chunk: int = 50_000) -> np.ndarray:
    """Area, perimeter, eccentricity, solidity, major/minor axis, circularity from the polygons (µm).

    In chunks of cells: the vertex arrays of a whole slide would be gigabytes.
    """
    if len(geometry) > chunk:
        return np.concatenate([_shape_features(geometry[i : i + chunk], mpp) for i in range(0, len(geometry), chunk)])
    import shapely

    n = len(geometry)
    area = shapely.area(geometry)
    perimeter = shapely.length(geometry)
    hull = shapely.area(shapely.convex_hull(geometry))
    rings = shapely.get_exterior_ring(geometry)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    # shift each polygon to its first vertex for numerical stability of the moments
    first = np.searchsorted(index, np.arange(n))
    first = np.minimum(first, len(index) - 1) if len(index) else first
    coords = coords - coords[first[index]] if len(index) else coords
    same = index[:-1] == index[1:]
    x0, y0 = coords[:-1][same, 0], coords[:-1][same, 1]
    x1, y1 = coords[1:][same, 0], coords[1:][same, 1]
    grp = index[:-1][same]
    cross = x0 * y1 - x1 * y0

    def total(v):
        return np.bincount(grp, weights=v, minlength=n)

    a2 = total(cross)  # twice the signed area
    with np.errstate(divide="ignore", invalid="ignore"):
        cx = total((x0 + x1) * cross) / (3 * a2)
        cy = total((y0 + y1) * cross) / (3 * a2)
        mxx = total((x0 * x0 + x0 * x1 + x1 * x1) * cross) / (6 * a2) - cx * cx
        myy = total((y0 * y0 + y0 * y1 + y1 * y1) * cross) / (6 * a2) - cy * cy
        mxy = total((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross) / (12 * a2) - cx * cy
        half_tr = (mxx + myy) / 2
        root = np.sqrt(np.maximum(((mxx - myy) / 2) ** 2 + mxy**2, 0))
        l1 = np.maximum(half_tr + root, 0)
        l2 = np.maximum(half_tr - root, 0)
        ecc = np.sqrt(np.clip(1 - l2 / l1, 0, 1))
        solidity = area / hull
        circularity = 4 * np.pi * area / perimeter**2
    return np.column_stack(
        [
            area * mpp**2,
            perimeter * mpp,
            ecc,
            solidity,
            4 * np.sqrt(l1) * mpp,
            4 * np.sqrt(l2) * mpp,
            circularity,
        ]
    )


def _context_features(centroids_um: np.ndarray) -> np.ndarray:
    """Number of other cells within ``DENSITY_RADIUS_UM`` and mean distance to the ``N_NEIGHBORS`` nearest (µm)."""
    from scipy.spatial import cKDTree

    n = len(centroids_um)
    out = np.full((n, 2), np.nan)
    if n == 0:
        return out
    tree = cKDTree(centroids_um)
    out[:, 0] = tree.query_ball_point(centroids_um, r=DENSITY_RADIUS_UM, return_length=True) - 1
    k = min(N_NEIGHBORS, n - 1)
    if k > 0:
        dist, _ = tree.query(centroids_um, k=k + 1)
        out[:, 1] = dist[:, 1:].mean(axis=1)
    return out


def _grouped(labels: np.ndarray, values: np.ndarray, n: int, quantiles=()) -> tuple[np.ndarray, ...]:
    """Mean, std and linear-interpolated quantiles of ``values`` per label 1..n (NaN where a label is empty)."""
    count = np.bincount(labels, minlength=n + 1)[1:].astype(float)
    s1 = np.bincount(labels, weights=values, minlength=n + 1)[1:]
    s2 = np.bincount(labels, weights=values.astype(np.float64) ** 2, minlength=n + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 0))
    out = [mean, std]
    if quantiles:
        order = np.lexsort((values, labels))
        sorted_values = values[order].astype(np.float64)
        ends = np.cumsum(np.bincount(labels, minlength=n + 1))
        starts = ends[:-1]  # start of label l (1..n) in the sorted array is ends[l-1]
        c = count.astype(int)
        has = c > 0
        for q in quantiles:
            pos = q * np.maximum(c - 1, 0)
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, np.maximum(c - 1, 0))
            frac = pos - lo
            res = np.full(n, np.nan)
            base = starts[has]
            res[has] = sorted_values[base + lo[has]] * (1 - frac[has]) + sorted_values[base + hi[has]] * frac[has]
            out.append(res)
    return tuple(out)


def _rasterise(geometry: np.ndarray, x0: int, y0: int, shape: tuple[int, int]) -> np.ndarray:
    """int32 label image (label i+1 = geometry[i]) of the pixels whose centre lies in each polygon; later ones win.

    A scanline fill of every polygon at once (numpy, no loop over cells): each exterior edge is cut
    by the pixel-centre rows it spans (half-open in y, so a vertex on a row counts once), the crossings
    of a polygon on a row are paired in x order (even-odd rule) and the pixel centres between each
    pair are filled.
    """
    import shapely

    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    coords, ring = shapely.get_coordinates(shapely.get_exterior_ring(geometry), return_index=True)
    if len(coords) < 2:
        return labels
    xy = coords - (x0 + 0.5, y0 + 0.5)  # pixel (r, c) has its centre at (c, r) here
    same = ring[:-1] == ring[1:]  # consecutive vertices of one ring make an edge
    (xa, ya), (xb, yb), poly = xy[:-1][same].T, xy[1:][same].T, ring[:-1][same]
    first = np.ceil(np.minimum(ya, yb))
    n_rows = (np.ceil(np.maximum(ya, yb)) - first).astype(np.int64)  # rows r with min <= r < max
    edge = np.repeat(np.arange(len(poly)), n_rows)
    row = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    x = xa[edge] + (row - ya[edge]) * (xb[edge] - xa[edge]) / (yb[edge] - ya[edge])
    order = np.lexsort((x, row, poly[edge]))  # by polygon, row, then x: crossings pair up in order
    x, row, owner = x[order], row[order].astype(np.int64), poly[edge][order]
    lo, hi = np.ceil(x[0::2]).astype(np.int64), np.floor(x[1::2]).astype(np.int64)
    row, owner = row[0::2], owner[0::2]
    keep = (row >= 0) & (row < height)
    lo, hi, row, owner = np.maximum(lo[keep], 0), np.minimum(hi[keep], width - 1), row[keep], owner[keep]
    length = np.maximum(hi - lo + 1, 0)
    run = np.repeat(np.arange(len(length)), length)
    cols = lo[run] + np.arange(len(run)) - np.repeat(np.cumsum(length) - length, length)
    labels[row[run], cols] = owner[run] + 1  # runs in polygon order: a later polygon overwrites
    return labels


def _hematoxylin_eosin(image, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin (float32) of a window, as ``skimage.color.rgb2hed`` computes them.

    Optical density ``log(max(rgb, 1e-6)) / log(1e-6)`` (a lookup table for 8-bit images) times
    skimage's ``hed_from_rgb``, clipped at 0; only the two channels used are computed.
    """
    from skimage.color import hed_from_rgb
    from skimage.util import img_as_float32

    block = np.asarray(image[:3, y0:y1, x0:x1])
    if block.shape[0] < 3:
        raise ValueError(f"the image has {block.shape[0]} channel(s); cell features need RGB.")
    if block.dtype == np.uint8:
        od = _OD_LUT[block]
    else:
        od = np.log(np.maximum(img_as_float32(block), 1e-6)) / np.float32(np.log(1e-6))
    conv = hed_from_rgb.astype(np.float32)
    h = np.maximum(np.tensordot(conv[:, 0], od, axes=1), 0)
    e = np.maximum(np.tensordot(conv[:, 1], od, axes=1), 0)
    return h.astype(np.float32, copy=False), e.astype(np.float32, copy=False)


_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)


def _tile_job(
    image, geometry: np.ndarray, tree, centroids_px: np.ndarray, cells: np.ndarray, size, ring_px: float, scale: float
):
    """What a tile's stain and texture features need (the window read, its nearby polygons in image pixels): picklable.

    ``geometry`` and ``tree`` are in polygon (level-0) pixels, ``scale`` image pixels per polygon pixel.
    """
    import shapely
    import shapely.geometry

    height, width = size
    bounds = shapely.bounds(geometry[cells]) * scale
    margin = int(np.ceil(2 * ring_px)) + 3
    x0 = max(int(np.floor(bounds[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(bounds[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(bounds[:, 2].max())) + margin, width)
    y1 = min(int(np.ceil(bounds[:, 3].max())) + margin, height)
    if x1 <= x0 or y1 <= y0:
        return None, len(cells)
    # every polygon touching the window, in global order (so overlaps resolve the same in every tile)
    near = np.sort(tree.query(shapely.geometry.box(x0 / scale, y0 / scale, x1 / scale, y1 / scale)))
    # label of each tile cell (its position within `near`); 0 for a cell off the window (outside the image)
    pos = np.searchsorted(near, cells)
    found = pos < len(near)
    found[found] = near[pos[found]] == cells[found]
    local = np.where(found, pos + 1, 0)
    polygons = geometry[near] if scale == 1 else shapely.transform(geometry[near], lambda xy: xy * scale)
    window = Window(image, y0, y1, x0, x1)
    return (window, polygons, centroids_px[near], local, (x0, y0, x1, y1), ring_px), len(cells)


def _tile_intensity(job, n_out: int) -> np.ndarray:
    """Stain and texture features (n_cells_in_tile x 12) of a tile's cells, from its :func:`_tile_job`."""
    from scipy import ndimage

    out = np.full((n_out, 12), np.nan)
    if job is None:
        return out
    window, polygons, centroids_px, local, (x0, y0, x1, y1), ring_px = job
    labels = _rasterise(polygons, x0, y0, (y1 - y0, x1 - x0))
    # nuclei too small to hold a pixel centre: the pixel under the centroid
    present = np.zeros(len(polygons) + 1, dtype=bool)
    present[np.unique(labels)] = True
    for j in np.flatnonzero(~present[1:]):
        px = int(np.floor(centroids_px[j, 0])) - x0
        py = int(np.floor(centroids_px[j, 1])) - y0
        if 0 <= px < x1 - x0 and 0 <= py < y1 - y0 and labels[py, px] == 0:
            labels[py, px] = j + 1
    n = len(polygons)

    h, e = _hematoxylin_eosin(window, x0, y0, x1, y1)

    flat = labels.ravel()
    inside = flat > 0
    lab_in = flat[inside]
    h_mean, h_std, h_q10, h_q50, h_q90 = _grouped(lab_in, h.ravel()[inside], n, QUANTILES)
    e_mean, _ = _grouped(lab_in, e.ravel()[inside], n)

    # ring: background pixels within ring_px of a nucleus, given to the nearest one
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    ring = (dist > 0) & (dist <= ring_px)
    ring_lab = labels[iy[ring], ix[ring]]
    h_ring, _ = _grouped(ring_lab, h[ring], n)
    e_ring, e_ring_std = _grouped(ring_lab, e[ring], n)

    # co-occurrence texture on quantised hematoxylin (pairs of horizontal / vertical neighbours in one nucleus)
    # levels as floats: a NaN pixel (no data) stays NaN, so its cell's texture is NaN, not the cast's garbage
    q = np.floor(np.clip((h - H_RANGE[0]) / (H_RANGE[1] - H_RANGE[0]) * GLCM_LEVELS, 0, GLCM_LEVELS - 1))
    pair_lab, diff = [], []
    for a, b, la, lb in (
        (q[:, :-1], q[:, 1:], labels[:, :-1], labels[:, 1:]),
        (q[:-1, :], q[1:, :], labels[:-1, :], labels[1:, :]),
    ):
        keep = (la == lb) & (la > 0)
        pair_lab.append(la[keep])
        diff.append(np.abs(a[keep] - b[keep]).astype(np.float64))
    pair_lab = np.concatenate(pair_lab)
    diff = np.concatenate(diff)
    n_pairs = np.bincount(pair_lab, minlength=n + 1)[1:].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        contrast = np.bincount(pair_lab, weights=diff**2, minlength=n + 1)[1:] / n_pairs
        homogeneity = np.bincount(pair_lab, weights=1 / (1 + diff**2), minlength=n + 1)[1:] / n_pairs
    grad = np.hypot(ndimage.sobel(h, axis=0, mode="nearest"), ndimage.sobel(h, axis=1, mode="nearest"))
    g_mean, _ = _grouped(lab_in, grad.ravel()[inside], n)

    cols = (h_mean, h_std, h_q10, h_q50, h_q90, e_mean, h_ring, e_ring, e_ring_std, contrast, homogeneity, g_mean)
    measured = local > 0  # a cell off the window keeps NaN, never another cell's values
    for k, col in enumerate(cols):
        out[measured, k] = col[local[measured] - 1]
    return out


def _morphology(
    image, geometry: np.ndarray, mpp: float, tile_size: int, n_jobs: int = 1, scale: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """The 21 morphology features of level-0 polygons ``geometry`` measured on ``image`` (``mpp`` µm/px).

    ``scale``: image pixels per polygon pixel (a resampled view); each tile's polygons are scaled
    when its job is made, so a slide's polygons are never copied whole.
    """
    import shapely

    n = len(geometry)
    _, height, width = image.shape
    centroids = shapely.get_coordinates(shapely.centroid(geometry)) * scale if n else np.zeros((0, 2))
    values = np.full((n, len(MORPHOLOGY_FEATURES)), np.nan)
    if n == 0:
        return values, list(MORPHOLOGY_FEATURES)
    values[:, :7] = _shape_features(geometry, mpp * scale)
    tree = shapely.STRtree(geometry)
    ring_px = RING_UM / mpp
    groups = tiles(centroids, width, height, tile_size)
    jobs = (_tile_job(image, geometry, tree, centroids, cells, (height, width), ring_px, scale) for cells in groups)
    for cells, result in zip(groups, map_tiles(_tile_intensity, jobs, n_jobs=n_jobs), strict=True):
        values[cells, 7:19] = result
    values[:, 19:21] = _context_features(centroids * mpp)
    return values, list(MORPHOLOGY_FEATURES)


# --- encoder -------------------------------------------------------------------------------------
def _encoder_settings(model, encoder, mode: str, crop_um: float | None, mpp: float) -> dict:
    """What the features depend on: the encoder (and its weights' fingerprint), the mode, crop and scale."""
    if crop_um is None:
        crop_um = model.crop_um or (model.input_size * model.mpp if model.mpp is not None else 32.0)
    return {
        "encoder": os.fspath(encoder),
        "format": model.kind,
        "architecture": model.architecture,
        "fingerprint": model.fingerprint,
        "input_size": model.input_size,
        "mode": mode,
        "crop_um": float(crop_um) if mode == "crop" else None,
        "encoder_mpp": float(mpp),
    }


def _same(params: dict, settings: dict) -> bool:
    return all(params.get(key) == value for key, value in settings.items())


def _encode(image, geometry, mpp, model, settings, batch_size, tile_size, device) -> np.ndarray:
    """Deep features of every cell, by crops or by tiles, on ``device``."""
    from ._encoder import encode_cells, resolve_device
    from ._encoder_tiles import encode_tiles

    dev = resolve_device(device)
    model.to(dev)
    if settings["mode"] == "tile":
        return encode_tiles(image, geometry, model, batch_size=batch_size or 8, device=dev)
    return encode_cells(image, geometry, mpp, model, crop_um=settings["crop_um"], batch_size=batch_size or 256,
                        tile_size=tile_size, device=dev)  # fmt: skip
