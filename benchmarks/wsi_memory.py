"""Peak memory of ``bt.io.wsi`` on a large pyramidal slide versus the slide's full-resolution size.

Writes a synthetic tiled, JPEG-compressed pyramidal TIFF (default 40k x 40k RGB = 4.8 GB decoded,
levels down to ~1.25k px, 0.25 µm/px in its resolution tags) tile by tile from a generator, so the
writer never holds a level in memory. Each pyramid level is rendered on its own from the same
analytic pattern (an elliptical "section" with stripes and dots on pale glass), not downsampled.

A fresh process then opens it with ``bt.io.wsi`` (lazy image + tissue polygon from a low level),
averages a few 1024 x 1024 windows of level 0, optionally averages the whole of level 0 (a full
decode of every tile, chunk by chunk), and reports peak resident memory (``ru_maxrss``) after each
step next to the import baseline and the full-resolution size H * W * 3 bytes.

    python benchmarks/wsi_memory.py                      # 40k x 40k, then a full pass over level 0
    python benchmarks/wsi_memory.py --size 20000 --no-full-pass
    python benchmarks/wsi_memory.py --keep /tmp/big.tif  # keep (or reuse) the slide file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

TILE = 512
MPP = 0.25
# the section: an ellipse centred at (0.5, 0.52) of the slide, half-axes 0.36 x 0.30 (x, y) of its size
CENTRE, HALF_AXES = (0.5, 0.52), (0.36, 0.30)


def render(y0: int, x0: int, shape: tuple[int, int], scale: float, size: int) -> np.ndarray:
    """The pattern over level pixels ``[y0, y0 + h) x [x0, x0 + w)`` of a level ``scale`` times coarser."""
    h, w = shape
    yy = ((np.arange(y0, y0 + h, dtype=np.float32) + 0.5) * scale)[:, None]  # level-0 pixels
    xx = ((np.arange(x0, x0 + w, dtype=np.float32) + 0.5) * scale)[None, :]
    inside = ((xx / size - CENTRE[0]) / HALF_AXES[0]) ** 2 + ((yy / size - CENTRE[1]) / HALF_AXES[1]) ** 2 <= 1
    stripes = 0.5 + 0.5 * np.sin(xx * 0.011 + yy * 0.007) * np.cos(yy * 0.013)
    dots = (np.sin(xx * 0.21) * np.sin(yy * 0.19)) > 0.85  # "nuclei", ~8 µm apart
    out = np.empty((h, w, 3), np.uint8)
    out[...] = (238, 234, 240)  # glass
    tissue = np.stack([215 - 40 * stripes, 120 - 40 * stripes, 175 - 20 * stripes], axis=-1)
    tissue = np.where(dots[..., None], np.array([110, 60, 150], np.float32), tissue)
    np.copyto(out, tissue.astype(np.uint8), where=inside[..., None])
    return out


def tiles(level_shape: tuple[int, int], scale: float, size: int):
    """Tiles of one level in row-major order; edge tiles are full-size (tifffile crops them)."""
    for ty in range(math.ceil(level_shape[0] / TILE)):
        for tx in range(math.ceil(level_shape[1] / TILE)):
            yield render(ty * TILE, tx * TILE, (TILE, TILE), scale, size)


def write_slide(path: str, size: int) -> dict:
    import tifffile

    shapes = [(size, size)]
    while max(shapes[-1]) > 2 * 1024:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    options = {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": 85},
        "dtype": np.uint8,
    }
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, shape in enumerate(shapes):
            level = {"subifds": len(shapes) - 1, "resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
            tif.write(
                tiles(shape, size / shape[0], size),
                shape=(*shape, 3),
                **(level if i == 0 else {"subfiletype": 1}),
                **options,
            )
    return {"levels": shapes, "write_s": time.perf_counter() - t0, "file_mb": os.path.getsize(path) / 2**20}


CHILD = r"""
import json, os, resource, sys, time
import numpy as np

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

path, full_pass = sys.argv[1], sys.argv[2] == "1"
import dask
import bitro as bt
from bitro.io._wsi import wsi
import spatialdata  # imported by wsi anyway: counted in the baseline

out = {"import_peak_mb": peak_mb()}
t0 = time.perf_counter()
sdata = wsi(path, sample_id="bench")
out["open_and_tissue_s"] = time.perf_counter() - t0
out["open_and_tissue_peak_mb"] = peak_mb()
tree = sdata.images["bench_he_image"]
level0 = tree["scale0"]["image"].data
h, w = level0.shape[1:]
out["levels"] = [list(tree[k]["image"].shape[1:]) for k in tree]
polygon = sdata.shapes["bench_tissue"].geometry.iloc[0]
out["tissue_fraction"] = polygon.area / (h * w)
rng = np.random.default_rng(0)
t0 = time.perf_counter()
means = []
for _ in range(8):
    y, x = int(rng.integers(0, h - 1024)), int(rng.integers(0, w - 1024))
    means.append(float(level0[:, y : y + 1024, x : x + 1024].mean().compute()))
out["windows_s"] = time.perf_counter() - t0
out["windows_peak_mb"] = peak_mb()
if full_pass:
    t0 = time.perf_counter()
    out["level0_mean"] = float(level0.mean(axis=(1, 2), dtype=np.float64).compute().mean())
    out["full_pass_s"] = time.perf_counter() - t0
    out["full_pass_peak_mb"] = peak_mb()
out["full_res_mb"] = h * w * 3 / 2**20
out["dask_threads"] = dask.config.get("num_workers", None) or os.cpu_count()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000, help="level-0 side in pixels (square slide)")
    parser.add_argument("--no-full-pass", action="store_true", help="skip averaging the whole of level 0")
    parser.add_argument("--keep", default=None, help="write the slide here (reused if it exists) instead of a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "synthetic_slide.tif")
        if args.keep and os.path.exists(path):
            written = {"levels": "reused", "write_s": 0.0, "file_mb": os.path.getsize(path) / 2**20}
        else:
            print(f"writing {args.size} x {args.size} px pyramidal JPEG TIFF to {path} ...", flush=True)
            written = write_slide(path, args.size)
        print(f"  levels {written['levels']}, {written['file_mb']:.0f} MiB, written in {written['write_s']:.0f} s")
        out = subprocess.run(
            [sys.executable, "-c", CHILD, path, "0" if args.no_full_pass else "1"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])

    expected = math.pi * HALF_AXES[0] * HALF_AXES[1]
    print(f"full-resolution size (H x W x 3):  {r['full_res_mb']:9.0f} MiB")
    print(f"peak RSS after imports:            {r['import_peak_mb']:9.0f} MiB")
    print(
        f"peak RSS after wsi() + tissue:     {r['open_and_tissue_peak_mb']:9.0f} MiB   ({r['open_and_tissue_s']:.1f} s; "
        f"tissue {r['tissue_fraction']:.3f} of the slide, ellipse {expected:.3f})"
    )
    print(f"peak RSS after 8 windows 1024^2:   {r['windows_peak_mb']:9.0f} MiB   ({r['windows_s']:.1f} s)")
    if "full_pass_peak_mb" in r:
        print(
            f"peak RSS after mean of level 0:    {r['full_pass_peak_mb']:9.0f} MiB   ({r['full_pass_s']:.0f} s, "
            f"{r['full_res_mb'] / r['full_pass_s']:.0f} MiB/s decoded)"
        )
    print(f"levels read: {r['levels']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
