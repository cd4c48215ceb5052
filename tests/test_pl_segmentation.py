"""``bt.pl.segmentation``: cell outlines over an image crop (run under ``MPLBACKEND=agg``)."""

from __future__ import annotations

import numpy as np
import pytest

from bitro import _constants as K
from bitro.pl._segmentation import segmentation
from bitro.pp._assign import assign_cells

REGION = (1550.0, 850.0, 1700.0, 1000.0)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _cells_in(sdata, region) -> int:
    import shapely

    shapes = sdata.shapes[sdata.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES]]
    # toy: pixels -> µm with Scale(0.5) + Translation(1500, 800)
    geometry_um = shapely.transform(shapes.geometry.to_numpy(), lambda xy: xy * 0.5 + [1500, 800])
    return int(shapely.intersects(geometry_um, shapely.box(*region)).sum())


def test_outlines_over_the_image(toy_cells, tmp_path):
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    path = tmp_path / "seg.png"
    fig = segmentation(toy_cells, region=REGION, save=path, return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    images = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert len(images) == 1
    left, right, bottom, top = images[0].get_extent()
    assert left <= REGION[0]
    assert right >= REGION[2]
    assert top <= REGION[1]
    assert bottom >= REGION[3]
    (outlines,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    n = _cells_in(toy_cells, REGION)
    assert len(outlines.get_paths()) == n > 20
    # outlines are drawn in µm: every outline touches the crop
    for p in outlines.get_paths():
        v = p.vertices
        assert v[:, 0].max() >= REGION[0]
        assert v[:, 0].min() <= REGION[2]
    assert path.stat().st_size > 20_000


def test_default_crop_and_colours(toy_cells, tmp_path):
    from matplotlib.axes import Axes

    assign_cells(toy_cells)
    ax = segmentation(toy_cells, color="area_um2", save=tmp_path / "a.png")
    assert isinstance(ax, Axes)
    x0, x1 = ax.get_xlim()
    assert x1 - x0 == pytest.approx(150.0)
    edge = ax.collections[0].get_edgecolors()
    assert len(np.unique(edge.round(3), axis=0)) > 3  # coloured by area
    toy_cells[K.CELLS_TABLE_KEY].obs["kind"] = toy_cells[K.TRUE_CELLS_TABLE_KEY].obs[K.CELL_TYPE_KEY].to_numpy()
    ax = segmentation(toy_cells, color="kind", region=REGION, show=False)
    assert ax.get_legend() is not None


def test_uses_a_coarser_level_for_a_large_crop(toy_cells):
    from matplotlib.image import AxesImage

    ax = segmentation(toy_cells, region=(1400.0, 700.0, 2300.0, 1400.0), show=False)
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert max(image.get_array().shape[:2]) <= 1200
    assert len(ax.collections[0].get_paths()) == len(toy_cells.shapes["true_boundaries"])


def test_into_given_axes(toy_cells):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    out = segmentation(toy_cells, region=REGION, ax=axes[1])
    assert out is axes[1]
    assert len(axes[1].collections) == 1
    assert not axes[0].collections


def test_bad_keys(toy_cells):
    with pytest.raises(KeyError, match="shapes_key"):
        segmentation(toy_cells, shapes_key="nope", show=False)
    with pytest.raises(KeyError, match="image_key"):
        segmentation(toy_cells, image_key="nope", show=False)
    with pytest.raises(KeyError, match="color"):
        segmentation(toy_cells, color="nope", show=False)
    with pytest.raises(ValueError, match="region"):
        segmentation(toy_cells, region=(10, 10, 0, 0), show=False)


def test_no_cells_layer(toy_st):
    with pytest.raises(KeyError, match="segmentation"):
        segmentation(toy_st, show=False)
