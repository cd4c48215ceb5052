"""The ground floor: SpatialData bookkeeping shared by every layer (io, pp, tl, pl, models).

- ``attrs["bitro"]``: :func:`info` reads it, :func:`write` / :func:`record` change it (with the
  package version), and the keys a step recorded are what the next step reads (:func:`recorded`);
- elements: :func:`write` adds or replaces elements, crash-safe on a zarr-backed object
  (:mod:`bitro._store`), and :func:`editable_table` gives a table to change without touching the
  original until the write succeeds; :func:`copy_or_self` implements ``copy=``;
- images: :func:`image_key`, :func:`levels`, :func:`level0`, :func:`image_mpp`;
- coordinates: :func:`affine_xy`, :func:`apply_affine`, :func:`linear_scale`, :func:`spots_um`;
- cells: :func:`cells_table_key`, :func:`cells_shapes_key`, :func:`cell_boundaries`,
  :func:`cell_centroids_um`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bitro import _constants as K

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

# --- attrs -----------------------------------------------------------------------------------------

_DEFAULTS = {
    K.ATTR_TABLE: K.TABLE_KEY,
    K.ATTR_CELLS_TABLE: K.CELLS_TABLE_KEY,
    K.ATTR_FEATURES: K.FEATURES_KEY,
    K.ATTR_GRAPH: K.GRAPH_KEY,
    K.ATTR_SPOT_ASSIGNMENT: K.SPOT_ID_KEY,
}
"""What a key means when no step recorded it (the documented default names)."""


def info(sdata: SpatialData) -> dict:
    """``sdata.attrs["bitro"]``, or a clear error if no bitro reader made this object."""
    entries = sdata.attrs.get(K.ATTRS_KEY)
    if not entries:
        raise ValueError(
            "`sdata` has no attrs['bitro']: read it with a bt.io reader or bt.datasets, or record "
            "image_key, mpp and coordinate_system there."
        )
    return entries


def recorded(sdata: SpatialData, attr: str, default: str | None = None) -> str | None:
    """The key a step recorded under ``attr`` in ``attrs["bitro"]``, else its documented default."""
    value = info(sdata).get(attr)
    return value if value is not None else (default if default is not None else _DEFAULTS.get(attr))


def spots_table_key(sdata: SpatialData) -> str | None:
    """The table annotating the recorded spots: the pseudo-spots' own when predict laid them, else ``table_key``."""
    values = info(sdata)
    pseudo = values.get(K.ATTR_PSEUDO_TABLE)
    if pseudo is not None and pseudo in sdata.tables and values.get(K.ATTR_SPOTS) in _regions_of(sdata, pseudo):
        return pseudo
    return recorded(sdata, K.ATTR_TABLE)


def _regions_of(sdata: SpatialData, table_key: str) -> list[str]:
    return regions(sdata.tables[table_key])


def coordinate_system(sdata: SpatialData) -> str:
    """The µm coordinate system the readers mapped every element to."""
    cs = info(sdata).get(K.ATTR_COORDINATE_SYSTEM)
    if cs is None:
        raise ValueError("attrs['bitro'] has no coordinate_system: read the data with a bt.io reader.")
    return cs


def sample_id(sdata: SpatialData, default: str = "sample") -> str:
    """The sample id the reader recorded (``default`` when none)."""
    return str(info(sdata).get(K.ATTR_SAMPLE_ID, default))


def _with_version(entries: Mapping[str, Any], base: Mapping[str, Any], drop: Iterable[str] = ()) -> dict:
    from bitro import __version__

    merged = {k: v for k, v in base.items() if k not in set(drop)}
    merged.update({k: v for k, v in entries.items() if v is not None})
    merged[K.ATTR_VERSION] = __version__
    return merged


def write(
    sdata: SpatialData,
    elements: Mapping[str, Any] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    drop_attrs: Iterable[str] = (),
) -> None:
    """Add or replace ``elements`` and merge ``attrs`` into ``attrs["bitro"]``: the one way bitro writes.

    On a zarr-backed object the new elements are complete on disk before the old ones go, and the
    attrs change last (:func:`bitro._store.commit`); a failure leaves disk and memory as they were.
    Names are checked first: an element may replace one of its own type, never take the name of
    another type's (spatialdata would refuse it in memory after the store had it). ``None`` values
    in ``attrs`` are ignored; the entries named in ``drop_attrs`` are removed; the package version is
    recorded.
    """
    from bitro._store import commit

    for name, element in (elements or {}).items():
        check_element_name(sdata, name, _kind(sdata, name, element))
    elements = {name: _tidy(element) for name, element in (elements or {}).items()}
    drop_attrs = tuple(drop_attrs)
    if drop_attrs and attrs is None:
        attrs = {}
    new_info = _with_version(attrs or {}, sdata.attrs.get(K.ATTRS_KEY, {}), drop_attrs) if attrs is not None else None
    if sdata.is_backed():
        commit(sdata.path, elements, {K.ATTRS_KEY: new_info} if new_info is not None else None)
    for name, element in elements.items():
        sdata[name] = element
    if new_info is not None:
        sdata.attrs[K.ATTRS_KEY] = new_info


def check_element_name(sdata: SpatialData, name: str, kind: str, *, argument: str | None = None) -> None:
    """``name`` is a valid element name that ``sdata`` can hold a ``kind`` element under, or a clear error.

    ``kind`` is ``"images"``, ``"labels"``, ``"points"``, ``"shapes"`` or ``"tables"``. An element may
    replace one of the same kind and name; it may not take the name (in any letter case) of an
    element of another kind, or a case variant of another element's name. ``argument`` names the
    parameter the name came from in the error.
    """
    from spatialdata._core.validation import check_valid_name

    what = f"`{argument}`: " if argument else "element name "
    try:
        check_valid_name(name)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}{name!r} is not a valid SpatialData element name ({err})") from None
    if str(name).startswith("."):  # spatialdata accepts it in memory, but read_zarr skips hidden folders
        raise ValueError(f"{what}{name!r} starts with '.': a zarr store would hide the element; choose another name.")
    for other_kind, other, _ in sdata.gen_elements():
        if other.lower() == str(name).lower() and (other_kind != kind or other != name):
            raise ValueError(
                f"{what}{name!r} is already the name of the {other_kind[:-1]} element {other!r} of `sdata`; "
                "choose another name."
            )


def _kind(sdata: SpatialData, name: str, element) -> str:
    """The element type an element will be filed under (cheap: by its class, not by validating it)."""
    import geopandas as gpd
    from anndata import AnnData

    if isinstance(element, AnnData):
        return "tables"
    if isinstance(element, gpd.GeoDataFrame):
        return "shapes"
    if hasattr(element, "dims") or hasattr(element, "children"):  # DataArray / DataTree: an image or labels
        if name in sdata.labels:
            return "labels"
        if name in sdata.images:
            return "images"
        from spatialdata.models import Image2DModel, Image3DModel, get_model

        return "images" if get_model(element) in (Image2DModel, Image3DModel) else "labels"
    return "points"


def regions(table) -> list[str]:
    """The elements a table annotates (its spatialdata ``region``: a name or a list of them), as a list."""
    region = table.uns.get("spatialdata_attrs", {}).get("region")
    if region is None:
        return []
    return [str(region)] if isinstance(region, str) else [str(r) for r in region]


def image_white(element, name: str = "image") -> float:
    """The value of white of an image's floats: 1 (floats in [0, 1]) or 255 (floats in [0, 255]); 1 for integers.

    Decided once per image, from its coarsest pyramid level, so every step (segmentation, features,
    encoders) reads the same colours whatever a tile holds; other float ranges get a clear error.
    """
    pyramid = levels(element)
    if not np.issubdtype(pyramid[0].dtype, np.floating):
        return 1.0
    with np.errstate(invalid="ignore"):
        peak = float(np.nanmax(np.asarray(pyramid[-1].data[:3]), initial=0.0))
    if peak <= 1.0 + 1e-6:
        return 1.0
    if peak <= 255.0 + 1e-3:
        return 255.0
    raise ValueError(
        f"Image {name!r} holds floats up to {peak:.4g}; bitro reads float images in [0, 1] or [0, 255] "
        "(or integers): rescale it."
    )


def _tidy(element):
    """A table annotating one region names it as a string, not a one-element list.

    spatialdata's queries leave ``["region"]``; after a zarr round trip such a list of strings comes
    back as an array that ``AnnData.copy`` crashes on with numpy < 2.1 (numpy #28609).
    """
    attrs = getattr(element, "uns", {}).get("spatialdata_attrs") if hasattr(element, "uns") else None
    region = attrs.get("region") if isinstance(attrs, dict) else None
    if isinstance(region, list | tuple | np.ndarray) and len(region) == 1:
        attrs["region"] = str(region[0])
    return element


def tidy_tables(sdata: SpatialData) -> SpatialData:
    """Every table of ``sdata`` that annotates one region names it as a string (see :func:`write`); returns ``sdata``."""
    for table in sdata.tables.values():
        _tidy(table)
    return sdata


def record(sdata: SpatialData, **entries: Any) -> None:
    """Merge ``entries`` (JSON-serialisable) into ``attrs["bitro"]``, on disk too when backed."""
    write(sdata, attrs=entries)


def editable_table(sdata: SpatialData, key: str) -> AnnData:
    """A copy of table ``key`` to change and :func:`write` back: new containers, shared arrays (cheap).

    Changing its ``obs`` / ``var`` columns or its ``obsm`` / ``obsp`` / ``uns`` entries leaves the
    original untouched, so a step that fails half-way changes nothing.
    """
    import anndata as ad

    table = sdata.tables[key]
    copy = ad.AnnData(
        X=table.X,
        obs=table.obs.copy(),
        var=table.var.copy(),
        uns=dict(table.uns),
        obsm=dict(table.obsm),
        varm=dict(table.varm),
        obsp=dict(table.obsp),
        varp=dict(table.varp),
        layers=dict(table.layers),
    )
    if table.raw is not None:
        copy.raw = table.raw.to_adata()
    return copy


def copy_or_self(sdata: SpatialData, copy: bool) -> SpatialData:
    """``sdata`` itself, or with ``copy=True`` an in-memory deep copy (never backed: writes stay in memory)."""
    if not copy:
        return sdata
    from spatialdata import deepcopy

    out = deepcopy(sdata)
    out.attrs.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in sdata.attrs.items()})
    return out


# --- images ----------------------------------------------------------------------------------------


def image_key(sdata: SpatialData, key: str | None = None) -> str:
    """The image to work on: ``key``, or the one the reader recorded."""
    key = key if key is not None else info(sdata).get(K.ATTR_IMAGE)
    if key is None or key not in sdata.images:
        raise KeyError(f"`image_key`: {key!r} is not an image of `sdata` (images: {list(sdata.images)}).")
    return key


def levels(element) -> list:
    """The levels of an image element, finest first (a single-scale image is one level)."""
    if hasattr(element, "keys"):
        return [element[name]["image"] for name in sorted(element.keys(), key=lambda s: int(s.replace("scale", "")))]
    return [element]


def level0(element):
    """Level 0 of an image element as a :class:`xarray.DataArray` (lazy)."""
    return levels(element)[0]


def image_mpp(sdata: SpatialData, key: str) -> float:
    """µm per level-0 pixel of image ``key`` in the recorded (µm) coordinate system."""
    return linear_scale(affine_xy(level0(sdata.images[key]), coordinate_system(sdata)))


# --- coordinates -----------------------------------------------------------------------------------


def affine_xy(element, cs: str) -> np.ndarray:
    """3x3 affine matrix (x, y) mapping ``element`` to coordinate system ``cs``, with a clear error if it has none."""
    from spatialdata.transformations import get_transformation

    transformations = get_transformation(element, get_all=True)
    if cs not in transformations:
        raise ValueError(
            f"element has no transformation to the coordinate system {cs!r} recorded in attrs['bitro'] "
            f"(it has {list(transformations)})."
        )
    return np.asarray(transformations[cs].to_affine_matrix(("x", "y"), ("x", "y")), dtype=float)


def apply_affine(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map ``(n, 2)`` points with a 3x3 affine matrix."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def linear_scale(matrix: np.ndarray) -> float:
    """Length scale of an affine map (its area scale's square root); lengths like radii multiply by it."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def spots_um(sdata: SpatialData, spots_key: str, ids=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Spot centres ``(n, 2)`` and radii (``None`` without a ``radius`` column) in µm.

    In the order of the shapes element, or of ``ids`` (its index values, e.g. a table's instance ids).
    """
    import shapely

    if spots_key not in sdata.shapes:
        raise KeyError(f"{spots_key!r} is not a shapes element of `sdata` (shapes: {list(sdata.shapes)}).")
    spots = sdata.shapes[spots_key]
    if ids is not None:
        missing = ~pd.Index(ids).isin(spots.index)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} spots have no circle in {spots_key!r}.")
        spots = spots.loc[ids]
    matrix = affine_xy(sdata.shapes[spots_key], coordinate_system(sdata))
    centres = apply_affine(matrix, shapely.get_coordinates(spots.geometry.to_numpy()))
    radius = spots["radius"].to_numpy(dtype=float) * linear_scale(matrix) if "radius" in spots else None
    return centres, radius


# --- cells -----------------------------------------------------------------------------------------


def cells_table_key(sdata: SpatialData) -> str:
    """The cells table a segmentation recorded, or a clear error if there is none."""
    key = recorded(sdata, K.ATTR_CELLS_TABLE)
    if key not in sdata.tables:
        raise KeyError(
            f"`sdata` has no cells table {key!r}: run a segmentation (bt.pp.segment_cells) first "
            f"(tables: {list(sdata.tables)})."
        )
    return key


def cells_shapes_key(sdata: SpatialData, table_key: str | None = None) -> str:
    """The boundaries the cells table annotates (recorded in attrs, else the table's region)."""
    table = sdata.tables[table_key or cells_table_key(sdata)]
    key = info(sdata).get(K.ATTR_CELLS_SHAPES)
    if key is None:
        regions = table.uns.get("spatialdata_attrs", {}).get("region")
        key = regions if isinstance(regions, str) else (list(regions)[0] if regions is not None else None)
    if key is None or key not in sdata.shapes:
        raise KeyError(
            f"the cells boundaries {key!r} that table {table_key!r} annotates are not shapes of `sdata` "
            f"(shapes: {list(sdata.shapes)})."
        )
    return key


def cell_boundaries(sdata: SpatialData) -> tuple[str, str, np.ndarray]:
    """Cells table key, boundaries key and the boundary polygons ordered like the table's rows.

    Rows are matched to polygons on the table's instance key; a cell without a boundary is an error.
    Polygons are in the boundaries element's own frame.
    """
    table_key = cells_table_key(sdata)
    shapes_key = cells_shapes_key(sdata, table_key)
    table, shapes = sdata.tables[table_key], sdata.shapes[shapes_key]
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", K.CELL_ID_KEY)
    ids = table.obs[instance_key].to_numpy()
    missing = ~pd.Index(ids).isin(shapes.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} cells of table {table_key!r} have no boundary in {shapes_key!r}.")
    return table_key, shapes_key, shapes.geometry.loc[ids].to_numpy()


def cell_centroids_um(sdata: SpatialData) -> tuple[str, np.ndarray]:
    """Cells table key and the ``(n_cells, 2)`` centroids of its cells in the µm coordinate system.

    Centroids are those of the boundary polygons, mapped with the boundaries' own transformation
    and ordered like the table's rows (matched on the table's instance key).
    """
    import shapely

    table_key, shapes_key, geometry = cell_boundaries(sdata)
    centroid_px = shapely.get_coordinates(shapely.centroid(geometry)) if len(geometry) else np.zeros((0, 2))
    return table_key, apply_affine(affine_xy(sdata.shapes[shapes_key], coordinate_system(sdata)), centroid_px)
