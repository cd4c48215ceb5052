"""The fast bilinear resampler gives skimage's pixels (the bundled U-Net's weights and thresholds were chosen on them)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize


def _he_like(shape, seed=0) -> np.ndarray:
    """Smooth blobs plus pixel noise: edges and texture, as a tile has."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.uniform(0, 255, shape).astype(np.float32), (3, 3, 0))
    return np.clip((smooth - smooth.mean()) * 6 + 150 + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("size", "anti_aliasing"),
    [((100, 70), True), ((100, 70), False), ((277, 313), False), ((199, 201), True)],
    ids=["2x coarser", "2x coarser, aliased", "1.4x finer", "same size, shifted"],
)
def test_rgb_tiles_resample_as_skimage_does(size, anti_aliasing):
    from bitro.pp._resample import resize_bilinear

    rgb = _he_like((200, 140 if size[1] == 70 else 223, 3))
    ours = resize_bilinear(rgb, size, channel_axis=-1, anti_aliasing=anti_aliasing)
    theirs = np.asarray(resize(rgb, size, order=1, preserve_range=True, anti_aliasing=anti_aliasing), np.uint8)
    assert ours.dtype == np.uint8
    assert ours.shape == (*size, 3)
    inner = np.abs(ours.astype(int) - theirs)[2:-2, 2:-2]  # the outermost pixels: clamped, not reflected
    assert inner.max() <= 1
    assert inner.mean() < 0.05


def test_channels_first_and_plain_maps_keep_their_layout_and_values():
    from bitro.pp._resample import resize_bilinear

    rng = np.random.default_rng(1)
    maps = rng.random((3, 60, 80)).astype(np.float32)
    ours = resize_bilinear(maps, (150, 200), channel_axis=0, anti_aliasing=False)
    assert ours.shape == (3, 150, 200)
    assert ours.dtype == np.float32
    for ours_map, m in zip(ours, maps, strict=True):
        theirs = resize(m, (150, 200), order=1, preserve_range=True, anti_aliasing=False)
        np.testing.assert_allclose(ours_map[2:-2, 2:-2], theirs[2:-2, 2:-2], atol=1e-5)
    one = resize_bilinear(maps[0], (30, 40), anti_aliasing=True)  # no channel axis
    theirs = resize(maps[0], (30, 40), order=1, preserve_range=True, anti_aliasing=True)
    assert one.shape == (30, 40)
    np.testing.assert_allclose(one[1:-1, 1:-1], theirs[1:-1, 1:-1], atol=1e-5)


def test_integers_are_truncated_within_their_range_and_a_bad_axis_is_refused():
    from bitro.pp._resample import resize_bilinear

    block = np.array([[[0, 65535], [65535, 0]]], np.uint16)
    out = resize_bilinear(block, (4, 4), channel_axis=0, anti_aliasing=False)
    assert out.dtype == np.uint16
    assert out.min() >= 0
    assert out.max() <= 65535
    with pytest.raises(ValueError, match="channel_axis"):
        resize_bilinear(np.zeros((2, 4, 4, 3), np.uint8), (2, 2), channel_axis=1, anti_aliasing=False)
