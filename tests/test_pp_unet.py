"""bitro's nucleus U-Net: the bundled weights on held-out real tiles, end to end, the training recipe, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitro as bt
from bitro import _constants as K
from bitro.pp._seg_scores import match_scores, pooled
from bitro.pp._unet import load_unet, save_unet, unet_segmenter
from bitro.pp._unet_train import load_tiles, train_unet

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiles():
    """Two TNBC tiles of patients the network never saw (10, 11; 0.25 µm/px)."""
    return load_tiles(DATA / "nuclei", mpp=0.25, group_of=lambda name: name.split("_")[0])


def test_bundled_weights_segment_held_out_patients(tiles):
    from bitro.pp._watershed import watershed_tile

    unet = pooled([match_scores(unet_segmenter(mpp=t.mpp)(t.rgb), t.labels) for t in tiles])
    ws = pooled([match_scores(watershed_tile(t.rgb, mpp=t.mpp), t.labels) for t in tiles])
    assert unet["f1"] >= 0.8
    assert unet["f1"] > ws["f1"] + 0.05  # clearly above the watershed on the same tiles
    assert 0.8 <= unet["count_ratio"] <= 1.2
    assert unet["aji"] > ws["aji"]


def test_segment_cells_with_the_unet_on_a_real_crop(her2st_crop):
    sdata = her2st_crop((2000, 1800, 2400, 2200))
    bt.pp.segment_cells(sdata, method="unet", tile_size=512, n_jobs=2)
    cells = sdata[K.CELLS_TABLE_KEY]
    per_mm2 = cells.n_obs / 0.16
    area = cells.obs[K.AREA_UM2_KEY].to_numpy()
    # HER2ST C3 at 0.69 µm/px (a scale the network did not train at): a plausible density and nucleus size
    assert 1500 < per_mm2 < 9000
    assert 15 < np.median(area) < 80
    assert sdata.attrs["bitro"]["cells_shapes_key"] == "unet_boundaries"
    assert sdata.attrs["bitro"]["segmentation_mpp"] == pytest.approx(0.69, abs=0.01)


def test_training_recipe_runs_a_few_iterations_and_round_trips(tiles, tmp_path):
    net, config, history = train_unet(
        tiles[:1], tiles[1:], iterations=4, batch_size=2, crop=64, val_every=2, seed=0, channels=(4, 8, 16),
        thresholds={"fg_threshold": (0.5,), "marker_threshold": (0.4, 0.6)},
    )  # fmt: skip
    assert [h["iteration"] for h in history] == [2, 4]
    assert np.isfinite([h["loss"] for h in history]).all()
    assert config["marker_threshold"] in (0.4, 0.6)
    save_unet(net, config, tmp_path / "w")
    loaded, loaded_config = load_unet(tmp_path / "w")
    assert loaded_config["channels"] == [4, 8, 16]
    rgb = tiles[0].rgb[:128, :128]
    a = unet_segmenter(tmp_path / "w", mpp=0.5)(rgb)
    b = unet_segmenter(tmp_path / "w", mpp=0.5)(rgb)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_unet(net, config, tmp_path / "w")


def test_the_recipe_script_trains_and_bundles_a_network_of_the_widths_asked(tmp_path, monkeypatch):
    import runpy
    import shutil

    import torch

    # the layout of ../shared/data/nuclei in miniature: TNBC patient 01 trains, 07 validates, one DSB train tile
    for source, name, dest in [
        ("10_1", "tnbc", "01_1"),
        ("11_1", "tnbc", "07_1"),
        ("10_1", "dsb2018_color", "train_a"),
    ]:
        for kind in ("images", "labels"):
            (tmp_path / name / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(DATA / "nuclei" / kind / f"{source}.png", tmp_path / name / kind / f"{dest}.png")
    script = Path(__file__).parents[1] / "scripts" / "train_nucleus_unet.py"
    out = tmp_path / "weights"
    args = ["--data", tmp_path, "--out", out, "--iterations", "2", "--batch-size", "2", "--threads", "1"]
    monkeypatch.setattr("sys.argv", [str(script), *map(str, args), "--channels", "4", "8", "16"])
    monkeypatch.setattr(bt.settings, "verbosity", bt.settings.verbosity)  # the script sets it: restored after
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # and torch's threads (--threads)
    net, config = load_unet(out)
    assert net.channels == [4, 8, 16]
    assert config["maps"] == ["foreground", "distance", "boundary"]
    assert config["training"]["iterations"] == 2
    assert "TNBC patients 07" in config["training"]["validation"]
    assert "Naylor" in (out / "ATTRIBUTION.txt").read_text()


def test_a_stopped_training_resumes_to_the_same_weights(tiles, tmp_path, monkeypatch, training_noise):
    import torch

    from bitro.pp import _unet_train

    settings = {"iterations": 4, "batch_size": 2, "crop": 64, "val_every": 2, "seed": 0, "channels": (4, 8, 16)}
    grid = {"fg_threshold": (0.5,), "marker_threshold": (0.5,), "boundary_threshold": (0.5,)}
    straight, _, history = train_unet(tiles[:1], tiles[1:], boundary=True, thresholds=grid, **settings)
    assert straight.n_maps == 3

    write = _unet_train._write_checkpoint

    def write_then_stop(path, state):  # killed right after the first checkpoint (iteration 2)
        write(path, state)
        raise KeyboardInterrupt

    checkpoint = tmp_path / "run" / "state.pt"
    monkeypatch.setattr(_unet_train, "_write_checkpoint", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_unet(tiles[:1], tiles[1:], boundary=True, thresholds=grid, checkpoint=checkpoint, **settings)
    monkeypatch.setattr(_unet_train, "_write_checkpoint", write)
    resumed, config, resumed_history = train_unet(
        tiles[:1], tiles[1:], boundary=True, thresholds=grid, checkpoint=checkpoint, **settings
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    assert config["maps"] == ["foreground", "distance", "boundary"]
    # another run's checkpoint is refused by name, not silently continued
    with pytest.raises(ValueError, match=r"other settings or tiles \(seed\)"):
        train_unet(tiles[:1], tiles[1:], boundary=True, checkpoint=checkpoint, **{**settings, "seed": 1})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable"):
        train_unet(tiles[:1], tiles[1:], checkpoint=tmp_path / "junk.pt", **settings)


def test_a_network_with_rims_saves_loads_and_cuts_touching_nuclei(tiles, tmp_path):
    from bitro.pp._unet import NucleusUNet, instances

    net = NucleusUNet((4, 8), n_maps=3).eval()
    save_unet(net, {"boundary_threshold": 0.3}, tmp_path / "w")
    loaded, config = load_unet(tmp_path / "w")
    assert loaded.n_maps == 3
    assert config["maps"] == ["foreground", "distance", "boundary"]
    assert unet_segmenter(tmp_path / "w", mpp=0.5, tta=2)(tiles[0].rgb[:64, :64]).shape == (64, 64)
    # two discs whose distance cores touch: one nucleus without the rim map, two with it
    yy, xx = np.mgrid[:40, :60]
    left, right = (yy - 20) ** 2 + (xx - 22) ** 2 < 144, (yy - 20) ** 2 + (xx - 38) ** 2 < 144
    prob = (left | right).astype(np.float32)
    dist = np.where(prob > 0, 0.9, 0.0).astype(np.float32)
    rim = np.zeros_like(prob)
    rim[:, 29:31] = 1.0  # where the two meet
    kwargs = {"fg_threshold": 0.5, "marker_threshold": 0.5, "min_area_px": 0}
    assert instances(prob, dist, **kwargs).max() == 1
    assert instances(prob, dist, boundary=rim, **kwargs).max() == 2
    with pytest.raises(ValueError, match="`n_maps` must be 2"):
        NucleusUNet((4, 8), n_maps=4)


def test_test_time_augmentation_is_mirror_equivariant(tiles):
    rgb = tiles[0].rgb[:256, :320]
    segment = unet_segmenter(mpp=0.25, tta=8)
    labels, mirrored = segment(rgb), segment(np.ascontiguousarray(rgb[:, ::-1]))[:, ::-1]
    # the 8 flips / turns are a group: a mirrored tile gives the mirrored nuclei (up to float summation order)
    assert labels.max() > 10
    assert abs(int(labels.max()) - int(mirrored.max())) <= 1
    assert np.mean((labels > 0) == (mirrored > 0)) > 0.999
    single = unet_segmenter(mpp=0.25)(rgb)
    assert abs(int(labels.max()) - int(single.max())) <= 0.2 * single.max()  # the same nuclei, averaged maps
    for bad in (3, True, 0):
        with pytest.raises(ValueError, match="`tta` must be one of"):
            unet_segmenter(mpp=0.25, tta=bad)


def test_batch_norm_folded_for_inference_gives_the_same_maps(tiles):
    import torch

    from bitro.pp._unet import folded, predict_maps

    net, _ = load_unet()
    fast = folded(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is left as it was
    rgb = tiles[0].rgb[:256, :256]
    for a, b in zip(predict_maps(net, rgb), predict_maps(fast, rgb), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_inference_network_gives_the_same_maps_everywhere(tiles):
    """Upsampling + concatenation replaced by transposed convolutions: the same maps, borders included."""
    import torch

    from bitro.pp._unet import InferenceUNet

    net, _ = load_unet()
    fast = InferenceUNet(net).to(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert fast.multiple == net.multiple
    rgb = torch.from_numpy(np.ascontiguousarray(tiles[0].rgb[:200, :232])).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        for x in (rgb[..., :160, :224], rgb, rgb[..., :16, :16]):  # 160 x 224 and 16 x 16: multiples of 16
            # 200 x 232 is not: the coarser maps are not exactly half as large, and the two steps are taken
            np.testing.assert_allclose(
                net(x).numpy(), fast(x.contiguous(memory_format=torch.channels_last)).numpy(), atol=1e-4
            )


def test_bad_weights_and_images(tmp_path, bitro_log):
    with pytest.raises(FileNotFoundError, match="none is not an existing folder"):
        unet_segmenter(tmp_path / "none", mpp=0.5)  # e.g. a typo
    with pytest.raises(FileNotFoundError, match="is not a nucleus U-Net folder"):
        unet_segmenter(tmp_path, mpp=0.5)  # a folder without the weights
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"format": 1, "architecture": "unet", "channels": [4, 8]}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match=r"broken/model.safetensors: not a readable safetensors file"):
        unet_segmenter(folder, mpp=0.5)
    unet_segmenter(mpp=4.7)  # far coarser than trained: a warning, the tiles are still resampled
    assert "4.7 µm/px, outside the 0.2-1 µm/px" in bitro_log.text
    with pytest.raises(ValueError, match=r"23 µm/px, too coarse to see nuclei"):
        unet_segmenter(mpp=23)  # a Visium lowres image: refused, not upsampled 46-fold
    blank = np.full((256, 256, 3), 240, np.uint8)
    assert unet_segmenter(mpp=0.5)(blank).max() == 0  # no cells, no crash


@pytest.mark.parametrize("kind", ["uint16", "rgba"])
def test_16_bit_and_rgba_images_segment_like_8_bit(kind, tiles):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rgb = tiles[0].rgb
    if kind == "uint16":
        pixels = rgb.astype(np.uint16) * 257
        data = np.moveaxis(pixels, -1, 0)
    else:
        data = np.moveaxis(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), -1, 0)
    image = Image2DModel.parse(data, dims=("c", "y", "x"), transformations={"s": Scale([0.25, 0.25], axes=("x", "y"))})
    sdata = sd.SpatialData(images={"img": image})
    sdata.attrs["bitro"] = {"image_key": "img", "coordinate_system": "s", "mpp": 0.25, "sample_id": "s"}
    bt.pp.segment_cells(sdata, method="unet")
    reference = unet_segmenter(mpp=0.25)(rgb)
    n_ref = len(np.unique(reference)) - 1
    assert abs(sdata[K.CELLS_TABLE_KEY].n_obs - n_ref) <= max(3, 0.05 * n_ref)


def test_segmentation_scores_on_a_hand_example():
    true = np.zeros((20, 20), int)
    true[2:8, 2:8], true[10:18, 10:18] = 1, 2
    pred = np.zeros((20, 20), int)
    pred[2:8, 2:9], pred[12:14, 12:14], pred[0:2, 15:20] = 5, 7, 9
    s = match_scores(pred, true)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 1)
    assert s["f1"] == pytest.approx(0.4)
    assert s["sq"] == pytest.approx(36 / 42)
    assert s["aji"] == pytest.approx((36 + 4) / (42 + 64 + 10))
    assert match_scores(true, true)["pq"] == 1.0


def test_a_smaller_minimum_area_reaches_the_networks_post_processing(toy_st, monkeypatch):
    import functools

    import bitro.pp._unet as unet
    from bitro.pp import segment_cells
    from bitro.pp._watershed import watershed_tile

    seen = {}

    def segmenter(model=None, *, mpp, **options):  # records what segment_cells asks of the U-Net
        seen.update(options)
        return functools.partial(watershed_tile, mpp=mpp)

    monkeypatch.setattr(unet, "unet_segmenter", segmenter)
    segment_cells(toy_st, method="unet", min_area_um2=2.0, n_jobs=1)
    assert seen == {"min_area_um2": 2.0}  # the network's own 6 µm² floor would otherwise stay
    seen.clear()
    segment_cells(toy_st, method="unet", n_jobs=1)
    assert seen == {}
