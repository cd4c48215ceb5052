"""Named foundation encoders, the transformers / timm formats and the tile path of ``bt.pp.cell_features``.

Nothing is downloaded: tiny random-weight models of each format are built and saved here, then loaded
by path (or as a named encoder's local copy with ``encoder_path``).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import bitro as bt
from bitro import _constants as K

torch = pytest.importorskip("torch")


def _tiny_dinov2(folder, *, image_size=32, patch_size=8, seed=0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          patch_size=patch_size, image_size=image_size)  # fmt: skip
    Dinov2Model(config).save_pretrained(folder)
    return folder


def _table(sdata):
    return sdata.tables[K.CELLS_TABLE_KEY]


def _rgb(sdata) -> np.ndarray:
    """The level-0 image the cells were segmented on, (y, x, 3) in [0, 1]."""
    from bitro import _sdata

    key = sdata.attrs[K.ATTRS_KEY][K.ATTR_CELLS_IMAGE]
    return np.asarray(_sdata.level0(sdata.images[key]).data).transpose(1, 2, 0).astype(np.float32) / 255


@pytest.fixture(scope="module")
def cmu_cells(tmp_path_factory):
    """A 192 px crop of CMU-1 (real H&E, 0.499 µm/px) with watershed nuclei."""
    import tifffile

    image = tifffile.imread(Path(__file__).parent / "data" / "wsi" / "CMU-1-Small-Region.svs")[1000:1192, 1000:1192]
    path = tmp_path_factory.mktemp("cmu") / "crop.svs"
    tifffile.imwrite(path, np.ascontiguousarray(image), description="Aperio Image Library v12 |AppMag = 20|MPP = 0.499",
                     photometric="rgb")  # fmt: skip
    sdata = bt.io.wsi(path, tissue=False)
    bt.pp.segment_cells(sdata, method="watershed", progress=False)
    assert _table(sdata).n_obs > 20
    return sdata


def test_registry_lists_the_names_users_know():
    table = bt.models.encoders()
    for name in ["uni", "uni2-h", "conch_v15", "virchow2", "h-optimus-0", "h-optimus-1", "phikon", "phikon-v2",
                 "gigapath", "dinov2-small", "dinov2-base", "dinov2-large", "dinov3-small"]:  # fmt: skip
        assert name in table.index
    assert set(table["format"]) == {"bitro", "timm", "transformers", "conch"}
    assert (table["dim"] > 0).all()
    assert (table["mpp"] > 0).all()
    assert table.loc["virchow2", "output"] == "cls+mean"
    assert table.loc["virchow2", "dim"] == 2560
    assert table.loc["uni", "gated"]
    assert not table.loc["dinov2-small", "gated"]


def test_transformers_folder_crop_and_tile_on_real_cells(cmu_cells, tmp_path):
    from bitro.pp._encoder import crop_batch
    from bitro.pp._encoder_load import load_cell_encoder

    folder = _tiny_dinov2(tmp_path / "dino")
    sdata = cmu_cells
    bt.pp.cell_features(sdata, method="encoder", encoder=folder, mode="crop", crop_um=16.0, key_added="crop")
    bt.pp.cell_features(sdata, method="encoder", encoder=folder, mode="tile", key_added="tile")
    table = _table(sdata)
    crop, tile = table.obsm["crop"], table.obsm["tile"]
    assert crop.shape == tile.shape == (table.n_obs, 16)
    assert np.isfinite(crop).all()
    assert np.isfinite(tile).all()
    params = table.uns["tile"]["params"]
    assert params["format"] == "transformers"
    assert params["architecture"] == "dinov2"
    assert params["mode"] == "tile"
    assert params["input_size"] == 32  # an unnamed model without preprocessor_config: its config's image size

    # crop mode: the class token of the normalised crop (checked on one cell)
    model = load_cell_encoder(folder)
    image = _rgb(sdata)
    mpp = table.uns["crop"]["params"]["mpp"]
    i = int(np.argmin(np.abs(table.obs[K.CENTROID_X_PX] - 96) + np.abs(table.obs[K.CENTROID_Y_PX] - 96)))
    c = table.obs[[K.CENTROID_X_PX, K.CENTROID_Y_PX]].to_numpy()[[i]]
    x = crop_batch(image, (0, 0), c, 16.0 / mpp, 32)
    norm = (x - torch.tensor(model.mean).view(1, 3, 1, 1)) / torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.backbone(pixel_values=norm).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(crop[i], expected[0], rtol=1e-4, atol=1e-5)


def test_tile_pooling_matches_pixel_coverage(cmu_cells, tmp_path):
    """A cell's tile feature is the patch tokens averaged by the share of its pixels over each patch."""
    from skimage.draw import polygon as fill

    from bitro.pp._encoder import SmallCNN, save_encoder
    from bitro.pp._encoder_load import load_cell_encoder
    from bitro.pp._features import _cell_geometry

    torch.manual_seed(1)
    args = {"channels": [8, 8, 8], "out_dim": 6}  # 8 px patches
    folder = save_encoder(SmallCNN(**args), tmp_path / "cnn", architecture="small_cnn", args=args, input_size=64)
    sdata = cmu_cells
    bt.pp.cell_features(sdata, method="encoder", encoder=folder, mode="tile", key_added="t", batch_size=3)
    table = _table(sdata)
    got = table.obsm["t"]
    again = bt.pp.cell_features(sdata, method="encoder", encoder=folder, mode="tile", key_added="t2", batch_size=1,
                                copy=True)  # fmt: skip
    np.testing.assert_allclose(_table(again).obsm["t2"], got, rtol=1e-5, atol=1e-6)  # batching changes nothing

    model = load_cell_encoder(folder)
    image = _rgb(sdata)
    geometry = _cell_geometry(sdata[sdata.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES]], table.obs[K.CELL_ID_KEY].to_numpy())
    size, margin = model.tile_input, model.tile_margin
    assert (size, margin) == (512, 32)  # convolutional: 8 crops wide, half a crop of context
    stride = size - 2 * margin
    checked = 0
    for i in range(0, table.n_obs, 7):
        cx, cy = geometry[i].centroid.x, geometry[i].centroid.y
        x0, y0 = int(cx // stride) * stride - margin, int(cy // stride) * stride - margin
        window = np.ones((size, size, 3), np.float32)
        ys, xs = slice(max(y0, 0), min(y0 + size, 192)), slice(max(x0, 0), min(x0 + size, 192))
        window[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = image[ys, xs]
        with torch.no_grad():
            grid = model.token_map((torch.from_numpy(window.transpose(2, 0, 1))[None] - 0.5) / 0.25)[0].numpy()
        coords = np.asarray(geometry[i].exterior.coords) - (x0, y0)
        rr, cc = fill(coords[:, 1] - 0.5, coords[:, 0] - 0.5, (size, size))
        if len(rr) < 20:
            continue
        share = np.bincount((rr // 8) * 64 + cc // 8, minlength=64 * 64).reshape(64, 64) / len(rr)
        expected = (grid * share[None]).sum(axis=(1, 2))
        np.testing.assert_allclose(got[i], expected, atol=0.05 * np.abs(expected).max() + 1e-3)
        checked += 1
    assert checked >= 3


def test_named_encoder_from_a_local_copy(toy_cells, tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(tmp_path / "phikon")  # fmt: skip
    bt.pp.cell_features(toy_cells, method="encoder", encoder="phikon", encoder_path=tmp_path / "phikon",
                        mode="tile", batch_size=2)  # fmt: skip
    uns = _table(toy_cells).uns[K.FEATURES_KEY]
    assert uns["params"]["encoder"] == "phikon"
    assert uns["params"]["input_size"] == 224
    assert uns["params"]["encoder_mpp"] == 0.5  # the toy image is read at Phikon's 20x
    assert np.isfinite(_table(toy_cells).obsm[K.FEATURES_KEY]).all()
    with pytest.raises(ValueError, match="encoder_path"):
        bt.pp.cell_features(toy_cells, method="encoder", encoder=tmp_path / "phikon", encoder_path=tmp_path)


def test_dinov3_registers_are_not_patches(toy_cells, tmp_path):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from bitro.pp._encoder_load import load_cell_encoder

    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=16, image_size=64, num_register_tokens=4)  # fmt: skip
    DINOv3ViTModel(config).save_pretrained(tmp_path / "d3")
    model = load_cell_encoder("dinov3-small", path=tmp_path / "d3")
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        seq = model.backbone(pixel_values=x).last_hidden_state
        grid = model.token_map(x)
    assert seq.shape[1] == 1 + 4 + 4 * 3
    assert grid.shape == (2, 16, 4, 3)
    np.testing.assert_allclose(grid[:, :, 0, 0].numpy(), seq[:, 5].numpy(), rtol=1e-5)


def _fake_timm(monkeypatch):
    """A stand-in for timm (not installable beside this torch build) with its create_model / forward_features API."""

    class TinyViT(torch.nn.Module):
        def __init__(self, reg_tokens=0, embed_dim=8, patch_size=8, **_):
            super().__init__()
            self.num_prefix_tokens = 1 + reg_tokens
            self.patch_embed = types.SimpleNamespace(patch_size=(patch_size, patch_size))
            self.proj = torch.nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
            self.prefix = torch.nn.Parameter(torch.randn(1, self.num_prefix_tokens, embed_dim))

        def forward_features(self, x):
            patches = self.proj(x).flatten(2).transpose(1, 2)
            return torch.cat([self.prefix.expand(len(x), -1, -1), patches], dim=1)

    created = []

    def create_model(name, pretrained=False, **kwargs):
        assert not pretrained
        import re

        created.append((name, kwargs))
        patch = kwargs.pop("patch_size", int(re.search(r"patch(\d+)", name).group(1)))
        return TinyViT(patch_size=patch, **kwargs)

    fake = types.SimpleNamespace(create_model=create_model, layers=types.SimpleNamespace(SwiGLUPacked=object))
    monkeypatch.setitem(sys.modules, "timm", fake)
    return TinyViT, created


def test_timm_named_encoder_with_registers_and_cls_mean(monkeypatch, tmp_path):
    from bitro.pp._encoder_load import load_cell_encoder

    tiny, created = _fake_timm(monkeypatch)
    torch.manual_seed(0)
    net = tiny(reg_tokens=4, embed_dim=8, patch_size=14)
    (tmp_path / "v2").mkdir()
    torch.save(net.state_dict(), tmp_path / "v2" / "pytorch_model.bin")
    model = load_cell_encoder("virchow2", path=tmp_path / "v2")
    name, kwargs = created[-1]
    assert name == "vit_huge_patch14_224"
    assert kwargs["reg_tokens"] == 4
    assert kwargs["act_layer"] is torch.nn.SiLU
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        emb, seq = model(x), net.forward_features(x)
    assert emb.shape == (2, 16)  # class token + mean of the patch tokens (registers left out)
    np.testing.assert_allclose(emb[:, :8].numpy(), seq[:, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(emb[:, 8:].numpy(), seq[:, 5:].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert model.token_map(x).shape == (2, 8, 16, 16)

    (tmp_path / "v2" / "pytorch_model.bin").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_cell_encoder("virchow2", path=tmp_path / "v2")


def test_timm_missing_names_the_extra(monkeypatch, tmp_path):
    import json

    from bitro.pp._encoder_load import load_cell_encoder

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    (tmp_path / "uni").mkdir()
    with pytest.raises(ImportError, match=r"bitro\[timm\]"):
        load_cell_encoder("uni", path=tmp_path / "uni")
    folder = tmp_path / "hub_layout"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "model_args": {}}))
    with pytest.raises(ImportError, match=r"bitro\[timm\]"):
        load_cell_encoder(folder)


def test_gated_and_offline_messages_say_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from bitro.pp._encoder_load import load_cell_encoder

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def gated(repo, **kwargs):
        if kwargs.get("local_files_only"):
            raise FileNotFoundError(repo)
        err = GatedRepoError.__new__(GatedRepoError)  # as the hub raises it, without an HTTP response to build
        Exception.__init__(err, "401 Client Error: access to model MahmoodLab/UNI is restricted")
        raise err

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(PermissionError, match=r"UNI.*gated.*huggingface.co/MahmoodLab/UNI.*HF_TOKEN.*encoder_path"):
        load_cell_encoder("uni")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"dinov2-small.*local Hugging Face cache.*encoder_path"):
        load_cell_encoder("dinov2-small")
    with pytest.raises(FileNotFoundError, match=r"local Hugging Face cache.*Nor is there a folder .*my_encodr"):
        load_cell_encoder("models/my_encodr")  # a mistyped local folder reads as a hub id too
    with pytest.raises(NotImplementedError, match="pooler"):
        load_cell_encoder("conch_v15", path=tmp_path)


def test_features_are_never_computed_twice(toy_cells, tmp_path, monkeypatch):
    import bitro.pp._features as features

    folder = _tiny_dinov2(tmp_path / "dino")
    bt.pp.cell_features(toy_cells, method="encoder", encoder=folder, mode="tile")
    first = _table(toy_cells).obsm[K.FEATURES_KEY].copy()

    def boom(*args, **kwargs):
        raise AssertionError("featurised again")

    monkeypatch.setattr(features, "_encode", boom)
    bt.pp.cell_features(toy_cells, method="encoder", encoder=folder, mode="tile")  # same settings: kept
    np.testing.assert_array_equal(_table(toy_cells).obsm[K.FEATURES_KEY], first)
    with pytest.raises(AssertionError, match="featurised again"):  # other settings: computed
        bt.pp.cell_features(toy_cells, method="encoder", encoder=folder, mode="crop")
    image = toy_cells.attrs["bitro"]["image_key"]
    toy_cells.images["other_image"] = toy_cells.images[image]
    with pytest.raises(AssertionError, match="featurised again"):  # another image: computed
        bt.pp.cell_features(toy_cells, method="encoder", encoder=folder, mode="tile", image_key="other_image")
    _tiny_dinov2(tmp_path / "dino", seed=1, image_size=48)  # other weights in the same folder: computed
    with pytest.raises(AssertionError, match="featurised again"):
        bt.pp.cell_features(toy_cells, method="encoder", encoder=folder, mode="tile")


def test_morphology_plus_encoder(toy_cells, tmp_path):
    folder = _tiny_dinov2(tmp_path / "dino")
    bt.pp.cell_features(toy_cells, method="morphology+encoder", encoder=folder, mode="tile")
    uns = _table(toy_cells).uns[K.FEATURES_KEY]
    names = sorted(uns["names"], key=uns["names"].get)
    assert names[:21] == list(features_names())
    assert names[21:] == [f"enc_{i}" for i in range(16)]


def test_bundled_offline_encoder_is_the_default(cmu_cells):
    import json

    from bitro.pp._encoder_zoo import BUNDLED

    config = json.loads((BUNDLED / "config.json").read_text())
    sdata = cmu_cells
    bt.pp.cell_features(sdata, method="encoder", key_added="bundled")  # no download, no encoder named
    bt.pp.cell_features(sdata, method="encoder", mode="tile", key_added="bundled_tile")
    table = _table(sdata)
    for key in ("bundled", "bundled_tile"):
        x = table.obsm[key]
        assert x.shape == (table.n_obs, config["args"]["out_dim"])
        assert np.isfinite(x).all()
        assert x.std(axis=0).mean() > 0  # cells differ
        params = table.uns[key]["params"]
        assert params["encoder"] == "bitro"
        assert params["encoder_mpp"] == pytest.approx(config["mpp"])  # read at the scale it was trained at
    assert table.uns["bundled"]["params"]["crop_um"] == pytest.approx(config["crop_um"])
    assert "bitro" in bt.models.encoders().index


def features_names():
    from bitro.pp._features import MORPHOLOGY_FEATURES

    return MORPHOLOGY_FEATURES


def test_a_model_on_encoder_features_measures_them_on_new_sections(toy_sections, tmp_path):
    """fit records how its features were made, so predict on a section without them measures the same."""
    folder = _tiny_dinov2(tmp_path / "dino")
    for s in toy_sections[:2]:
        bt.pp.cell_features(s, method="morphology+encoder", encoder=folder, mode="tile")
    model = bt.tl.fit(toy_sections[:2], n_genes=5, max_epochs=1, progress=False)
    step = model.config["preprocessing"]["features"]
    assert step == {"method": "morphology+encoder", "encoder": str(folder), "mode": "tile"}
    new = bt.datasets.toy_st(n_spots=16, n_genes=40, seed=7, sample_id="new")
    bt.pp.segment_cells(new, method="watershed")
    bt.tl.predict(new, model)
    uns = _table(new).uns[K.FEATURES_KEY]
    assert uns["method"] == "morphology+encoder"
    assert len(uns["names"]) == 21 + 16


def test_a_device_this_machine_lacks_is_named_before_any_work():
    import torch

    from bitro.pp._encoder import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():  # torch's own error came after the weights loaded and named no argument
        with pytest.raises(ValueError, match="`device` is 'cuda:1', but torch .* sees no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="`device` must be one of .* or 'cuda:N', got 'cuda:x'"):
        bt.settings.device = "cuda:x"
