"""A cohort through ``bt.tl.predict_slides``: N small real slides on a LocalCluster, one of them corrupt.

The slides are 640 px crops (0.32 mm at 0.499 µm/px) of CMU-1 at different places, written as Aperio
TIFFs, plus one file of noise named like a slide. The run reports the wall time, the slides and cells
per second, the sum of per-slide times over the wall time (how busy the workers were), what was
recorded for the corrupt slide, and then a second call on the same folder (everything skipped).

    python benchmarks/predict_slides.py                       # 20 slides, 2 workers, bundled U-Net
    python benchmarks/predict_slides.py --n-slides 40 --segmentation watershed
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CMU = Path(__file__).parents[1] / "tests" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def make_slides(folder: Path, n: int, size: int = 640) -> None:
    import tifffile

    image = tifffile.imread(CMU)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y = int(rng.integers(0, image.shape[0] - size))
        x = int(rng.integers(image.shape[1] // 3, image.shape[1] - size))  # the left third is mostly glass
        tifffile.imwrite(
            folder / f"slide{i:02d}.svs",
            np.ascontiguousarray(image[y : y + size, x : x + size]),
            description="Aperio Image Library v12 |AppMag = 20|MPP = 0.499",
            photometric="rgb",
        )
    (folder / "corrupt.svs").write_bytes(b"II*\x00" + os.urandom(20000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-slides", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--segmentation", default=None, help="default: the model's (the bundled U-Net)")
    args = parser.parse_args()

    import bitro as bt

    root = Path(tempfile.mkdtemp())
    make_slides(root / "slides", args.n_slides)
    t0 = time.perf_counter()
    table = bt.tl.predict_slides(
        root / "slides", root / "out", segmentation=args.segmentation, n_workers=args.workers, progress=False
    )
    wall = time.perf_counter() - t0
    done = table[table["status"] == "done"]
    cells = done["cells"].astype(int).sum()
    busy = done["seconds"].astype(float).sum()
    print(f"{len(table)} slides ({args.n_slides} real + 1 corrupt), {args.workers} worker processes")
    print(f"done {len(done)}, failed {int((table['status'] == 'failed').sum())}: {table.loc['corrupt', 'error']}")
    print(f"wall {wall:.1f} s (cluster start included): {len(done) / wall:.2f} slides/s, {cells / wall:.0f} cells/s")
    print(f"cells {cells} ({cells / len(done):.0f} per slide); per-slide time {busy / len(done):.1f} s mean")
    print(f"sum of slide times / wall = {busy / wall:.2f} (workers busy; {args.workers} is the most)")
    t0 = time.perf_counter()
    again = bt.tl.predict_slides(root / "slides", root / "out", n_workers=args.workers, progress=False)
    print(
        f"second call: {int((again['status'] == 'done before').sum())} skipped, "
        f"{int((again['status'] == 'failed').sum())} failed again, {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
