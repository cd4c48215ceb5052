"""Bilinear resampling of image blocks: what skimage's ``resize(order=1)`` gives, 3-6x faster.

Tiles are resampled to a network's or a feature's working scale many times per slide, and skimage's
``resize`` (float64, ``ndimage.zoom``) took 9-29 % of a U-Net tile's time. Here the same anti-aliasing
(a Gaussian of sigma ``(factor - 1) / 2`` along each axis made coarser, reflected at the border) runs in
float32 and the interpolation is torch's bilinear kernel (pixel centres aligned, as skimage's); the
bundled U-Net's weights and thresholds were chosen on skimage's pixels, which this matches to within a
grey level inside the block (the outermost half pixel is clamped, not reflected).
"""

from __future__ import annotations

import numpy as np


def resize_bilinear(
    a: np.ndarray, size: tuple[int, int], *, channel_axis: int | None = None, anti_aliasing: bool
) -> np.ndarray:
    """``a`` (``(H, W)``, or with channels on ``channel_axis`` 0 or -1) resampled to ``size`` = ``(H', W')``.

    The result keeps ``a``'s layout and dtype (integers truncated, as ``astype`` does). With
    ``anti_aliasing``, the axes made coarser are smoothed first (as skimage's ``anti_aliasing=True``).
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage as ndi

    size = (int(size[0]), int(size[1]))
    if channel_axis is None:
        chw = a[None]
    elif channel_axis in (-1, a.ndim - 1):
        chw = np.moveaxis(a, -1, 0)
    elif channel_axis == 0:
        chw = a
    else:
        raise ValueError(f"`channel_axis` must be None, 0 or -1, got {channel_axis!r}.")
    x = np.asarray(chw, dtype=np.float32)
    if anti_aliasing:
        sigma = [0.0, *(max(0.0, (n / m - 1) / 2) for n, m in zip(x.shape[1:], size, strict=True))]
        if max(sigma) > 0:
            x = ndi.gaussian_filter(x, sigma, mode="mirror")
    y = F.interpolate(torch.from_numpy(np.ascontiguousarray(x))[None], size=size, mode="bilinear", align_corners=False)
    y = y[0].numpy()
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        y = np.clip(y, info.min, info.max)
    y = y.astype(a.dtype, copy=False)
    if channel_axis is None:
        return y[0]
    return np.moveaxis(y, 0, -1) if channel_axis != 0 else y
