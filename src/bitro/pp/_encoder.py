"""Image encoders for :func:`bitro.pp.cell_features` (``method="encoder"``).

bitro's own encoder format (the bundled offline encoder is one) is a folder with ``config.json`` and
``model.safetensors`` (weights only: nothing that runs code when loaded). ``config.json`` holds::

    {
        "architecture": "small_cnn",  # a name registered in ARCHITECTURES
        "args": {"channels": [16, 32], "out_dim": 32},
        "input_size": 32,  # side of the square crop, in pixels
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }  # per RGB channel, on [0, 1] values; optional "mpp" and "crop_um": the scale it was trained at

Named foundation encoders and the transformers / timm formats are loaded by ``_encoder_load``; the
crop and tile feature paths live here and in ``_encoder_tiles``.

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
    mpp: float | None = None,
    crop_um: float | None = None,
    **extra,
) -> Path:
    """Write ``model`` as an encoder folder (``config.json`` + ``model.safetensors``) that :func:`load_encoder` reads.

    ``mpp`` (µm per pixel of the input) and ``crop_um`` (side of a cell's crop) record the scale the
    encoder was trained at; :func:`bitro.pp.cell_features` uses them when the caller gives none.
    ``extra`` keys (e.g. provenance) are stored as they are.
    """
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
        **({"mpp": float(mpp)} if mpp is not None else {}),
        **({"crop_um": float(crop_um)} if crop_um is not None else {}),
        **extra,
        "bitro_version": __version__,
    }
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_NAME))
    return path


def load_encoder(encoder: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The model (eval mode, on CPU) and config of a bitro encoder folder (any format: ``_encoder_load``)."""
    from bitro._files import read_json, read_weights

    path = Path(encoder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"`encoder`: {os.fspath(encoder)!r} is not a folder (expected {CONFIG_NAME} and {WEIGHTS_NAME})."
        )
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
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif mps:
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}.") from None
    # checked here, before weights load and tiles run: torch's own error comes late and names no argument
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"`device` is {device!r}, but torch {torch.__version__} sees no CUDA GPU; use 'cpu' or 'auto'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"`device` is {device!r}, but there are {torch.cuda.device_count()} CUDA GPUs.")
    if dev.type == "mps" and not mps:
        raise ValueError(f"`device` is {device!r}, but this machine has no Apple GPU (MPS); use 'cpu' or 'auto'.")
    return dev


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


def encode_cells(
    image, geometry, mpp: float, model, *, crop_um: float, batch_size: int, tile_size: int, device
) -> np.ndarray:
    """Embeddings (cells x ``model.out_dim``) of cell-centred crops of ``crop_um`` µm, read tile by tile.

    ``model`` is a :class:`bitro.pp._encoder_load.CellEncoder` on ``device``; ``image`` a level-0
    ``(c, y, x)`` array (or view) whose pixels are ``mpp`` µm, the scale ``geometry`` is in.
    """
    import shapely

    from ._windows import tiles

    size = model.input_size
    mean, std = _normaliser(model, device)
    n = len(geometry)
    _, height, width = image.shape
    values = np.full((n, model.out_dim), np.nan, dtype=np.float32)
    side_px = crop_um / mpp
    pad = int(np.ceil(side_px / 2)) + 3
    centroids = shapely.get_coordinates(shapely.centroid(geometry)) if n else np.zeros((0, 2))
    with torch.inference_mode(), _autocast(device):
        for cells in tiles(centroids, width, height, tile_size) if n else []:
            c = centroids[cells]
            x0, y0 = int(np.floor(c[:, 0].min())) - pad, int(np.floor(c[:, 1].min())) - pad
            x1, y1 = int(np.ceil(c[:, 0].max())) + pad + 1, int(np.ceil(c[:, 1].max())) + pad + 1
            window = padded_window(image, x0, y0, x1, y1)
            for b in range(0, len(cells), batch_size):
                sel = slice(b, b + batch_size)
                crops = crop_batch(window, (x0, y0), c[sel], side_px, size).to(device)
                values[cells[sel]] = model((crops - mean) / std).float().cpu().numpy()
    return values


def padded_window(image, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """RGB float32 window (h, w, 3) of ``[y0, y1) x [x0, x1)``, white beyond the image."""
    from ._windows import read_rgb

    _, height, width = image.shape
    window = np.ones((y1 - y0, x1 - x0, 3), dtype=np.float32)
    rx0, ry0, rx1, ry1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if rx1 > rx0 and ry1 > ry0:
        window[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = read_rgb(image, rx0, ry0, rx1, ry1)
    return window


def _normaliser(model, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(model.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def _autocast(device: torch.device):
    """Half precision on CUDA (the encoders are trained in mixed precision); full precision elsewhere."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
