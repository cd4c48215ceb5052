"""bitro's learned nucleus segmenter: a compact U-Net that predicts nuclei and their distance maps.

The network sees RGB at a fixed physical scale (``mpp`` of its config, 0.5 µm/px: 20x) and predicts,
per pixel, the probability of being inside a nucleus and the distance to the nucleus boundary
(normalised per nucleus: 0 at the edge, 1 at the centre), as in Naylor et al. 2019 (IEEE TMI 38(2),
the paper of the TNBC data it is trained on). Instances are the marker-controlled watershed of the
distance map (markers: the cores where the distance is high) inside the foreground: touching nuclei
separate along the valleys of the distance. A network trained with a third map (``"maps"`` of its
config), the probability of lying on a nucleus's rim (contour-aware, as DCAN, Chen et al. 2016),
also cuts the markers where that rim is likely, where two touching nuclei meet.

Weights are safetensors + JSON (``config.json``: architecture, scale, normalisation and the
post-processing thresholds chosen on validation patients); nothing is unpickled. The bundled
weights live in ``bitro/pp/nuclei_unet`` (see ``scripts/train_nucleus_unet.py``).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitro._logging import logger

BUNDLED = Path(__file__).parent / "nuclei_unet"
"""Folder of the bundled weights (``config.json`` + ``model.safetensors`` + ``ATTRIBUTION.txt``)."""
MAX_MPP = 5.0
"""Coarser images are refused: nuclei span under two pixels, and upsampling them costs gigabytes per tile."""
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = 1
MPP_RANGE_TRAINED = (0.2, 1.0)
"""Pixel sizes (µm/px) the augmentations covered around the working scale; outside it a warning."""

MAPS = ("foreground", "distance", "boundary")
"""The maps a network may predict, in this order: the first two always, the rim (``"boundary"``) optionally."""

DEFAULT_CONFIG = {
    "architecture": "unet",
    "channels": [16, 32, 64, 128, 256],
    "maps": ["foreground", "distance"],
    "mpp": 0.5,
    "fg_threshold": 0.5,
    "marker_threshold": 0.5,
    "boundary_threshold": 0.5,
    "min_area_um2": 6.0,
}


def _block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(n_out, n_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
    )


def _encode(encoder: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's maps of each level, finest first, of an RGB batch in [0, 1] (normalised as in training)."""
    x = (x - 0.5) / 0.25
    skips = []
    for i, block in enumerate(encoder):
        x = block(x if i == 0 else F.max_pool2d(x, 2))
        skips.append(x)
    return skips


class NucleusUNet(nn.Module):
    """U-Net: RGB in [0, 1] -> a logit per pixel for each of ``n_maps`` maps (see :data:`MAPS`).

    The maps: inside a nucleus; normalised distance to its boundary; with ``n_maps=3``, on its rim.
    """

    def __init__(self, channels=(16, 32, 64, 128, 256), n_maps: int = 2) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"`channels` must list at least 2 positive widths, got {channels}.")
        if n_maps not in (2, 3):
            raise ValueError(f"`n_maps` must be 2 (foreground, distance) or 3 (and boundary), got {n_maps!r}.")
        self.channels, self.n_maps = channels, int(n_maps)
        self.encoder = nn.ModuleList([_block(3 if i == 0 else channels[i - 1], c) for i, c in enumerate(channels)])
        self.decoder = nn.ModuleList(
            [_block(channels[i] + channels[i + 1], channels[i]) for i in range(len(channels) - 1)]
        )
        self.head = nn.Conv2d(channels[0], self.n_maps, 1)

    @property
    def multiple(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = _encode(self.encoder, x)
        x = skips[-1]
        for i in reversed(range(len(self.decoder))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)


def folded(net: NucleusUNet) -> NucleusUNet:
    """A copy for inference with each batch norm folded into the convolution before it.

    Eval-mode batch norm is an affine map per channel, so it becomes the convolution's weights and
    bias: the same maps (to ~1e-5) without two passes over every feature map per block (~16 %
    faster on CPU). Not for training: the statistics are gone.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    for blocks in (net.encoder, net.decoder):
        for i, block in enumerate(blocks):
            layers, out = list(block), []
            while layers:
                layer = layers.pop(0)
                if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                    layer = fuse_conv_bn_eval(layer, layers.pop(0))
                out.append(layer)
            blocks[i] = nn.Sequential(*out)
    return net


_BILINEAR_X2 = (0.25, 0.75, 0.75, 0.25)
"""Bilinear upsampling by 2 (pixel centres aligned) as a stride-2 transposed filter: each pixel's share in 4 outputs."""


class _UpConv(nn.Module):
    """``conv3x3(bilinear_x2(x))`` (zero-padded, no bias) as one stride-2 transposed convolution of ``x``.

    Both are linear, so the upsampling's 4 x 4 filter and the 3 x 3 kernel compose into a 6 x 6 kernel
    applied at the coarse level: the same arithmetic as the 3 x 3 convolution of the upsampled map, but
    no upsampled map is written and none is concatenated with the skip. ``x`` is edge-padded, as the
    bilinear upsampling clamps at the border; the outermost row and column of each side are recomputed
    from a strip, where the 3 x 3 convolution's zero padding lies outside the upsampled map. The same
    values as the two steps (to float rounding), everywhere.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        n_out, n_in = weight.shape[:2]
        f = torch.tensor(_BILINEAR_X2, dtype=weight.dtype)
        up = F.pad((f[:, None] * f[None, :])[None, None], (2, 2, 2, 2))  # (1, 1, 8, 8)
        # kernel[o, i] = correlation of the upsampling filter with weight[o, i]
        kernel = F.conv2d(up, weight.reshape(n_out * n_in, 1, 3, 3))[0].reshape(n_out, n_in, 6, 6)
        self.register_buffer("kernel", kernel.transpose(0, 1).contiguous())  # (in, out, 6, 6) for conv_transpose2d
        self.register_buffer("weight", weight.detach().clone())

    def _strip(self, x: torch.Tensor, size: tuple[int, int], keep: tuple[slice, slice]) -> torch.Tensor:
        up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[..., keep[0], keep[1]]
        return F.conv2d(up, self.weight, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(padded, self.kernel, stride=2, padding=4)  # (2h, 2w): the pad's share cut
        every = slice(None)
        y[..., :1, :] = self._strip(x[..., :2, :], (4, 2 * w), (slice(0, 2), every))[..., :1, :]
        y[..., -1:, :] = self._strip(x[..., -2:, :], (4, 2 * w), (slice(2, 4), every))[..., -1:, :]
        y[..., :, :1] = self._strip(x[..., :, :2], (2 * h, 4), (every, slice(0, 2)))[..., :, :1]
        y[..., :, -1:] = self._strip(x[..., :, -2:], (2 * h, 4), (every, slice(2, 4)))[..., :, -1:]
        return y


class InferenceUNet(nn.Module):
    """A :class:`NucleusUNet` rearranged for inference: the same maps (to ~1e-5), ~15 % faster on CPU.

    Batch norms are folded into the convolutions (:func:`folded`), and each decoder block's first
    convolution, over the concatenation of the upsampled coarser map and the skip, is split into
    its two parts: a :class:`_UpConv` of the coarser map plus a convolution of the skip. On a 1104 px
    tile on CPU the concatenations and upsamplings took ~18 % of the forward pass (memory traffic,
    no arithmetic); they are gone, the arithmetic is the same. Not for training.
    """

    def __init__(self, net: NucleusUNet) -> None:
        super().__init__()
        net = folded(net)
        self.channels, self.n_maps, self.multiple = net.channels, net.n_maps, net.multiple
        self.encoder, self.head = net.encoder, net.head
        self.up, self.skip, self.rest = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, block in enumerate(net.decoder):
            conv, coarse = block[0], net.channels[i + 1]
            skip = nn.Conv2d(net.channels[i], conv.out_channels, 3, padding=1)
            with torch.no_grad():
                skip.weight.copy_(conv.weight[:, coarse:])
                skip.bias.copy_(conv.bias)
            self.up.append(_UpConv(conv.weight.detach()[:, :coarse]))
            self.skip.append(skip)
            self.rest.append(nn.Sequential(*list(block)[1:]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = _encode(self.encoder, x)
        x = skips[-1]
        for i in reversed(range(len(self.rest))):
            skip = skips[i]
            if skip.shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1]):
                y = self.up[i](x)
            else:  # not an exact doubling (an input that is not a multiple of the stride): the two steps
                up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                y = F.conv2d(up, self.up[i].weight, padding=1)
            y += self.skip[i](skip)  # in place: no third map of this size
            x = self.rest[i](y)
        return self.head(x)


# --- weights -----------------------------------------------------------------------------------------


def save_unet(net: NucleusUNet, config: dict, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float16 weights: half the size, same masks) to a folder."""
    from bitro._files import write_json, write_weights
    from bitro._store import replace_folder

    config = {**DEFAULT_CONFIG, **config, "channels": list(net.channels), "maps": list(MAPS[: net.n_maps])}
    config["format"] = FORMAT
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    with replace_folder(path, overwrite=overwrite, owned={CONFIG_NAME, WEIGHTS_NAME, "ATTRIBUTION.txt"}) as out:
        write_weights(state, out / WEIGHTS_NAME, config=config, fmt=FORMAT)
        write_json(config, out / CONFIG_NAME)


def _weights_folder(path) -> Path:
    """``path`` as a weights folder (``None``: the bundled one), or an error naming ``model``."""
    if path is None:
        return BUNDLED
    if not isinstance(path, str | os.PathLike):  # e.g. a NucleusUNet object: save it with save_unet first
        raise TypeError(
            f"`model` must be a weights folder (saved with save_unet / scripts/train_nucleus_unet.py) or None, "
            f"got {type(path).__name__}."
        )
    return Path(path).expanduser()


def load_unet(path: str | os.PathLike | None = None) -> tuple[NucleusUNet, dict]:
    """The network (eval mode, float32, CPU) and config of a weights folder; ``None``: the bundled weights."""
    from bitro._files import check_digest, read_json, read_weights

    folder = _weights_folder(path)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        if path is None:
            what = "the bundled nucleus model is missing; reinstall bitro"
        else:
            what = "not a nucleus U-Net folder" if folder.exists() else "not an existing folder"
        raise FileNotFoundError(f"`model`: {folder} is {what} (expected {CONFIG_NAME} and {WEIGHTS_NAME}).")
    config = read_json(folder / CONFIG_NAME, what="nucleus model's settings")
    if config.get("format") != FORMAT or config.get("architecture") != "unet":
        raise ValueError(
            f"{folder / CONFIG_NAME}: not a bitro nucleus U-Net config (format {FORMAT}, architecture unet)."
        )
    state, metadata = read_weights(folder / WEIGHTS_NAME, what="nucleus model's weights")
    check_digest(metadata, config, weights=folder / WEIGHTS_NAME, config_path=folder / CONFIG_NAME)
    maps = list(config.get("maps", DEFAULT_CONFIG["maps"]))
    if maps not in (list(MAPS[:2]), list(MAPS)):
        raise ValueError(f"{folder / CONFIG_NAME}: `maps` must be {list(MAPS[:2])} or {list(MAPS)}, got {maps}.")
    config = {**config, "maps": maps, "boundary_threshold": config.get("boundary_threshold", 0.5)}
    net = NucleusUNet(config["channels"], n_maps=len(maps))
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_NAME} does not match {folder / CONFIG_NAME} ({err}).") from err
    return net.eval(), config


def working_mpp(path: str | os.PathLike | None = None) -> float:
    """The pixel size (µm) a weights folder's network works at, from its config (cheap: no weights read)."""
    from bitro._files import read_json

    folder = _weights_folder(path)
    if not (folder / CONFIG_NAME).is_file():
        return float(DEFAULT_CONFIG["mpp"])  # load_unet will raise the clear error
    return float(read_json(folder / CONFIG_NAME, what="nucleus model's settings").get("mpp", DEFAULT_CONFIG["mpp"]))


# --- inference ---------------------------------------------------------------------------------------


TTA = {
    1: ((0, False),),
    2: ((0, False), (0, True)),
    4: ((0, False), (0, True), (2, False), (2, True)),
    8: tuple((k, flip) for k in range(4) for flip in (False, True)),
}
"""Test-time augmentation: the (quarter turns, mirror) transforms averaged for each number of passes."""


def predict_maps(
    net: NucleusUNet, rgb: np.ndarray, *, device: torch.device | str = "cpu", tta: int = 1
) -> tuple[np.ndarray, ...]:
    """The network's maps ``(H, W)`` float32 of a uint8 RGB tile at its scale (see :data:`MAPS`).

    Foreground probability and normalised distance, and the rim probability for a three-map
    network. The tile is padded (reflected) to a multiple of the network's stride and cropped back.
    ``tta`` > 1 averages the maps of that many mirrored / turned copies (see :data:`TTA`).
    """
    if tta != 1:
        sums = None
        for k, flip in TTA[tta]:
            view = np.rot90(rgb, k)
            maps = predict_maps(net, np.ascontiguousarray(view[:, ::-1] if flip else view), device=device)
            maps = [np.rot90(m[:, ::-1] if flip else m, -k) for m in maps]
            sums = maps if sums is None else [s + m for s, m in zip(sums, maps, strict=True)]
        return tuple(s / tta for s in sums)
    h, w = rgb.shape[:2]
    m = net.multiple
    ph, pw = (-h) % m, (-w) % m
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 255.0
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = torch.sigmoid(net(x))[0, :, :h, :w].float().cpu().numpy()
    return tuple(out)


def instances(
    prob: np.ndarray,
    dist: np.ndarray,
    *,
    fg_threshold: float,
    marker_threshold: float,
    min_area_px: float,
    boundary: np.ndarray | None = None,
    boundary_threshold: float = 0.5,
) -> np.ndarray:
    """Instance labels (int32) from the maps: watershed of the distance, seeded by its high cores, inside the foreground.

    With a ``boundary`` (rim probability) map, the cores are also cut where the rim is at least
    ``boundary_threshold``: two touching nuclei whose distance cores merge still get a marker each.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    mask = prob > fg_threshold
    if not mask.any():
        return np.zeros(prob.shape, np.int32)
    cores = (dist > marker_threshold) & mask
    if boundary is not None:
        cores &= boundary < boundary_threshold
    markers, _ = ndi.label(cores)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    # a foreground region without any marker (a small or faint nucleus) becomes one instance itself
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        labels[orphans > 0] = orphans[orphans > 0] + labels.max()
    if min_area_px > 0 and labels.max():
        sizes = np.bincount(labels.ravel())
        small = sizes < min_area_px
        small[0] = False
        labels[small[labels]] = 0
    return labels


_LOADED: dict[tuple, tuple] = {}
"""Networks loaded in this process, by (weights folder, device, weights file's mtime and size)."""


class UNetSegmenter:
    """Picklable tile segmenter ``rgb (H, W, 3) uint8 -> labels (H, W) int32`` at the tiles' pixel size.

    Tiles are resampled to the network's scale; its two maps are resampled back (bilinear) and the
    nuclei are drawn at the tile's own pixels, so a 40x tile keeps its finer outlines.
    Thread-safe (one lock per model); in another process the weights are reloaded on first use.
    """

    def __init__(self, path: str | None, *, mpp: float, device: str | None, thresholds: dict, tta: int = 1) -> None:
        self.path, self.mpp, self.device, self.thresholds = path, float(mpp), device, dict(thresholds)
        self.tta = int(tta)
        self._net = self._config = None
        self._lock = threading.Lock()

    @classmethod
    def from_net(cls, net: NucleusUNet, config: dict, *, mpp: float, thresholds: dict | None = None) -> UNetSegmenter:
        """A segmenter around a network in memory (training, evaluation) instead of a weights folder."""
        segmenter = cls(None, mpp=mpp, device="cpu", thresholds=thresholds or {})
        segmenter._net, segmenter._config, segmenter._device = net, config, next(net.parameters()).device
        return segmenter

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_net", "_config", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._net = self._config = None
        self._lock = threading.Lock()

    def _load(self):
        if self._net is None:
            from bitro.pp._encoder import resolve_device

            self._device = resolve_device(self.device)
            weights = (BUNDLED if self.path is None else Path(self.path)) / WEIGHTS_NAME
            stat = weights.stat() if weights.is_file() else None
            key = (self.path, str(self._device), stat and (stat.st_mtime_ns, stat.st_size))
            if key not in _LOADED:  # once per process: a worker unpickles a segmenter per tile
                net, config = load_unet(self.path)
                # channels-last: the faster convolution layout (oneDNN on CPU, cuDNN); same maps to ~1e-6, ~20 % faster
                _LOADED[key] = InferenceUNet(net).to(self._device, memory_format=torch.channels_last), config
            self._net, self._config = _LOADED[key]
        return self._net, self._config

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from ._resample import resize_bilinear

        with self._lock:
            net, config = self._load()
            scale = self.mpp / float(config["mpp"])  # > 1: the tile is upsampled to the net's finer scale
            h, w = rgb.shape[:2]
            size = (max(int(round(h * scale)), 1), max(int(round(w * scale)), 1))
            rgb = np.asarray(rgb, dtype=np.uint8)
            tile = rgb if size == (h, w) else resize_bilinear(rgb, size, channel_axis=-1, anti_aliasing=scale < 1)
            maps = predict_maps(net, tile, device=self._device, tta=self.tta)
        if maps[0].shape != (h, w):  # the maps back at the tile's own pixels (smooth), then the instances there
            maps = resize_bilinear(np.stack(maps), (h, w), channel_axis=0, anti_aliasing=False)
        names = ("fg_threshold", "marker_threshold", "boundary_threshold", "min_area_um2")
        settings = {k: self.thresholds.get(k, config.get(k, DEFAULT_CONFIG[k])) for k in names}
        return instances(
            maps[0],
            maps[1],
            fg_threshold=settings["fg_threshold"],
            marker_threshold=settings["marker_threshold"],
            min_area_px=settings["min_area_um2"] / self.mpp**2,
            boundary=maps[2] if len(maps) > 2 else None,
            boundary_threshold=settings["boundary_threshold"],
        )


def unet_segmenter(
    model: str | os.PathLike | None = None,
    *,
    mpp: float,
    device: str | None = None,
    fg_threshold: float | None = None,
    marker_threshold: float | None = None,
    min_area_um2: float | None = None,
    tta: int = 1,
    boundary_threshold: float | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A tile segmenter with bitro's nucleus U-Net (the bundled weights, or a folder saved by ``save_unet``).

    Parameters
    ----------
    model
        Weights folder; ``None`` uses the bundled weights.
    mpp
        µm per pixel of the tiles the returned function receives.
    device
        Torch device (default ``bt.settings.device``: CUDA when present).
    fg_threshold, marker_threshold, min_area_um2, boundary_threshold
        Post-processing overrides (default: the values chosen on validation patients, in the config;
        ``boundary_threshold`` acts only for a network that predicts the nuclei's rims).
    tta
        Test-time augmentation: average the network's maps over this many mirrored / quarter-turned
        copies of each tile (1, 2, 4 or 8). More accurate outlines and splits, at ``tta`` times the
        network's time (see docs/benchmarks.md for the measured gain).
    """
    from bitro._validate import check_float

    mpp = check_float(mpp, "mpp", min_value=0, strict_min=True)
    net, config = load_unet(model)  # fail here, with a clear message, not inside a worker
    lo, hi = MPP_RANGE_TRAINED
    if mpp > MAX_MPP:
        raise ValueError(
            f"`mpp`: the image has {mpp:.3g} µm/px, too coarse to see nuclei (an 8 µm nucleus spans "
            f"{8 / mpp:.2g} px); segment a full-resolution H&E (at most {MAX_MPP:g} µm/px)."
        )
    if not lo <= mpp <= hi:
        logger.warning(
            "the image has %.3g µm/px, outside the %.2g-%.2g µm/px the nucleus model was trained for; tiles are "
            "resampled to %.2g µm/px, %s",
            mpp,
            lo,
            hi,
            config["mpp"],
            "so details finer than that are lost" if mpp < lo else "but nuclei may be too coarse to segment well",
        )
    thresholds = {}
    for name, value in (
        ("fg_threshold", fg_threshold),
        ("marker_threshold", marker_threshold),
        ("boundary_threshold", boundary_threshold),
    ):
        if value is not None:
            thresholds[name] = check_float(value, name, min_value=0, max_value=1)
    if min_area_um2 is not None:
        thresholds["min_area_um2"] = check_float(min_area_um2, "min_area_um2", min_value=0)
    if isinstance(tta, bool) or tta not in TTA:
        raise ValueError(f"`tta` must be one of {sorted(TTA)} (passes of the network per tile), got {tta!r}.")
    path = None if model is None else os.fspath(Path(model).expanduser())
    return UNetSegmenter(path, mpp=mpp, device=device, thresholds=thresholds, tta=tta)
