"""Training bitro's nucleus U-Net on labelled H&E tiles (``scripts/train_nucleus_unet.py`` is the recipe).

Tiles are sampled at the network's scale with a random zoom around it (so it holds on 20x and 40x
scans and nuclei of other sizes), the eight flips / quarter turns, and stain / colour augmentation
(hematoxylin and eosin densities scaled and shifted in optical-density space, brightness, contrast,
saturation, blur, noise), so that it holds on other scanners and staining protocols. Targets are the
nucleus mask and each nucleus's distance to its own boundary, normalised to 1 at its centre.
Training is seeded; the weights of the best validation F1 are kept, and the post-processing
thresholds are then chosen on the validation tiles only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitro._logging import logger


@dataclass
class Tile:
    """One labelled tile: RGB uint8, instance labels, pixel size (µm), and where it came from."""

    name: str
    group: str
    rgb: np.ndarray
    labels: np.ndarray
    mpp: float


def load_tiles(folder: str | Path, *, mpp: float, group_of=lambda name: name) -> list[Tile]:
    """Tiles of a folder laid out as ``images/NAME.png`` + ``labels/NAME.png`` (uint16 instance labels)."""
    from PIL import Image

    folder = Path(folder)
    tiles = []
    for image in sorted((folder / "images").glob("*.png")):
        label = folder / "labels" / image.name
        if not label.is_file():
            raise FileNotFoundError(f"{image}: no label image {label}.")
        with Image.open(image) as im:
            rgb = np.asarray(im.convert("RGB"))
        with Image.open(label) as im:
            labels = np.asarray(im).astype(np.int32)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{label}: {labels.shape} labels for a {rgb.shape[:2]} image.")
        tiles.append(Tile(image.stem, str(group_of(image.stem)), rgb, labels, float(mpp)))
    if not tiles:
        raise FileNotFoundError(f"{folder}: no images/*.png with labels/*.png.")
    return tiles


TNBC_PATIENTS = {"train": ("01", "02", "03", "04", "05", "06"), "val": ("07", "08"), "test": ("09", "10", "11")}
"""TNBC patients (file prefixes) of each split: the network never trains on a test patient's tile."""


def nuclei_splits(data: str | Path) -> tuple[list[Tile], list[Tile], dict[str, list[Tile]]]:
    """Training, validation and test tiles of ``data`` (``tnbc/`` and ``dsb2018_color/`` as in ../shared/data/nuclei).

    TNBC is split by patient (:data:`TNBC_PATIENTS`); DSB2018's ``train_*`` tiles train and its
    ``test_*`` tiles test. Both sets are 40x (0.25 µm/px; DSB2018's nuclei are as large as TNBC's).
    """
    data = Path(data)
    tnbc = load_tiles(data / "tnbc", mpp=0.25, group_of=lambda name: name.split("_")[0])
    dsb = load_tiles(data / "dsb2018_color", mpp=0.25, group_of=lambda name: name.split("_")[0])
    train = [t for t in tnbc if t.group in TNBC_PATIENTS["train"]] + [t for t in dsb if t.group == "train"]
    val = [t for t in tnbc if t.group in TNBC_PATIENTS["val"]]
    test = {"tnbc": [t for t in tnbc if t.group in TNBC_PATIENTS["test"]], "dsb": [t for t in dsb if t.group == "test"]}
    return train, val, test


# --- targets and augmentation ------------------------------------------------------------------------


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Each nucleus's Euclidean distance to its own boundary, divided by its maximum (0 outside nuclei)."""
    from scipy import ndimage as ndi

    out = np.zeros(labels.shape, np.float32)
    for index, window in enumerate(ndi.find_objects(labels), start=1):
        if window is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in window)
        mask = labels[grown] == index
        d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        if d.max() > 0:
            out[grown][mask] = (d / d.max())[mask]
    return out


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, *, strength: float = 1.0) -> np.ndarray:
    """Hematoxylin / eosin density scaled and shifted (Tellez et al. 2018), then colour jitter; float32 in [0, 1]."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    alpha = 1 + strength * rng.uniform(-0.3, 0.3, 3)
    beta = strength * rng.uniform(-0.03, 0.03, 3)
    out = np.clip(hed2rgb(hed * alpha + beta), 0, 1).astype(np.float32)
    # brightness, contrast, saturation
    out = out * (1 + strength * rng.uniform(-0.15, 0.15)) + strength * rng.uniform(-0.08, 0.08)
    mean = out.mean()
    out = (out - mean) * (1 + strength * rng.uniform(-0.25, 0.25)) + mean
    grey = out.mean(axis=-1, keepdims=True)
    out = grey + (out - grey) * (1 + strength * rng.uniform(-0.4, 0.3))
    if rng.random() < 0.3:
        from scipy import ndimage as ndi

        out = ndi.gaussian_filter(out, sigma=(rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2), 0))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def sample_crop(tile: Tile, rng: np.random.Generator, *, size: int, net_mpp: float, zoom_range=(0.75, 1.33)):
    """A random augmented crop ``(size, size)`` at about the network's scale: image, mask, distance, valid."""
    from skimage.transform import resize

    zoom = tile.mpp / net_mpp * math.exp(rng.uniform(math.log(zoom_range[0]), math.log(zoom_range[1])))
    src = int(math.ceil(size / zoom))
    h, w = tile.labels.shape
    y0 = int(rng.integers(min(0, h - src), max(0, h - src) + 1))
    x0 = int(rng.integers(min(0, w - src), max(0, w - src) + 1))
    rgb = np.full((src, src, 3), 255, np.uint8)
    labels = np.zeros((src, src), np.int32)
    valid = np.zeros((src, src), np.float32)
    ys, xs = slice(max(y0, 0), min(y0 + src, h)), slice(max(x0, 0), min(x0 + src, w))
    dst = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    rgb[dst], labels[dst], valid[dst] = tile.rgb[ys, xs], tile.labels[ys, xs], 1.0
    image = stain_jitter(
        resize(rgb, (size, size), order=1, anti_aliasing=zoom < 1, preserve_range=True).astype(np.uint8), rng
    )
    labels = resize(labels, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    valid = resize(valid, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.float32)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def turn(a):
        a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    image, labels, valid = turn(image), turn(labels), turn(valid)
    return image, (labels > 0).astype(np.float32), distance_target(labels), valid


def batches(tiles: Sequence[Tile], *, batch_size: int, size: int, net_mpp: float, seed: int):
    """Endless batches of augmented crops as torch tensors ``x (B, 3, S, S)``, ``y (B, 3, S, S)`` (mask, distance, valid)."""
    import torch

    rng = np.random.default_rng(seed)
    # tiles drawn in proportion to their area, so large tiles are not under-sampled
    weight = np.array([t.labels.size * (t.mpp / net_mpp) ** 2 for t in tiles], dtype=float)
    weight /= weight.sum()
    while True:
        crops = [
            sample_crop(tiles[i], rng, size=size, net_mpp=net_mpp) for i in rng.choice(len(tiles), batch_size, p=weight)
        ]
        x = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.stack([np.stack(c[1:]) for c in crops]))
        yield x, y


def loss_fn(logits, y):
    """BCE + soft Dice on the nucleus mask, BCE on the distance map; pixels outside the tile (padding) ignored."""
    import torch
    import torch.nn.functional as F

    mask, dist, valid = y[:, 0], y[:, 1], y[:, 2]
    n = valid.sum().clamp(min=1)
    bce = (F.binary_cross_entropy_with_logits(logits[:, 0], mask, reduction="none") * valid).sum() / n
    prob = torch.sigmoid(logits[:, 0]) * valid
    dice = 1 - (2 * (prob * mask).sum() + 1) / (prob.sum() + (mask * valid).sum() + 1)
    dist_loss = (F.binary_cross_entropy_with_logits(logits[:, 1], dist, reduction="none") * valid).sum() / n
    return bce + dice + dist_loss


# --- training ----------------------------------------------------------------------------------------


def segment_tiles(net, tiles: Sequence[Tile], config: dict, **thresholds) -> list[np.ndarray]:
    """Labels of each tile at its own pixel size (resampled to the network's scale and back)."""
    from ._unet import UNetSegmenter

    return [UNetSegmenter.from_net(net, config, mpp=t.mpp, thresholds=thresholds)(t.rgb) for t in tiles]


def score_tiles(net, tiles: Sequence[Tile], config: dict, **thresholds) -> dict[str, float]:
    """Pooled scores (detection F1, PQ, AJI, count ratio) of the network on labelled tiles."""
    from ._seg_scores import match_scores, pooled

    labels = segment_tiles(net, tiles, config, **thresholds)
    return pooled([match_scores(p, t.labels) for p, t in zip(labels, tiles, strict=True)])


def train_unet(
    train: Sequence[Tile],
    val: Sequence[Tile],
    *,
    iterations: int = 3000,
    batch_size: int = 8,
    crop: int = 160,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    net_mpp: float = 0.5,
    val_every: int = 250,
    seed: int = 0,
    threads: int | None = None,
    thresholds: dict[str, Sequence[float]] | None = None,
):
    """Train the U-Net; keep the weights of the best validation F1, then choose the thresholds on validation.

    Returns ``(net, config, history)``: the network (eval mode), its config (scale and the chosen
    post-processing thresholds) and a list of ``{"iteration", "loss", "val_f1", ...}`` rows.
    """
    import copy

    import torch

    from ._unet import DEFAULT_CONFIG, NucleusUNet

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    net = NucleusUNet(channels)
    config = dict(DEFAULT_CONFIG, channels=list(channels), mpp=float(net_mpp))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.1)
    stream = batches(train, batch_size=batch_size, size=crop, net_mpp=net_mpp, seed=seed)
    history, best, best_state, running = [], -1.0, None, []
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        net.train()
        x, y = next(stream)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.detach().item())
        if it % val_every == 0 or it == iterations:
            net.eval()
            scores = score_tiles(net, val, config) if val else {"f1": float("nan")}
            row = {"iteration": it, "loss": float(np.mean(running)), "seconds": time.perf_counter() - start}
            row.update({f"val_{k}": scores[k] for k in ("f1", "pq", "aji", "count_ratio") if k in scores})
            history.append(row)
            running = []
            logger.info("nucleus U-Net %s", row)
            if not val or scores["f1"] > best:
                best, best_state = scores["f1"], copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    if val:
        config.update(choose_thresholds(net, val, config, thresholds))
    return net, config, history


def choose_thresholds(net, val: Sequence[Tile], config: dict, grid: dict | None = None) -> dict[str, float]:
    """The foreground and marker thresholds with the best pooled validation F1 (AJI breaks ties)."""
    grid = grid or {"fg_threshold": (0.4, 0.5, 0.6), "marker_threshold": (0.3, 0.4, 0.5, 0.6, 0.7)}
    best, chosen = (-1.0, -1.0), {}
    for fg in grid["fg_threshold"]:
        for marker in grid["marker_threshold"]:
            s = score_tiles(net, val, config, fg_threshold=fg, marker_threshold=marker)
            if (s["f1"], s["aji"]) > best:
                best, chosen = (s["f1"], s["aji"]), {"fg_threshold": fg, "marker_threshold": marker}
    logger.info("thresholds chosen on validation tiles: %s (F1 %.3f, AJI %.3f)", chosen, *best)
    return chosen
