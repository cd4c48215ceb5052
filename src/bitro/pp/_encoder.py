"""Image encoders for :func:`bitro.pp.cell_features` (``method="encoder"``).

An encoder is a folder with ``config.json`` and ``model.safetensors`` (weights only: nothing that
runs code when loaded), or a Hugging Face hub id of such a folder. ``config.json`` holds::

    {
        "architecture": "small_cnn",  # a name registered in ARCHITECTURES
        "args": {"channels": [16, 32], "out_dim": 32},
        "input_size": 32,  # side of the square crop, in pixels
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }  # per RGB channel, on [0, 1] values

This module imports torch at the top; only import it inside functions (``import bitro`` stays light).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SmallCNN(nn.Module):
    """A small convolutional encoder: (conv 3x3, ReLU, max-pool 2) per entry of ``channels``, global mean, linear.

    Parameters
    ----------
    channels
        Output channels of each convolution block.
    out_dim
        Length of the feature vector.
    in_channels
        Input channels (3 for RGB).
    """

    def __init__(self, channels: tuple[int, ...] | list[int] = (16, 32), out_dim: int = 32, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            layers += [nn.Conv2d(c_in, int(c_out), 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = int(c_out)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, int(out_dim))
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, 3, size, size) normalised crops → (batch, out_dim)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


ARCHITECTURES: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN}
"""Encoder classes by the ``architecture`` name of ``config.json``; each takes ``**args`` and has ``out_dim``."""


def save_encoder(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    architecture: str,
    args: dict,
    input_size: int,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.25, 0.25, 0.25),
) -> Path:
    """Write ``model`` as an encoder folder (``config.json`` + ``model.safetensors``) that :func:`load_encoder` reads."""
    from safetensors.torch import save_file

    from bitro import __version__

    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture`: {architecture!r} is not one of {sorted(ARCHITECTURES)}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": architecture,
        "args": dict(args),
        "input_size": int(input_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "bitro_version": __version__,
    }
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_NAME))
    return path


def resolve_encoder(encoder: str | os.PathLike) -> Path:
    """The local folder of ``encoder``: an existing path, or a hub id fetched with ``huggingface_hub``."""
    text = os.fspath(encoder)
    path = Path(text).expanduser()
    if path.exists() or not _HUB_ID.match(text):
        if not path.is_dir():
            raise FileNotFoundError(
                f"`encoder`: {text!r} is not a folder (expected one with {CONFIG_NAME} and {WEIGHTS_NAME}, "
                "or a Hugging Face hub id 'owner/name')."
            )
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency of the deep stack
        raise ImportError(
            f"`encoder`: loading hub id {text!r} needs `huggingface_hub` (pip install huggingface_hub)."
        ) from err
    patterns = [CONFIG_NAME, WEIGHTS_NAME]
    try:  # the cache first: works offline
        return Path(snapshot_download(text, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub
        pass
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:
        raise FileNotFoundError(
            f"`encoder`: {text!r} is neither a local folder nor a reachable Hugging Face hub repository "
            f"({type(err).__name__}: {err}). Offline, download it first or pass a local path."
        ) from err


def load_encoder(encoder: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The model (eval mode, on CPU) and config of an encoder folder or hub id."""
    from bitro._files import read_json, read_weights

    path = resolve_encoder(encoder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"`encoder`: {os.fspath(encoder)!r} has no {name} (looked in {path}).")
    config = read_json(path / CONFIG_NAME, what="encoder's settings")
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"`encoder`: architecture {arch!r} of {path / CONFIG_NAME} is not one of {sorted(ARCHITECTURES)}."
        )
    for key in ("input_size", "mean", "std"):
        if key not in config:
            raise ValueError(f"`encoder`: {path / CONFIG_NAME} lacks {key!r}.")
    if len(config["mean"]) != 3 or len(config["std"]) != 3:
        raise ValueError(f"`encoder`: `mean` and `std` of {path / CONFIG_NAME} need 3 values (RGB).")
    model = ARCHITECTURES[arch](**config.get("args", {}))
    state, _ = read_weights(path / WEIGHTS_NAME, what="encoder's weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"`encoder`: {path / WEIGHTS_NAME} does not match {path / CONFIG_NAME} ({err}).") from err
    model.eval()
    return model, config


def resolve_device(device: str | None) -> torch.device:
    """``device``, or ``bt.settings.device``; ``"auto"`` picks CUDA, then MPS, then CPU."""
    from bitro._settings import settings

    device = device if device is not None else settings.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    return torch.device(device)


def crop_batch(
    window: np.ndarray, origin: tuple[int, int], centroids: np.ndarray, side_px: float, size: int
) -> torch.Tensor:
    """Bilinear ``size`` x ``size`` crops of ``side_px`` level-0 pixels centred on ``centroids``.

    ``window`` is (h, w, 3) float32 with its top-left pixel at level-0 pixel ``origin`` = (x0, y0);
    ``centroids`` are (n, 2) level-0 (x, y) in continuous coordinates (pixel k spans [k, k+1)).
    The window must cover every crop (pad it beforehand). Output pixel (i, j) samples
    (x, y) = centroid + ((j, i) + 0.5 - size / 2) * side_px / size. Returns (n, 3, size, size).
    """
    import torch.nn.functional as F

    n = len(centroids)
    half = side_px / 2
    span = int(np.ceil(side_px)) + 3
    # integer sub-windows (one per cell) that hold each crop with a pixel to spare
    sx = np.floor(centroids[:, 0] - half - 0.5).astype(int) - origin[0] - 1
    sy = np.floor(centroids[:, 1] - half - 0.5).astype(int) - origin[1] - 1
    idx_y = sy[:, None] + np.arange(span)[None, :]
    idx_x = sx[:, None] + np.arange(span)[None, :]
    patches = window[idx_y[:, :, None], idx_x[:, None, :]]  # (n, span, span, 3)
    patches = torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))
    step = side_px / size
    offs = (np.arange(size) + 0.5 - size / 2) * step  # sample offsets from the centroid, in pixels
    # array-index coordinate of each sample inside its sub-window (pixel centres at integers)
    ax = centroids[:, 0, None] + offs[None, :] - 0.5 - origin[0] - sx[:, None]
    ay = centroids[:, 1, None] + offs[None, :] - 0.5 - origin[1] - sy[:, None]
    ux = (2 * ax + 1) / span - 1  # align_corners=False normalisation
    uy = (2 * ay + 1) / span - 1
    grid = np.empty((n, size, size, 2), dtype=np.float32)
    grid[..., 0] = ux[:, None, :]
    grid[..., 1] = uy[:, :, None]
    return F.grid_sample(patches, torch.from_numpy(grid), mode="bilinear", padding_mode="border", align_corners=False)


def encode_cells(image, geometry, mpp, tile_size, encoder, crop_um, batch_size, device):
    """Encoder features of cell-centred crops of ``crop_um`` µm, tile by tile; returns ``(values, names, params)``."""
    import shapely
    import torch

    from ._windows import read_rgb, tiles

    model, config = load_encoder(encoder)
    dev = resolve_device(device)
    model = model.to(dev)
    size = int(config["input_size"])
    mean = torch.tensor(config["mean"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    n = len(geometry)
    _, height, width = image.shape
    out_dim = int(model.out_dim)
    values = np.full((n, out_dim), np.nan, dtype=np.float32)
    side_px = crop_um / mpp
    pad = int(np.ceil(side_px / 2)) + 3
    centroids = shapely.get_coordinates(shapely.centroid(geometry)) if n else np.zeros((0, 2))
    with torch.inference_mode():
        for cells in tiles(centroids, width, height, tile_size) if n else []:
            c = centroids[cells]
            wx0 = int(np.floor(c[:, 0].min())) - pad
            wy0 = int(np.floor(c[:, 1].min())) - pad
            wx1 = int(np.ceil(c[:, 0].max())) + pad + 1
            wy1 = int(np.ceil(c[:, 1].max())) + pad + 1
            window = np.ones((wy1 - wy0, wx1 - wx0, 3), dtype=np.float32)  # white beyond the image
            rx0, ry0, rx1, ry1 = max(wx0, 0), max(wy0, 0), min(wx1, width), min(wy1, height)
            if rx1 > rx0 and ry1 > ry0:
                window[ry0 - wy0 : ry1 - wy0, rx0 - wx0 : rx1 - wx0] = read_rgb(image, rx0, ry0, rx1, ry1)
            for b in range(0, len(cells), batch_size):
                sel = slice(b, b + batch_size)
                crops = crop_batch(window, (wx0, wy0), c[sel], side_px, size).to(dev)
                feats = model((crops - mean) / std)
                values[cells[sel]] = feats.float().cpu().numpy()
    names = [f"enc_{i}" for i in range(out_dim)]
    params = {
        "encoder": os.fspath(encoder),
        "architecture": config["architecture"],
        "input_size": size,
        "crop_um": crop_um,
        "batch_size": batch_size,
        "device": str(dev),
    }
    return values, names, params
