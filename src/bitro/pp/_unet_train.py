"""Training bitro's nucleus U-Net on labelled H&E tiles (``scripts/train_nucleus_unet.py`` is the recipe).

Tiles are sampled at the network's scale with a random zoom around it (so it holds on 20x and 40x
scans and nuclei of other sizes), the eight flips / quarter turns, and stain / colour augmentation
(hematoxylin and eosin densities scaled and shifted in optical-density space, brightness, contrast,
saturation, blur, noise), so that it holds on other scanners and staining protocols. Targets are the
nucleus mask and each nucleus's distance to its own boundary, normalised to 1 at its centre (and,
for a three-map network, each nucleus's one-pixel rim). Training is seeded and can be resumed from
a checkpoint (the same weights as a run that was never stopped); the weights of the best validation
F1 are kept, and the post-processing thresholds are then chosen on the validation tiles only.
"""

from __future__ import annotations

import json
import math
import os
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


def boundary_target(labels: np.ndarray) -> np.ndarray:
    """Each nucleus's rim: its pixels next to another label or the background (float32 0 / 1)."""
    from skimage.segmentation import find_boundaries

    return (find_boundaries(labels, mode="inner") & (labels > 0)).astype(np.float32)


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


def sample_crop(
    tile: Tile, rng: np.random.Generator, *, size: int, net_mpp: float, zoom_range=(0.75, 1.33), n_maps: int = 2
):
    """A random augmented crop ``(size, size)`` at about the network's scale: image, mask, distance, [rim,] valid."""
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
    rim = (boundary_target(labels),) if n_maps == 3 else ()
    return image, (labels > 0).astype(np.float32), distance_target(labels), *rim, valid


def batches(
    tiles: Sequence[Tile],
    *,
    batch_size: int,
    size: int,
    net_mpp: float,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    n_maps: int = 2,
):
    """Endless batches of augmented crops as torch tensors ``x (B, 3, S, S)``, ``y (B, n_maps + 1, S, S)``.

    ``y`` holds the targets (mask, distance, [rim]) and, last, the valid pixels. The crops are drawn
    from ``rng`` (default: a new generator seeded by ``seed``), which advances one batch per ``next``.
    """
    import torch

    rng = np.random.default_rng(seed) if rng is None else rng
    # tiles drawn in proportion to their area, so large tiles are not under-sampled
    weight = np.array([t.labels.size * (t.mpp / net_mpp) ** 2 for t in tiles], dtype=float)
    weight /= weight.sum()
    while True:
        crops = [
            sample_crop(tiles[i], rng, size=size, net_mpp=net_mpp, n_maps=n_maps)
            for i in rng.choice(len(tiles), batch_size, p=weight)
        ]
        x = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.stack([np.stack(c[1:]) for c in crops]))
        yield x, y


def loss_fn(logits, y):
    """BCE + soft Dice on the nucleus mask, BCE on the distance map (and on the rim, with a third map).

    Pixels outside the tile (padding, ``y``'s last channel 0) are ignored.
    """
    import torch
    import torch.nn.functional as F

    mask, dist, valid = y[:, 0], y[:, 1], y[:, -1]
    n = valid.sum().clamp(min=1)

    def bce(channel, target):
        return (F.binary_cross_entropy_with_logits(logits[:, channel], target, reduction="none") * valid).sum() / n

    prob = torch.sigmoid(logits[:, 0]) * valid
    dice = 1 - (2 * (prob * mask).sum() + 1) / (prob.sum() + (mask * valid).sum() + 1)
    loss = bce(0, mask) + dice + bce(1, dist)
    return loss + bce(2, y[:, 2]) if logits.shape[1] == 3 else loss


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
    boundary: bool = False,
    checkpoint: str | os.PathLike | None = None,
):
    """Train the U-Net; keep the weights of the best validation F1, then choose the thresholds on validation.

    ``boundary=True`` trains a third map, each nucleus's rim (see :func:`boundary_target`).
    With a ``checkpoint`` file, the whole training state is written there (atomically) at every
    validation, and a run started with an existing checkpoint of the same settings and tiles
    resumes from it: the same weights as a run that was never stopped.

    Returns ``(net, config, history)``: the network (eval mode), its config (scale and the chosen
    post-processing thresholds) and a list of ``{"iteration", "loss", "val_f1", ...}`` rows.
    """
    import copy

    import torch

    from ._unet import DEFAULT_CONFIG, MAPS, NucleusUNet

    if threads:
        torch.set_num_threads(int(threads))
    n_maps = 3 if boundary else 2
    torch.manual_seed(seed)
    net = NucleusUNet(channels, n_maps=n_maps)
    config = dict(DEFAULT_CONFIG, channels=list(channels), mpp=float(net_mpp), maps=list(MAPS[:n_maps]))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.1)
    rng = np.random.default_rng(seed)
    stream = batches(train, batch_size=batch_size, size=crop, net_mpp=net_mpp, rng=rng, n_maps=n_maps)
    history, best, best_state, running, done = [], -1.0, None, [], 0
    settings = {
        "iterations": iterations, "batch_size": batch_size, "crop": crop, "lr": lr, "weight_decay": weight_decay,
        "channels": list(channels), "net_mpp": float(net_mpp), "val_every": val_every, "seed": seed,
        "maps": n_maps, "train": [t.name for t in train], "val": [t.name for t in val],
    }  # fmt: skip
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _read_checkpoint(Path(checkpoint), settings)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        history, best, best_state, done = json.loads(state["history"]), state["best"], state["best_state"], state["it"]
        logger.info("nucleus U-Net: resumed from %s at iteration %d of %d", checkpoint, done, iterations)
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for it in range(done + 1, iterations + 1):
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
            if checkpoint is not None:
                state = {
                    "settings": json.dumps(settings), "it": it, "net": net.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                    "numpy_rng": json.dumps(rng.bit_generator.state), "history": json.dumps(history), "best": best,
                    "best_state": best_state,
                }  # fmt: skip
                _write_checkpoint(Path(checkpoint), state)
    net.load_state_dict(best_state)
    net.eval()
    if val:
        config.update(choose_thresholds(net, val, config, thresholds))
    return net, config, history


def choose_thresholds(net, val: Sequence[Tile], config: dict, grid: dict | None = None) -> dict[str, float]:
    """The post-processing thresholds with the best pooled validation F1 (AJI breaks ties).

    Foreground and marker thresholds, and the rim threshold for a three-map network.
    """
    import itertools

    grid = {
        "fg_threshold": (0.4, 0.5, 0.6),
        "marker_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
        "boundary_threshold": (0.3, 0.5, 0.7),
        **(grid or {}),
    }
    if net.n_maps < 3:
        grid.pop("boundary_threshold")
    best, chosen = (-1.0, -1.0), {}
    for values in itertools.product(*grid.values()):
        candidate = dict(zip(grid, values, strict=True))
        s = score_tiles(net, val, config, **candidate)
        if (s["f1"], s["aji"]) > best:
            best, chosen = (s["f1"], s["aji"]), candidate
    logger.info("thresholds chosen on validation tiles: %s (F1 %.3f, AJI %.3f)", chosen, *best)
    return chosen


def _write_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through a temporary file and an atomic rename: a kill leaves the previous checkpoint whole."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: Path, settings: dict) -> dict:
    """A checkpoint's state (tensors and plain values only: nothing unpickled), or a clear error if it is another run's."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
    except Exception as err:
        raise ValueError(f"`checkpoint`: {path} is not a readable nucleus U-Net training checkpoint ({err}).") from err
    differ = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
    if differ:
        raise ValueError(
            f"`checkpoint`: {path} was written by a run with other settings or tiles ({', '.join(differ)}); "
            "resume with the same ones, or give another checkpoint path."
        )
    return state
