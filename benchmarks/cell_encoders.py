"""Speed of deep cell features: a crop per cell against the tile path, for encoders of foundation-model size.

Real H&E (a 1024 px square of CMU-1, 0.499 µm/px, watershed nuclei); random-weight networks with the
architectures of the named encoders (the cost of a forward does not depend on the weights): DINOv2
ViT-S/14 and a ViT-B/16 (Phikon's shape), both at 224 px and 0.5 µm/px, and the bundled offline
encoder when it exists. Prints cells/s and forwards/s (crops or tiles) per mode on this machine's
CPU threads, and the projected GPU cost from the forward's FLOPs.

    python benchmarks/cell_encoders.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
ARCHS = {
    # name: (transformers config class, options) -- the shapes of dinov2-small and phikon
    "ViT-S/14 (dinov2-small)": ("Dinov2Config", {"hidden_size": 384, "num_hidden_layers": 12,
                                "num_attention_heads": 6, "intermediate_size": 1536, "patch_size": 14}),
    "ViT-B/16 (phikon)": ("ViTConfig", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "intermediate_size": 3072, "patch_size": 16}),
}  # fmt: skip


def section(size: int, y0: int = 1200, x0: int = 1000):
    import tifffile

    import bitro as bt

    image = tifffile.imread(DATA)[y0 : y0 + size, x0 : x0 + size]
    path = Path(tempfile.mkdtemp()) / "cmu.svs"
    tifffile.imwrite(path, np.ascontiguousarray(image), description="Aperio Image Library v12 |AppMag = 20|MPP = 0.499",
                     photometric="rgb")  # fmt: skip
    sdata = bt.io.wsi(path, tissue=False)
    bt.pp.segment_cells(sdata, method="watershed", progress=False)
    return sdata


def vit_folder(kind: str, options: dict, folder: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, kind)(image_size=224, **options)
    model_cls = transformers.Dinov2Model if kind == "Dinov2Config" else transformers.ViTModel
    kwargs = {} if kind == "Dinov2Config" else {"add_pooling_layer": False}
    model_cls(config, **kwargs).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the CMU-1 square for the tile path, px")
    parser.add_argument("--crop-size", type=int, default=384, help="side of the square for a crop per cell, px")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import bitro as bt
    from bitro.pp._encoder_load import load_cell_encoder

    torch.set_num_threads(args.threads)
    squares = {"tile": section(args.size, 768, 700), "crop": section(args.crop_size, 1000, 1000)}
    counts = {mode: s["bitro_cells"].n_obs for mode, s in squares.items()}
    print(f"CMU-1 squares: {args.size} px ({counts['tile']} nuclei) for tiles, {args.crop_size} px "
          f"({counts['crop']} nuclei) for crops; torch threads {args.threads}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    encoders = {
        name: vit_folder(kind, options, tmp / f"enc{i}") for i, (name, (kind, options)) in enumerate(ARCHS.items())
    }
    bundled = Path(bt.__file__).parent / "pp" / "cell_encoder"
    if (bundled / "config.json").is_file():
        encoders["bundled offline encoder"] = bundled
    print(f"{'encoder':26s} {'mode':5s} {'cells':>6s} {'forwards':>9s} {'s':>7s} {'cells/s':>8s} {'forwards/s':>10s}")
    for name, folder in encoders.items():
        model = load_cell_encoder(folder)
        for mode, sdata in squares.items():
            t0 = time.perf_counter()
            bt.pp.cell_features(sdata, method="encoder", encoder=folder, mode=mode, device="cpu", key_added="bench")
            dt = time.perf_counter() - t0
            n = counts[mode]
            forwards = n if mode == "crop" else n_tiles(sdata, model)
            print(
                f"{name:26s} {mode:5s} {n:6d} {forwards:9d} {dt:7.1f} {n / dt:8.0f} {forwards / dt:10.1f}", flush=True
            )
            del sdata["bitro_cells"].obsm["bench"]
    gflops = {"ViT-S/14": 4.6, "ViT-B/16": 17.6, "ViT-L/16": 61.6, "ViT-H/14": 167.0, "ViT-g/14": 290.0}
    print("\nProjected GPU cost (forward FLOPs at 224 px; 30 % of a 400 TFLOP/s fp16 GPU, e.g. H100/H200):")
    for arch, g in gflops.items():
        print(f"  {arch:9s} {g:6.1f} GFLOP/forward -> ~{0.3 * 400e12 / (g * 1e9):,.0f} forwards/s")


def n_tiles(sdata, model) -> int:
    """Tiles the tile path runs: those whose core holds a cell centroid (as bitro.pp._encoder_tiles cuts them)."""
    import shapely

    from bitro import _constants as K
    from bitro import _sdata
    from bitro.pp._features import _cell_geometry
    from bitro.pp._windows import tiles

    stride = model.tile_input - 2 * model.tile_margin
    info = sdata.attrs[K.ATTRS_KEY]
    table = sdata["bitro_cells"]
    geometry = _cell_geometry(sdata[info[K.ATTR_CELLS_SHAPES]], table.obs[K.CELL_ID_KEY].to_numpy())
    centroids = shapely.get_coordinates(shapely.centroid(geometry))
    _, h, w = _sdata.level0(sdata.images[info[K.ATTR_CELLS_IMAGE]]).shape
    return len(tiles(centroids, w, h, stride))


if __name__ == "__main__":
    main()
