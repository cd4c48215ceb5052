"""Where the synthetic cells are: tissue outline, cell-type regions, nuclei and their expression.

Everything here is in µm, in the tissue's own frame (origin at the image's top-left corner).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage

from ._cell_types import MAX_NUCLEUS_RADIUS_UM, CellType, Programs

N_VERTICES = 24
"""Vertices of each true nucleus polygon."""

_MIN_GAP_UM = 0.8
"""Smallest distance between the outlines of two true nuclei: they never touch or overlap."""


@dataclass
class Cells:
    """True cells of one synthetic tissue (positions in µm)."""

    x: np.ndarray
    y: np.ndarray
    cell_type: np.ndarray
    """Index into the tuple of cell types."""
    state: np.ndarray
    """Continuous cell state (standard normal), scales nucleus size and the state genes."""
    boundary: np.ndarray
    """(n_cells, N_VERTICES, 2) polygon vertices (x, y) in µm."""
    hematoxylin: np.ndarray
    """Hematoxylin concentration of each nucleus."""
    expression: np.ndarray
    """(n_cells, n_genes) true mean counts of each cell."""

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Section:
    """One synthetic section before it becomes a SpatialData (lengths in µm)."""

    cells: Cells
    tissue: shapely.Polygon
    width_um: float
    height_um: float
    region_logits: np.ndarray
    """(n_types, gh, gw) region fields (plus log proportions) on a coarse grid."""
    region_step_um: float
    """Spacing of ``region_logits``."""


def blob(center: tuple[float, float], semi_axes: tuple[float, float], rng, *, wobble: float, n: int = 256):
    """An irregular, star-shaped tissue outline: a superellipse with random low-frequency wobble."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 6):
        radius += wobble * rng.normal(0, 1 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.6, None)
    # superellipse of exponent 3: fuller than an ellipse, rounder than a rectangle
    c, s = np.cos(theta), np.sin(theta)
    x = semi_axes[0] * radius * np.sign(c) * np.abs(c) ** (2 / 3)
    y = semi_axes[1] * radius * np.sign(s) * np.abs(s) ** (2 / 3)
    return shapely.Polygon(np.column_stack([x + center[0], y + center[1]]))


def region_logits(width_um: float, height_um: float, n_types: int, region_size_um: float, rng):
    """Smooth random fields, one per type, on a coarse grid (spacing ``region_size_um / 4``).

    Returns the grid (n_types, gh, gw), standardised per type, and its spacing in µm.
    """
    step = region_size_um / 4
    gh, gw = int(np.ceil(height_um / step)) + 2, int(np.ceil(width_um / step)) + 2
    noise = rng.normal(size=(n_types, gh, gw))
    fields = ndimage.gaussian_filter(noise, sigma=(0, 2.0, 2.0), mode="wrap")
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    return fields, step


def sample_at(grid: np.ndarray, step: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of each ``grid[k]`` at µm positions; returns (len(grid), len(x))."""
    coords = np.vstack([np.asarray(y) / step, np.asarray(x) / step])
    return np.stack([ndimage.map_coordinates(g, coords, order=1, mode="nearest") for g in grid])


def sample_section(
    tissue: shapely.Polygon,
    *,
    width_um: float,
    height_um: float,
    types: tuple[CellType, ...],
    programs: Programs,
    proportions: np.ndarray,
    cell_spacing_um: float,
    region_size_um: float,
    region_sharpness: float,
    cell_noise: float,
    rng: np.random.Generator,
) -> Section:
    """Draw the nuclei inside ``tissue`` (in a ``width_um`` x ``height_um`` image): positions, types, shapes, stain, expression.

    Cells sit on a strongly jittered hexagonal lattice; each site takes a type from the local
    region fields and is kept with that type's density; nuclei that would overlap are dropped.
    """
    xmin, ymin, xmax, ymax = tissue.bounds
    fields, step = region_logits(width_um, height_um, len(types), region_size_um, rng)
    logits = region_sharpness * fields + np.log(proportions)[:, None, None]

    row_h = cell_spacing_um * np.sqrt(3) / 2
    rows = np.arange(ymin, ymax + row_h, row_h)
    cols = np.arange(xmin, xmax + cell_spacing_um, cell_spacing_um)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows))[:, None] % 2) * cell_spacing_um / 2
    x, y = gx.ravel(), gy.ravel()
    # strong jitter so the lattice does not show; overlapping nuclei are removed below
    angle_j, radius_j = rng.uniform(0, 2 * np.pi, x.size), 0.35 * cell_spacing_um * np.sqrt(rng.random(x.size))
    x, y = x + radius_j * np.cos(angle_j), y + radius_j * np.sin(angle_j)
    # whole nuclei inside the tissue (and so inside the image)
    inside = shapely.contains_xy(tissue.buffer(-MAX_NUCLEUS_RADIUS_UM), x, y)
    x, y = x[inside], y[inside]

    p = sample_at(logits, step, x, y)
    p = np.exp(p - p.max(axis=0))
    p /= p.sum(axis=0)
    cell_type = (rng.random(x.size)[None, :] > np.cumsum(p, axis=0)).sum(axis=0)
    cell_type = np.minimum(cell_type, len(types) - 1)
    density = np.array([t.density for t in types])
    keep = rng.random(x.size) < density[cell_type]
    x, y, cell_type = x[keep], y[keep], cell_type[keep]
    n = x.size

    state = rng.standard_normal(n)
    radius = np.array([t.radius_um for t in types])[cell_type]
    a = radius * (1 + 0.08 * state) * rng.lognormal(0, 0.06, n)
    ratio = np.clip(np.array([t.axis_ratio for t in types])[cell_type] * rng.uniform(0.9, 1.1, n), 0.2, 1.0)
    b = a * ratio
    angle = rng.uniform(0, np.pi, n)
    irregular = np.array([t.irregularity for t in types])[cell_type]
    theta = np.linspace(0, 2 * np.pi, N_VERTICES, endpoint=False)
    wobble = np.zeros((n, N_VERTICES))
    for k in (2, 3, 4):
        amp = irregular * rng.normal(0, 1, n) / np.sqrt(k)
        wobble += amp[:, None] * np.cos(k * theta[None, :] + rng.uniform(0, 2 * np.pi, n)[:, None])
    r = 1 + np.clip(wobble, -0.3, 0.3)
    ex, ey = a[:, None] * r * np.cos(theta), b[:, None] * r * np.sin(theta)
    # cap the extent: keeps the overlap search radius small
    scale = np.minimum(1.0, MAX_NUCLEUS_RADIUS_UM / np.hypot(ex, ey).max(axis=1))
    ex, ey = ex * scale[:, None], ey * scale[:, None]
    keep = _non_overlapping(x, y, np.hypot(ex, ey).max(axis=1), gap=_MIN_GAP_UM)
    x, y, cell_type, state, angle, ex, ey = (
        x[keep],
        y[keep],
        cell_type[keep],
        state[keep],
        angle[keep],
        ex[keep],
        ey[keep],
    )
    n = x.size
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    boundary = np.stack([x[:, None] + ca * ex - sa * ey, y[:, None] + sa * ex + ca * ey], axis=-1)

    hema = np.array([t.hematoxylin for t in types])[cell_type] * rng.lognormal(0, 0.08, n) * (1 + 0.05 * state)
    expression = (
        programs.rates[cell_type]
        * np.exp(np.outer(state, programs.state_loading))
        * rng.lognormal(-(cell_noise**2) / 2, cell_noise, (n, programs.rates.shape[1]))
    )
    cells = Cells(
        x=x,
        y=y,
        cell_type=cell_type,
        state=state,
        boundary=boundary,
        hematoxylin=hema,
        expression=expression.astype(np.float32),
    )
    return Section(cells, tissue, width_um, height_um, logits, step)


def _non_overlapping(x: np.ndarray, y: np.ndarray, extent: np.ndarray, *, gap: float) -> np.ndarray:
    """Mask that drops the later cell of every pair whose nuclei (discs of ``extent``) come closer than ``gap``."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.column_stack([x, y])).query_pairs(2 * extent.max() + gap, output_type="ndarray")
    d = np.hypot(x[pairs[:, 0]] - x[pairs[:, 1]], y[pairs[:, 0]] - y[pairs[:, 1]])
    pairs = pairs[d < extent[pairs[:, 0]] + extent[pairs[:, 1]] + gap]
    keep = np.ones(x.size, dtype=bool)
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:  # deterministic order
        if keep[i] and keep[j]:
            keep[j] = False
    return keep
