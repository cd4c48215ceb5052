"""bt.tl.transfer: LoRA / full / head transfer between bulk and spots, adapters saved, loaded, switched, merged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import bitro as bt


@pytest.fixture(scope="session")
def bulk_model(_toy_cohort_cells):
    """A bulk model trained on the four toy cohort slides (watershed cells, as the toy sections it transfers to)."""

    slides = copy.deepcopy(_toy_cohort_cells)
    return bt.tl.fit(slides, target="bulk", n_genes=20, val=None, max_epochs=3, seed=0, progress=False)


@pytest.fixture(scope="session")
def lora_model(bulk_model, _toy_sections):
    """bulk -> spot with LoRA on toy0/toy1 (validation toy1)."""

    sections = copy.deepcopy(_toy_sections[:2])
    return bt.tl.transfer(sections, bulk_model, target="spot", val=["toy1"], max_epochs=3, seed=0, progress=False)


def _base_tensor(state: dict, key: str):
    """``key`` of an unwrapped model in the state of a LoRA-wrapped one (peft adds ``.base_layer``)."""
    if "." in key:
        stem, leaf = key.rsplit(".", 1)
        wrapped = f"{stem}.base_layer.{leaf}"
        if wrapped in state:
            return state[wrapped]
    return state[key]


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("heads.") and ".lora_" not in k}


def test_lora_trains_adapters_and_head_only(bulk_model, lora_model):
    before = bulk_model.module.state_dict()
    after = lora_model.module.state_dict()
    for key, value in _backbone(before).items():  # base weights bit-identical
        assert torch.equal(_base_tensor(after, key), value), key
    lora_b = [v for k, v in after.items() if ".lora_B." in k]
    assert lora_b
    assert all(v.abs().sum() > 0 for v in lora_b)
    wrapped = {k.split(".lora_A.")[0] for k in after if ".lora_A." in k}
    assert {"encoder.proj", "transformer.0.q_proj", "transformer.1.ff_out"} <= wrapped
    assert not any(k.startswith("gat.") or "position" in k for k in wrapped)
    for key, value in before.items():  # the bulk head is untouched; the spot head is new
        if key.startswith("heads.bulk."):
            assert torch.equal(after[key], value)
    record = lora_model.config["transfer"]
    n_lora = sum(v.numel() for k, v in after.items() if ".lora_" in k)
    n_head = sum(p.numel() for p in lora_model.module.heads["spot"].parameters())
    assert record["trainable_parameters"] == n_lora + n_head
    # the toy sections have 40 of the cohort's 60 genes: the bulk genes they have are kept, in order
    kept = [g for g in bulk_model.genes if int(g[4:]) < 40]
    assert lora_model.head == "spot"
    assert lora_model.genes == kept
    assert record["mode"] == "lora"
    assert record["source_kind"] == "bulk"
    assert record["n_genes_shared"] == len(kept)
    assert lora_model.config["training"]["samples"] == ["toy0"]
    assert lora_model.best_epoch is not None


@pytest.mark.parametrize("mode", ["head", "full"])
def test_head_and_full_modes_train_what_they_say(bulk_model, toy_sections, mode):

    new = bt.tl.transfer(toy_sections[:1], bulk_model, target="spot", mode=mode, max_epochs=2, progress=False)
    before, after = _backbone(bulk_model.module.state_dict()), _backbone(new.module.state_dict())
    params = {k for k, _ in bulk_model.module.named_parameters() if not k.startswith("heads.")}
    changed = {k for k in params if not torch.equal(before[k], after[k])}
    assert new.peft is None
    if mode == "head":
        assert changed == set()
        assert new.config["transfer"]["trainable_parameters"] == sum(
            p.numel() for p in new.module.heads["spot"].parameters()
        )
    else:
        assert len(changed) > len(params) // 2
        assert list(new.module.heads) == ["spot"]  # the bulk head would be stale on the new backbone
        assert list(new.config["genes"]) == ["spot"]
        assert new.config["transfer"]["trainable_parameters"] == new.config["transfer"]["total_parameters"]


def test_adapter_save_load_gives_identical_predictions(bulk_model, lora_model, toy_sections, tmp_path):
    from bitro.models import BiTro

    bulk_model.save(tmp_path / "base")
    lora_model.save_adapter(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "bitro_adapter.json", "head.safetensors"]
    size = sum((tmp_path / "adapter" / f).stat().st_size for f in files)
    assert size < (tmp_path / "base" / "model.safetensors").stat().st_size / 2
    loaded = BiTro.load(tmp_path / "base", adapter=tmp_path / "adapter")
    assert loaded.active_adapter == "default"
    assert loaded.head == "spot"
    a, b = toy_sections[3], copy.deepcopy(toy_sections[3])
    bt.tl.predict(a, lora_model)
    bt.tl.predict(b, loaded)
    np.testing.assert_array_equal(bt.get.predictions(a).X, bt.get.predictions(b).X)
    with pytest.raises(ValueError, match="save_adapter"):
        lora_model.save(tmp_path / "nope")


def test_adapter_refuses_another_base(lora_model, toy_slides, tmp_path):
    from bitro.models import BiTro

    lora_model.save_adapter(tmp_path / "adapter")
    other = bt.tl.fit(
        toy_slides,
        target="bulk",
        n_genes=20,
        val=None,
        max_epochs=1,
        seed=1,
        progress=False,
    )
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="trained on another base model"):
        BiTro.load(tmp_path / "other", adapter=tmp_path / "adapter")


def test_named_adapters_switch(lora_model, toy_sections):

    sections = toy_sections
    two = bt.tl.transfer(
        sections[2:3], lora_model, target="spot", adapter_name="section2", max_epochs=2, progress=False
    )
    assert list(two.adapters) == ["default", "section2"]
    assert two.active_adapter == "section2"
    test = sections[3]
    bt.tl.predict(test, two, key_added="second", uncertainty=False)
    two.set_adapter("default")
    bt.tl.predict(test, two, key_added="first", uncertainty=False)
    bt.tl.predict(test, lora_model, key_added="original", uncertainty=False)
    np.testing.assert_allclose(test["first_spots"].X, test["original_spots"].X, atol=1e-5)
    assert not np.allclose(test["first_spots"].X, test["second_spots"].X)
    with pytest.raises(KeyError, match="no adapter 'nope'"):
        two.set_adapter("nope")


def test_merge_adapter_keeps_predictions(lora_model, toy_sections, tmp_path):
    from bitro.models import BiTro

    merged = copy.deepcopy(lora_model)
    merged.merge_adapter()
    assert merged.peft is None
    assert not merged.adapters
    test = toy_sections[3]
    bt.tl.predict(test, lora_model, key_added="lora", uncertainty=False)
    bt.tl.predict(test, merged, key_added="merged", uncertainty=False)
    np.testing.assert_allclose(test["lora_spots"].X, test["merged_spots"].X, atol=1e-4)
    merged.save(tmp_path / "merged")
    bt.tl.predict(test, BiTro.load(tmp_path / "merged"), key_added="reloaded", uncertainty=False)
    np.testing.assert_array_equal(test["merged_spots"].X, test["reloaded_spots"].X)


def test_spot_to_bulk_direction(toy_sections, toy_slides):

    spot = bt.tl.fit(toy_sections[:2], n_genes=15, val=None, max_epochs=2, progress=False)
    slides = toy_slides
    bulk = bt.tl.transfer(slides[:3], spot, target="bulk", val=None, max_epochs=2, progress=False)
    assert bulk.head == "bulk"
    assert bulk.config["transfer"]["source_kind"] == "spot"
    assert bulk.genes == spot.genes  # the cohort has every gene of the sections
    bt.tl.predict(slides[3], bulk)
    assert bt.get.predictions(slides[3], level="slide").shape == (1, 15)


def test_transfer_from_stores_equals_transfer_from_the_objects(bulk_model, toy_slides, tmp_path, training_noise):
    """A cohort given as store paths (read one at a time, bags memory-mapped) adapts to the same weights."""
    stores = tmp_path / "cohort"
    for s in toy_slides[:3]:
        s.write(stores / f"{s.attrs['bitro']['sample_id']}.zarr")
    options = {"target": "bulk", "val": None, "max_epochs": 2, "seed": 1, "progress": False}
    from_stores = bt.tl.transfer(stores, bulk_model, **options)  # a folder of stores
    in_memory = bt.tl.transfer(toy_slides[:3], bulk_model, **options)
    assert from_stores.genes == in_memory.genes == bulk_model.genes
    assert from_stores.config["transfer"]["samples"] == in_memory.config["transfer"]["samples"]
    assert len(from_stores.config["transfer"]["samples"]) == 3
    a, b = from_stores.module.state_dict(), in_memory.module.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=training_noise, msg=name)


def test_gene_panel_is_remapped_by_name(bulk_model):
    from bitro.models._lora import mapped_head

    source = bulk_model.module.heads["bulk"]
    genes = [bulk_model.genes[3], "NEWGENE", bulk_model.genes[0]]
    head, n_shared = mapped_head(source, bulk_model.genes, genes, bulk_model.config["architecture"]["hidden"])
    assert n_shared == 2
    w, sw = head.expression.weight.detach(), source.expression.weight.detach()
    assert torch.equal(w[0], sw[3])
    assert torch.equal(w[2], sw[0])
    assert not torch.equal(w[1], sw[1])
    assert torch.equal(head.score.weight, source.score.weight)


def test_transfer_to_a_new_panel_reports_shared_and_new_genes(bulk_model, toy_sections):

    have = list(toy_sections[0]["table"].var_names)
    genes = [g for g in bulk_model.genes if g in have][:5] + [g for g in have if g not in bulk_model.genes][:3]
    new = bt.tl.transfer(
        toy_sections[:1], bulk_model, target="spot", mode="head", genes=genes, max_epochs=1, progress=False
    )
    assert new.genes == genes
    assert new.config["transfer"]["n_genes_shared"] == 5
    assert new.config["transfer"]["n_genes_new"] == 3


def test_bad_transfer_inputs(bulk_model, toy_sections):

    with pytest.raises(ValueError, match=r"'attention' names no linear layer.*q_proj"):
        bt.tl.transfer(toy_sections[:1], bulk_model, target_modules=["attention"], max_epochs=1, progress=False)
    renamed = toy_sections[0]
    renamed["table"].var_names = [f"X{i}" for i in range(renamed["table"].n_vars)]
    with pytest.raises(ValueError, match="share none of the model's 20 genes"):
        bt.tl.transfer([renamed], bulk_model, max_epochs=1, progress=False)
    other = toy_sections[1]
    other["bitro_cells"].uns["bitro_features"]["method"] = "encoder"
    with pytest.raises(ValueError, match="differ from the model's"):
        bt.tl.transfer([other], bulk_model, max_epochs=1, progress=False)


def test_transfer_is_reproducible_with_a_seed(bulk_model, toy_sections, training_noise):

    runs = []
    for _ in range(2):
        new = bt.tl.transfer(toy_sections[:1], bulk_model, target="spot", max_epochs=1, seed=3, progress=False)
        test = copy.deepcopy(toy_sections[3])
        bt.tl.predict(test, new, uncertainty=False)
        runs.append(bt.get.predictions(test).X)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=training_noise)


def test_adapter_keeps_its_bag_settings_and_other_heads_skip_it(bulk_model, toy_sections, toy_slides, tmp_path):
    from bitro.models import BiTro

    new = bt.tl.transfer(toy_sections[:1], bulk_model, data={"context_um": 0.0}, max_epochs=1, progress=False)
    bulk_model.save(tmp_path / "base")
    new.save_adapter(tmp_path / "adapter")
    loaded = BiTro.load(tmp_path / "base", adapter=tmp_path / "adapter")
    assert loaded.config["data"]["context_um"] == 0.0
    assert loaded.config["spots"] == new.config["spots"]
    # the bulk head belongs to the base backbone: it predicts as the base model, adapter off
    a, b = toy_slides[0], copy.deepcopy(toy_slides[0])
    bt.tl.predict(a, loaded, target="bulk", uncertainty=False)
    bt.tl.predict(b, bulk_model, uncertainty=False)
    np.testing.assert_allclose(bt.get.predictions(a).X, bt.get.predictions(b).X, atol=1e-6)


@pytest.mark.parametrize("mode", ["lora", "head"])
def test_transfer_learns_the_target_labels(bulk_model, toy_sections, mode):
    """Trained long enough, the transferred model predicts held-out spots, and training lowered its loss."""

    new = bt.tl.transfer(
        toy_sections[:2],
        bulk_model,
        target="spot",
        mode=mode,
        val=["toy1"],
        max_epochs=15,
        lr=5e-3,
        seed=0,
        progress=False,
    )
    hist = new.history
    assert hist["val_loss"].min() < 0.85 * hist["val_loss"].iloc[0]  # validation loss fell while training
    test = toy_sections[3]
    bt.tl.predict(test, new, uncertainty=False)
    assert bt.tl.evaluate(test).loc["toy3", "pearson_mean"] > 0.2  # held-out spots, same genes


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def _assert_same_state(model, before: dict) -> None:
    after = model.module.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def _edit_json(path, change) -> None:
    import json

    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_failed_adapter_load_leaves_the_model_as_it_was(bulk_model, lora_model, tmp_path):
    """peft injects LoRA layers before it loads their weights: a failed load must not leave them behind."""
    import shutil

    from bitro.models import BiTro

    lora_model.save_adapter(tmp_path / "adapter")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "adapter", bad)
    _edit_json(bad / "adapter_config.json", lambda c: c.update(r=4))  # the rank no longer fits the weights
    _edit_json(bad / "bitro_adapter.json", lambda m: m.pop("files_sha256", None))  # as saved before the digests
    model = copy.deepcopy(bulk_model)
    before = _state(model)
    with pytest.raises(ValueError, match=r"bad: peft could not load the LoRA adapter .*size mismatch"):
        model.load_adapter(bad)
    assert model.peft is None
    assert model.adapters == {}
    _assert_same_state(model, before)
    model.save(tmp_path / "model")  # still a plain model that loads back
    _assert_same_state(BiTro.load(tmp_path / "model"), before)
    # a good adapter afterwards loads as onto a fresh model
    assert model.load_adapter(tmp_path / "adapter") == "default"
    _assert_same_state(model, _state(lora_model))
    # failing as the second adapter leaves the first one as it was
    with_one = _state(model)
    with pytest.raises(ValueError, match="peft could not load"):
        model.load_adapter(bad, name="second")
    assert list(model.adapters) == ["default"]
    assert list(model.peft.peft_config) == ["default"]
    _assert_same_state(model, with_one)


def test_merge_drops_the_heads_of_the_base_backbone(lora_model, toy_slides, bitro_log):
    """After a merge the backbone changed: the bulk head of the bulk base model would predict stale values."""
    merged = copy.deepcopy(lora_model)
    assert "bulk" in merged.module.heads
    merged.merge_adapter()
    assert list(merged.module.heads) == ["spot"]
    assert list(merged.config["genes"]) == list(merged.config["hvg"]) == ["spot"]
    assert merged.base_heads == {}
    assert "['bulk'] head(s) of the source model are dropped" in bitro_log.text
    with pytest.raises(ValueError, match=r"`target`: the model has no 'bulk' head"):
        bt.tl.predict(toy_slides[0], merged, target="bulk")


def test_weights_from_another_save_are_refused(bulk_model, lora_model, tmp_path):
    """Same genes, network and features, other weights: the file is not the one saved with the settings."""
    import shutil

    from bitro.models import BiTro

    other = copy.deepcopy(bulk_model)
    with torch.no_grad():
        next(other.module.parameters()).add_(0.1)
    bulk_model.save(tmp_path / "a")
    other.save(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "mixed")
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "mixed" / "model.safetensors")
    with pytest.raises(ValueError, match=r"mixed/model.safetensors does not belong to .*mixed/config.json"):
        BiTro.load(tmp_path / "mixed")
    # saves made before the digest (and the bundled model) still load
    _edit_json(tmp_path / "b" / "config.json", lambda c: c.pop("weights_sha256"))
    _assert_same_state(BiTro.load(tmp_path / "b"), _state(other))
    assert BiTro.load(bt.models.default_model_path()).head == "spot"
    # adapters: each file is tied to bitro_adapter.json
    second = copy.deepcopy(lora_model)
    with torch.no_grad():
        for name, p in second.module.named_parameters():
            if ".lora_B." in name or name.startswith("heads.spot."):
                p.add_(0.1)
    lora_model.save_adapter(tmp_path / "ad1")
    second.save_adapter(tmp_path / "ad2")
    for f in ("adapter_model.safetensors", "head.safetensors", "adapter_config.json"):
        mixed = tmp_path / f"mixed_{f.split('.')[0]}"
        shutil.copytree(tmp_path / "ad1", mixed)
        if f.endswith(".json"):
            _edit_json(mixed / f, lambda c: c.update(lora_alpha=c["lora_alpha"] * 2))
        else:
            shutil.copyfile(tmp_path / "ad2" / f, mixed / f)
        with pytest.raises(ValueError, match=rf"{mixed.name}/{f} does not belong to .*bitro_adapter.json"):
            BiTro.load(tmp_path / "a", adapter=mixed)


def test_adapter_names_and_damaged_settings_are_refused(bulk_model, lora_model, tmp_path):
    import shutil

    from bitro.models import BiTro

    lora_model.save_adapter(tmp_path / "adapter")
    model = copy.deepcopy(bulk_model)
    before = _state(model)
    for name in ("x.y", "p/q", "a b/c"):
        with pytest.raises(ValueError, match=r"^`name`"):
            model.load_adapter(tmp_path / "adapter", name=name)
    with pytest.raises(ValueError, match=r"^`adapter_name` must not contain '\.'"):
        model.add_lora("x.y")
    assert model.peft is None
    _assert_same_state(model, before)
    for key in ("base_identity", "kind"):
        damaged = tmp_path / f"no_{key}"
        shutil.copytree(tmp_path / "adapter", damaged)
        _edit_json(damaged / "bitro_adapter.json", lambda m, key=key: m.pop(key))
        with pytest.raises(ValueError, match=rf"no_{key}/bitro_adapter.json: the entries \['{key}'\] are missing"):
            model.load_adapter(damaged)
    bulk_model.save(tmp_path / "model")
    _edit_json(tmp_path / "model" / "config.json", lambda c: c.pop("training"))
    with pytest.raises(ValueError, match=r"model/config.json: the entries \['training'\] are missing"):
        BiTro.load(tmp_path / "model")
