"""Render the synthetic tissue as an RGB H&E image, one chunk at a time.

Each chunk is computed from the cell table alone (a hash of global pixel coordinates stands in for
random noise), so the image can be a lazy dask array of any size: memory is bounded by the chunk,
not the slide, and a chunk renders the same whichever order chunks are computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.draw import polygon as draw_polygon

# Ruifrok & Johnston optical-density vectors of hematoxylin and eosin.
H_REF = np.array([0.65, 0.70, 0.29])
E_REF = np.array([0.07, 0.99, 0.11])
_HALO = 3  # pixels rendered around each chunk so the optical blur has no seams


@dataclass(frozen=True)
class Stain:
    """Stain of one slide: OD vectors and strengths (varies between slides like real staining)."""

    h_vector: tuple[float, float, float]
    e_vector: tuple[float, float, float]
    h_scale: float
    e_scale: float

    @classmethod
    def draw(cls, rng: np.random.Generator, jitter: float) -> Stain:
        """Reference vectors perturbed by ``jitter`` (0 = the reference stain)."""
        h = H_REF + rng.normal(0, 0.04 * jitter, 3)
        e = E_REF + rng.normal(0, 0.04 * jitter, 3)
        h, e = np.abs(h) / np.linalg.norm(h), np.abs(e) / np.linalg.norm(e)
        return cls(
            h_vector=tuple(map(float, h)),
            e_vector=tuple(map(float, e)),
            h_scale=float(1 + jitter * rng.uniform(-0.12, 0.12)),
            e_scale=float(1 + jitter * rng.uniform(-0.15, 0.15)),
        )


def _hash01(iy: np.ndarray, ix: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) pseudo-random value per integer lattice point (a 32-bit integer hash)."""
    # in 32-bit integers, which wrap as the former 64-bit arithmetic with masks did: the same values, 4x faster
    ay = (np.asarray(iy).astype(np.int64) * 0x8DA6B343).astype(np.uint32)  # `astype` keeps the low 32 bits
    ax = (np.asarray(ix).astype(np.int64) * 0xD8163841 + seed * 0xCB1AB31F).astype(np.uint32)
    h = ay + ax
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) / np.float32(2**32)


def _value_noise(rows: np.ndarray, cols: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) with grain ``scale`` pixels at global pixel rows x cols (outer grid)."""
    fy, fx = (rows + 0.5) / scale, (cols + 0.5) / scale
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep
    # separable: along x on the lattice rows the chunk spans, then along y; the same sums in the same order
    # as hashing the four corners of every pixel, so the same image, 7x faster
    lattice = np.arange(iy.min(), iy.max() + 2)[:, None]
    along_x = _hash01(lattice, ix[None, :], seed) * (1 - tx) + _hash01(lattice, ix[None, :] + 1, seed) * tx
    j = iy - lattice[0, 0]
    return (along_x[j] * (1 - ty)[:, None] + along_x[j + 1] * ty[:, None]).astype(np.float32)


@dataclass
class Scene:
    """What a chunk needs to render itself; all coordinates in full-resolution pixels."""

    boundaries: np.ndarray
    """(n_cells, n_vertices, 2) nucleus polygons (x, y)."""
    hematoxylin: np.ndarray
    texture: np.ndarray
    rim: np.ndarray
    tissue: np.ndarray
    """(n_vertices, 2) tissue outline (x, y)."""
    eosin_grid: np.ndarray
    """Coarse grid of stroma eosin concentration."""
    eosin_step: float
    """Spacing of ``eosin_grid`` in pixels."""
    stain: Stain
    grain_px: float
    """Chromatin grain size in pixels."""
    seed: int

    def __post_init__(self) -> None:
        self._bbox = np.concatenate([self.boundaries.min(axis=1), self.boundaries.max(axis=1)], axis=1)
        self._center = self.boundaries.mean(axis=1)
        self._extent = np.hypot(*(self.boundaries - self._center[:, None, :]).transpose(2, 0, 1)).max(axis=1)

    def render(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """RGB uint8 pixels of rows ``y0:y1`` and columns ``x0:x1``, shape (3, y1 - y0, x1 - x0)."""
        y0h, x0h = y0 - _HALO, x0 - _HALO
        h, w = y1 - y0 + 2 * _HALO, x1 - x0 + 2 * _HALO
        rows, cols = np.arange(y0h, y0h + h), np.arange(x0h, x0h + w)

        # PIL's scanline fill: the outline has hundreds of vertices and covers most of the chunk
        mask = Image.new("1", (w, h))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in self.tissue - (x0h + 0.5, y0h + 0.5)], fill=1)
        tissue = np.asarray(mask, dtype=bool)

        coords = np.meshgrid((rows + 0.5) / self.eosin_step, (cols + 0.5) / self.eosin_step, indexing="ij")
        eosin = ndimage.map_coordinates(self.eosin_grid, coords, order=1, mode="nearest").astype(np.float32)
        eosin *= 0.7 + 0.6 * _value_noise(rows, cols, 4.0 * self.grain_px, self.seed + 1)
        hema = np.full((h, w), 0.05, dtype=np.float32)
        grain = _value_noise(rows, cols, self.grain_px, self.seed + 2)

        b = self._bbox
        hit = np.flatnonzero((b[:, 2] >= x0h) & (b[:, 0] < x0h + w) & (b[:, 3] >= y0h) & (b[:, 1] < y0h + h))
        for i in hit:
            poly = self.boundaries[i]
            rr, cc = draw_polygon(poly[:, 1] - y0h - 0.5, poly[:, 0] - x0h - 0.5, (h, w))
            if rr.size == 0:
                continue
            d = np.hypot(rr + y0h + 0.5 - self._center[i, 1], cc + x0h + 0.5 - self._center[i, 0])
            d = np.clip(d / self._extent[i], 0, 1)
            profile = 1 - self.rim[i] * (1 - d) ** 2
            hema[rr, cc] = self.hematoxylin[i] * profile * (1 + self.texture[i] * (2 * grain[rr, cc] - 1))
            eosin[rr, cc] *= 0.3

        hema = np.where(tissue, hema, 0.0)
        eosin = np.where(tissue, eosin, 0.0)
        s = self.stain
        od = (
            (s.h_scale * hema)[None] * np.asarray(s.h_vector, np.float32)[:, None, None]
            + (s.e_scale * eosin)[None] * np.asarray(s.e_vector, np.float32)[:, None, None]
            + np.float32(0.03)
        )
        od = ndimage.gaussian_filter(od, sigma=(0, 0.7, 0.7))  # optics blur edges a little
        rgb = 255.0 * np.exp(-od)
        rgb += 6.0 * (_hash01(rows[:, None], cols[None, :], self.seed + 3)[None] - 0.5)  # sensor noise
        out = np.clip(rgb, 0, 255).astype(np.uint8)
        return out[:, _HALO : _HALO + y1 - y0, _HALO : _HALO + x1 - x0]

    def to_dask(self, shape: tuple[int, int], chunk: int):
        """The whole image as a lazy (c, y, x) dask array with square chunks of ``chunk`` pixels."""
        import dask.array as da

        def block(block_info=None):
            (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
            return self.render(y0, y1, x0, x1)

        chunks = ((3,), _split(shape[0], chunk), _split(shape[1], chunk))
        return da.map_blocks(block, chunks=chunks, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))


def _split(n: int, chunk: int) -> tuple[int, ...]:
    return (chunk,) * (n // chunk) + ((n % chunk,) if n % chunk else ())
