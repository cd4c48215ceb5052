"""fit / predict / evaluate / cross_validate / save / load on synthetic tissue with known expression."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_GENES = 30


@pytest.fixture
def sections(toy_sections):
    return toy_sections


@pytest.fixture(scope="session")
def trained(_toy_sections):
    """A spot model trained on toy0-toy2 (validation: toy2), tested on toy3."""
    import bitro as bt

    train = copy.deepcopy(_toy_sections[:3])
    return bt.tl.fit(train, n_genes=N_GENES, val=["toy2"], max_epochs=15, patience=15, seed=0, progress=False)


def test_the_model_repeats_how_its_training_cells_were_made(trained, sections):
    import bitro as bt
    from bitro.tl._preprocess import as_trained, preprocessed_with, preprocessing_settings

    # trained with the default preprocessing asked for (the U-Net), on cells the watershed had made
    assert trained.config["preprocessing"]["segmentation"] == {"method": "watershed"}
    fresh = bt.datasets.toy_st(n_spots=9, n_genes=40, seed=7, sample_id="toy7")
    bt.tl.predict(fresh, trained, uncertainty=False)
    assert fresh.attrs["bitro"]["cells_shapes_key"] == "watershed_boundaries"
    # options given to the steps are recorded too: the assignment's factor, the segmentation's areas
    section = sections[0]
    bt.pp.segment_cells(section, method="watershed", min_area_um2=12.0, n_jobs=1)
    bt.pp.assign_cells(section, factor=1.0)
    done = preprocessed_with(section, kind="spot")
    assert done == {"segmentation": {"method": "watershed", "min_area_um2": 12.0}, "assign": {"factor": 1.0}}
    prep = as_trained(preprocessing_settings(), done)
    assert prep["segmentation"] == {"method": "watershed", "min_area_um2": 12.0}
    assert prep["assign"]["factor"] == 1.0


def test_fit_learns_and_beats_the_mean_baseline(trained, sections):
    import bitro as bt

    hist = trained.history
    assert len(hist) == 15
    assert hist["train_loss"].iloc[-3:].mean() < 0.8 * hist["train_loss"].iloc[0]
    assert trained.best_epoch == int(hist["val_loss"].idxmin())
    assert trained.config["training"]["samples"] == ["toy0", "toy1"]
    assert trained.config["training"]["validation"] == ["toy2"]
    test = sections[3]
    bt.tl.predict(test, trained)
    scores = bt.tl.evaluate(test)
    assert scores.loc["toy3", "pearson_mean"] > 0.3  # toy expression follows the cells' types
    assert scores.loc["toy3", "n_obs"] == 36
    # the mean baseline (each gene's mean over the training spots) ranks nothing; it is beaten on error
    from bitro._expression import gene_columns, log_cp10k

    def observed(sdata):
        table = sdata["table"]
        return log_cp10k(table.X, where="toy", columns=gene_columns(table, trained.genes, where="toy"))

    mean = np.nanmean(np.vstack([observed(s) for s in sections[:2]]), axis=0)
    truth, pred = observed(test), bt.get.predictions(test).X
    ok = np.isfinite(pred).all(axis=1)
    mse_model = np.mean((pred[ok] - truth[ok]) ** 2)
    mse_mean = np.mean((mean - truth[ok]) ** 2)
    assert mse_model < 0.9 * mse_mean


def test_early_stopping_keeps_the_best_validation_weights(sections):
    """Training stops once validation stops improving, and the model returned is the best epoch's."""
    import bitro as bt
    from bitro.models._config import data_settings
    from bitro.models._data import spot_bags

    model = bt.tl.fit(
        [sections[0], sections[2]], n_genes=10, val=["toy2"], max_epochs=80, patience=2, lr=5e-3, seed=0, progress=False
    )
    hist = model.history
    assert len(hist) < 80  # stopped early
    best = int(hist["val_loss"].idxmin())
    assert model.best_epoch == best < len(hist) - 1  # later epochs were worse, and were not kept
    # the returned weights reproduce the best epoch's validation loss, not the last epoch's (computed
    # as the training plan does: pooled standardised output against standardised targets)
    import torch

    from bitro.models._data import BagDataset, collate_bags

    data = data_settings("spot", model.config["data"])
    bags = spot_bags(sections[2], data, genes=model.genes)
    head = model.module.heads["spot"]
    mean, std = head.target_mean.numpy(), head.target_std.numpy()
    items = [(0, b) for b in range(bags.n_bags) if len(bags.seq_cells[b]) and np.isfinite(bags.y[b]).all()]
    targets = [((bags.y[b] - mean) / std).astype(np.float32) for _, b in items]
    dataset = BagDataset([bags], items, targets, max_cells=data["max_cells"], max_tiles=1, train=False, seed=0)
    batch = collate_bags([dataset[i] for i in range(len(dataset))])
    model.module.eval()
    with torch.no_grad():
        loss = float(torch.nn.functional.mse_loss(model.module(batch, "spot"), batch["y"]))
    assert loss == pytest.approx(hist["val_loss"].iloc[best], rel=2e-5)
    assert abs(loss - hist["val_loss"].iloc[best]) < 0.1 * abs(loss - hist["val_loss"].iloc[-1])


def test_predictions_land_in_the_documented_tables(trained, sections):
    import bitro as bt

    test = sections[3]
    bt.tl.predict(test, trained, key_added="pred")
    spots, cells = test["pred_spots"], test["pred_cells"]
    assert test.attrs["bitro"]["pred_spots_key"] == "pred_spots"
    assert test.attrs["bitro"]["pred_cells_key"] == "pred_cells"
    assert spots.shape == (36, N_GENES)
    assert spots.X.dtype == np.float32
    assert list(spots.var_names) == trained.genes == list(cells.var_names)
    # the tables annotate the spots and the cells, linked by region / instance ids
    assert spots.uns["spatialdata_attrs"]["region"] == test.attrs["bitro"]["spots_key"]
    assert (spots.obs["spot_id"].to_numpy() == test["table"].obs["spot_id"].to_numpy()).all()
    assert cells.uns["spatialdata_attrs"]["region"] == test.attrs["bitro"]["cells_shapes_key"]
    assert (cells.obs["cell_id"].to_numpy() == test["bitro_cells"].obs["cell_id"].to_numpy()).all()
    np.testing.assert_allclose(spots.obsm["spatial"], test["table"].obsm["spatial"] * 0.5 + [1500, 800], atol=1e-6)
    assert spots.uns["bitro_pred"]["params"]["target"] == "spot"
    # every cell is predicted: those outside the spots from pseudo-spots; every value is >= 0
    assert np.isfinite(cells.X).all()
    assigned = test["bitro_cells"].obs["spot_id"].notna().to_numpy()
    assert (cells.obs["in_spot"].to_numpy() == assigned).all()
    assert (~assigned).sum() > 0
    assert (spots.X >= 0).all()
    assert (cells.X >= 0).all()
    assert spots.layers["std"].shape == spots.shape
    assert (cells.layers["std"] >= 0).all()
    # a spot's prediction is the weighted mean of its cells' predictions; weights sum to one per spot
    weight = cells.obs["weight"].to_numpy()
    bag = cells.obs["bag"].astype(str).to_numpy()
    for row, name in enumerate(spots.obs_names[:10]):
        members = bag == name
        np.testing.assert_allclose(weight[members].sum(), 1.0, rtol=1e-5)
        manual = (weight[members, None] * cells.X[members]).sum(0)
        np.testing.assert_allclose(manual, spots.X[row], rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_gives_identical_predictions(trained, sections, tmp_path):
    import bitro as bt
    from bitro.models import BiTro

    trained.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = BiTro.load(tmp_path / "m")
    assert loaded.genes == trained.genes
    assert loaded.best_epoch == trained.best_epoch
    assert len(loaded.history) == len(trained.history)
    a, b = copy.deepcopy(sections[3]), sections[3]
    bt.tl.predict(a, trained)
    bt.tl.predict(b, loaded)
    for level in ("spots", "cells"):
        np.testing.assert_array_equal(bt.get.predictions(a, level=level).X, bt.get.predictions(b, level=level).X)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "m")


def test_load_refuses_other_versions_and_other_genes(trained, tmp_path):
    from bitro.models import BiTro

    trained.save(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, format=99)))
    with pytest.raises(ValueError, match="format 99"):
        BiTro.load(tmp_path / "m")
    edited = json.loads(json.dumps(config))
    edited["genes"]["spot"] = edited["genes"]["spot"][:-2]
    config_path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="config.json does not belong to .*model.safetensors"):
        BiTro.load(tmp_path / "m")
    # renamed genes, same count: the outputs would silently carry other names
    edited["genes"]["spot"] = [*config["genes"]["spot"][:-1], "NOT_A_GENE"]
    config_path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="does not belong"):
        BiTro.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a saved BiTro model"):
        BiTro.load(tmp_path / "nothing")


def test_evaluate_writes_per_gene_pearson(trained, sections):
    import bitro as bt

    test = sections[3]
    bt.tl.predict(test, trained)
    bt.tl.evaluate(test, genes=trained.genes[:5])
    pred = bt.get.predictions(test)
    var = pred.var
    assert np.isfinite(var.loc[trained.genes[:5], "bitro_pearson"]).all()
    assert var["bitro_pearson"].isna().sum() == var.shape[0] - 5
    truth = bt.get.observed_df(test, trained.genes[0]).to_numpy()[:, 0]
    r = np.corrcoef(truth, pred.X[:, 0])[0, 1]
    assert var.loc[trained.genes[0], "bitro_pearson"] == pytest.approx(r, abs=1e-6)
    assert pred.uns["bitro_eval"]["n_obs"] == 36
    with pytest.raises(KeyError, match="were not predicted"):
        bt.tl.evaluate(test, genes=["nope"])
    with pytest.raises(KeyError, match="run bt.tl.predict first"):
        bt.tl.evaluate(test, key="other")
    # refused before anything is written: the scores above stay
    with pytest.raises(ValueError, match="`genes`: give at least one gene"):
        bt.tl.evaluate(test, genes=[])
    with pytest.raises(ValueError, match=r"lists samples \['toy3'\] more than once"):
        bt.tl.evaluate([test, test])
    assert np.isfinite(bt.get.predictions(test).var.loc[trained.genes[:5], "bitro_pearson"]).all()


def test_requested_genes_missing_from_the_data(sections):
    import bitro as bt

    with pytest.raises(KeyError, match=r"2 of 3 genes are not in the data \(e.g. \['FOO', 'BAR'\]\)"):
        bt.tl.fit(sections[:2], genes=["gene0001", "FOO", "BAR"], max_epochs=1, progress=False)


@pytest.mark.parametrize(("value", "match"), [(np.nan, "contain NaN"), (-1.0, "negative values")])
def test_bad_counts_are_refused(sections, value, match):
    import bitro as bt

    table = sections[0]["table"]
    x = np.asarray(table.X.todense() if hasattr(table.X, "todense") else table.X, dtype=float)
    x[0, 0] = value
    table.X = x
    with pytest.raises(ValueError, match=match):
        bt.tl.fit(sections[:2], n_genes=5, max_epochs=1, progress=False)


def test_single_section_validates_on_spatial_blocks(sections, bitro_log):
    import bitro as bt

    model = bt.tl.fit(sections[0], n_genes=10, max_epochs=2, progress=False)
    assert "spatially blocked spots" in bitro_log.text
    assert model.config["training"]["validation"] == "spatial blocks"
    assert model.config["training"]["n_val_bags"] > 0
    assert np.isfinite(model.history["val_loss"]).all()


def test_cross_validation_on_one_training_patient_scores_its_validation_blocks(sections):
    import bitro as bt

    # each fold trains on one section: it validates on held-out spatial blocks, and is scored on them
    cv = bt.tl.cross_validate(sections[:2], n_genes=10, max_epochs=1, progress=False)
    val = cv.loc[cv["method"] == "bitro", "val_pearson_hvg_mean"]
    assert len(val) == 2
    assert val.notna().all()
    assert cv.loc[cv["method"] != "bitro", "val_pearson_hvg_mean"].isna().all()


def test_spot_without_cells_is_nan_and_reported(trained, sections, bitro_log):
    import bitro as bt

    test = sections[3]
    cells = test["bitro_cells"]
    first = test["table"].obs["spot_id"].astype(str).iloc[0]
    gone = (cells.obs["spot_id"].astype("string") == first).fillna(False).to_numpy()
    assert gone.any()
    cells.obs["spot_id"] = cells.obs["spot_id"].astype("string").where(~gone)
    with bitro_log.at_level(logging.WARNING, logger="bitro"):
        bt.tl.predict(test, trained)
    pred = bt.get.predictions(test)
    assert np.isnan(pred.X[0]).all()
    assert np.isfinite(pred.X[1:]).all()
    assert "1 of 36 spots have no cell" in bitro_log.text
    assert pred.uns["bitro_pred"]["params"]["n_bags_without_cells"] == 1
    # the spot's former cells are still predicted (from pseudo-spots)
    assert np.isfinite(bt.get.predictions(test, level="cells").X[gone]).all()
    # no spot with a prediction at all: evaluating scores nothing, and says so at the default verbosity
    cells.obs["spot_id"] = pd.Series(pd.NA, index=cells.obs.index, dtype="string")
    with bitro_log.at_level(logging.WARNING, logger="bitro"):
        bt.tl.predict(test, trained, uncertainty=False)
        assert bt.tl.evaluate(test, spatial=False).loc["toy3", "n_obs"] == 0
    assert "no spot has a prediction" in bitro_log.text


def test_other_pixel_size_is_refused(trained, sections):
    import bitro as bt

    test = sections[3]
    test["bitro_cells"].uns["bitro_features"]["params"]["mpp"] = 2.0  # trained at 0.5 µm/px
    with pytest.raises(ValueError, match=r"measured at 2 µm/px but the model was trained at 0.5 µm/px"):
        bt.tl.predict(test, trained)


def test_features_of_another_kind_are_refused(trained, sections):
    import bitro as bt

    test = sections[3]
    test["bitro_cells"].uns["bitro_features"]["method"] = "encoder"
    with pytest.raises(ValueError, match="differ from the model's"):
        bt.tl.predict(test, trained)


def test_he_only_image_gets_pseudo_spots(trained, toy_slides):
    """A slide with no spots and no expression: predictions on a grid of pseudo-spots and per cell."""
    import bitro as bt

    slide = toy_slides[0]
    del slide.tables["table"]
    bt.tl.predict(slide, trained)
    info = slide.attrs["bitro"]
    table = slide[info["pseudo_spots_table_key"]]
    assert info["spots_key"].endswith("_pseudo_spots")
    assert table.n_vars == 0
    assert info["table_key"] not in slide.tables  # no measured expression: none is made up
    pred = bt.get.predictions(slide)
    assert pred.shape == (table.n_obs, N_GENES)
    assert table.n_obs > 5
    assert np.isfinite(pred.X).all()  # pseudo-spots are only laid where cells are
    radius = slide[info["spots_key"]]["radius"].iloc[0]
    assert radius == pytest.approx(trained.config["spots"]["radius_um"])
    # a cohort slide keeps its bulk profile as its expression: it still trains a bulk model after predict
    other = toy_slides[1]
    bt.tl.predict(other, trained, uncertainty=False)
    assert other.attrs["bitro"]["table_key"] == "table"
    assert other["table"].n_obs == 1
    from bitro.models._data import expression_table

    assert expression_table(other, "bulk")[1] == "table"


def test_bulk_fit_and_slide_prediction(toy_slides):
    import bitro as bt

    slides = toy_slides
    model = bt.tl.fit(slides[:3], target="bulk", n_genes=20, val=None, max_epochs=3, progress=False)
    assert model.head == "bulk"
    assert model.config["training"]["validation"] == []
    for s in slides:
        bt.tl.predict(s, model)
    slide = bt.get.predictions(slides[3], level="slide")
    assert slide.shape == (1, 20)
    assert slides[3].attrs["bitro"]["pred_spots_key"] == "bitro_pred_slide"
    assert slide.uns["spatialdata_attrs"]["region"] == slides[3].attrs["bitro"]["tissue_key"]
    cells = bt.get.predictions(slides[3], level="cells")
    assert np.isfinite(cells.X).all()  # every cell of a slide is in its bag
    assert cells.obs["weight"].sum() == pytest.approx(1.0, rel=1e-5)
    scores = bt.tl.evaluate(slides)
    assert scores.index.tolist() == ["cohort"]
    assert scores.loc["cohort", "n_obs"] == 4
    with pytest.raises(ValueError, match="at least 3 slides"):
        bt.tl.evaluate(slides[:2])


def test_bulk_fit_from_stores_trains_the_same_model_one_slide_at_a_time(
    toy_slides, tmp_path, monkeypatch, training_noise
):
    import tempfile

    import torch

    import bitro as bt

    stores = []
    for s in toy_slides[:3]:
        stores.append(tmp_path / f"{s.attrs['bitro']['sample_id']}.zarr")
        s.write(stores[-1])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the bags are spilled
    (tmp_path / "tmp").mkdir()
    from bitro.models._spill import BagSpill

    spilled = []
    add = BagSpill.add
    monkeypatch.setattr(BagSpill, "add", lambda self, bags: spilled.append(bags.sample_id) or add(self, bags))
    options = {"target": "bulk", "n_genes": 20, "val": None, "max_epochs": 2, "progress": False}
    from_stores = bt.tl.fit(stores, **options)
    assert len(spilled) == 3  # each store's bags went to disk
    in_memory = bt.tl.fit(toy_slides[:3], **options)
    assert from_stores.genes == in_memory.genes
    assert from_stores.config["training"]["samples"] == in_memory.config["training"]["samples"]
    for (name, a), b in zip(
        from_stores.module.state_dict().items(), in_memory.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=training_noise, msg=name)
    assert list((tmp_path / "tmp").glob("bitro-bags-*")) == []  # the spilled bags are gone
    # the graph each store lacked was built and written into it
    cells = bt.io.read_zarr(stores[0])["bitro_cells"]
    assert "bitro_graph_connectivities" in cells.obsp


def test_spilled_bags_read_back_equal_from_one_mapped_file(toy_slides, tmp_path):
    import os

    import bitro as bt
    from bitro.models._config import data_settings
    from bitro.models._data import slide_bags
    from bitro.models._spill import BagSpill

    bt.pp.cell_graph(toy_slides[0], within="all")
    bags = slide_bags(toy_slides[0], data_settings("bulk", None))
    spill = BagSpill(tmp_path / "bags.bin")
    for _ in range(40):  # a cohort of 40 slides
        spill.add(bags)
    assert not (tmp_path / "bags.bin").exists()  # unlinked at once: a killed run leaves no file behind
    fds = len(os.listdir("/proc/self/fd"))
    back = spill.open()
    assert len(os.listdir("/proc/self/fd")) <= fds + 1  # one descriptor for the cohort, not one per array
    assert len(back) == 40
    b = back[-1]
    assert isinstance(b.x.base, np.memmap) or isinstance(b.x, np.memmap)  # read from the file, not a copy
    np.testing.assert_array_equal(b.x, bags.x)
    np.testing.assert_array_equal(b.xy, bags.xy)
    np.testing.assert_array_equal(b.cell_index, bags.cell_index)
    assert (b.graph != bags.graph).nnz == 0
    assert len(b.seq_cells) == len(bags.seq_cells)
    for got, want in zip(b.seq_cells + b.seq_context, bags.seq_cells + bags.seq_context, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (b.sample_id, b.n_bags) == (bags.sample_id, bags.n_bags)


def test_feature_statistics_by_chunks_equal_numpy_over_all_cells():
    from types import SimpleNamespace

    from bitro.models._training import TrainingData

    rng = np.random.default_rng(0)
    xs = [rng.normal(3, 2, (n, 4)).astype(np.float32) for n in (50, 31, 7)]
    xs[0][::3, 1] = np.nan  # missing values are left out
    xs[0][:, 2] = xs[1][:, 2] = 5.0  # constant
    xs[0][:, 3] = xs[1][:, 3] = np.nan  # all missing in the training samples
    td = TrainingData.__new__(TrainingData)
    td.sections = [SimpleNamespace(x=x) for x in xs]
    td.train_items = [(0, 0), (1, 0), (1, 1)]  # the third sample is not a training sample
    mean, std = td.feature_stats(chunk=8)
    both = np.concatenate(xs[:2]).astype(np.float64)
    np.testing.assert_allclose(mean[:3], np.nanmean(both[:, :3], axis=0), rtol=1e-12)
    np.testing.assert_allclose(std[:2], np.nanstd(both[:, :2], axis=0), rtol=1e-10)
    assert std[2] == 1.0  # constant: 1
    assert (mean[3], std[3]) == (0.0, 1.0)  # all missing: 0 and 1


def test_fit_names_a_path_that_is_not_a_store(tmp_path):
    import bitro as bt

    (tmp_path / "nothing.zarr").mkdir()
    with pytest.raises(ValueError, match=r"`sdatas\[0\]`: .*nothing.zarr is not a zarr store .*nor a folder of them"):
        bt.tl.fit([tmp_path / "nothing.zarr"], target="bulk")
    with pytest.raises(FileNotFoundError, match=r"`sdatas\[0\]`: .*none.zarr does not exist"):
        bt.tl.fit(tmp_path / "none.zarr", target="bulk")


def test_cross_validate_reports_model_and_baselines_on_the_same_folds(sections):
    import bitro as bt
    from bitro.models._config import data_settings
    from bitro.models._data import spot_bags
    from bitro.tl._genes import select_genes
    from bitro.tl._metrics import pearson_per_gene

    cv, models = bt.tl.cross_validate(sections[:3], n_genes=10, max_epochs=2, progress=False, return_models=True)
    by_id = {s.attrs["bitro"]["sample_id"]: s for s in sections[:3]}
    for fold, model in enumerate(models):  # the protocol, checked on what each fold's model recorded
        test = set(cv.loc[cv["fold"] == fold, "test"])
        train, val = model.config["training"]["samples"], model.config["training"]["validation"] or []
        assert train
        assert not (set(train) | set(val)) & test  # never saw its test section
        assert set(train) | set(val) | test == set(by_id)
        # genes and target scaling from the training samples only (not validation, not test)
        assert model.hvg == select_genes([by_id[i]["table"] for i in train], n_genes=10, batch=train)
        data = data_settings("spot", model.config["data"])
        y = np.vstack([spot_bags(by_id[i], data, genes=model.genes).y for i in train])
        target_mean = model.module.heads["spot"].target_mean.numpy()
        np.testing.assert_allclose(target_mean, np.nanmean(y, axis=0), rtol=1e-5, atol=1e-6)
        # the score to choose settings by comes from the validation section, never the test section
        val_score = cv.loc[(cv["fold"] == fold) & (cv["method"] == "bitro"), "val_pearson_hvg_mean"]
        assert val_score.notna().all() == bool(val)
        if val:
            bags = spot_bags(by_id[val[0]], data, genes=model.genes)
            r = pd.Series(pearson_per_gene(bags.y, model.predict_bags(bags)[0]), index=model.genes)
            assert val_score.iloc[0] == pytest.approx(r[model.hvg[:50]].mean(), abs=1e-6)
    # BiTro and the baselines are scored on the same spots of each test section
    assert (cv.groupby(["fold", "test"])["n_obs"].nunique() == 1).all()
    assert sorted(cv["method"].unique()) == ["bitro", "mean", "ridge"]
    assert len(cv) == 9
    assert sorted(cv["test"].unique()) == ["toy0", "toy1", "toy2"]
    assert (cv["n_train"] == 2).all()
    assert (cv.loc[cv["method"] == "mean", "pearson_mean"] == 0).all()
    per_gene = pd.DataFrame(cv.attrs["per_gene"])
    assert list(per_gene.columns) == ["bitro", "ridge", "mean"]
    assert len(per_gene) >= 10  # each fold selects its own 10 genes from its training sections
    assert len(pd.concat([cv, cv])) == 18  # attrs do not break concatenation
    assert "grouped by sample" in cv.attrs["protocol"]
    assert "genes: 10 most variable of each fold's training data" in cv.attrs["protocol"]
    from bitro.tl._cv import _gene_choice

    assert _gene_choice({"genes": ["gene0001", "gene0002"], "n_genes": 50}) == "the 2 given"


def test_cross_validate_from_stores_scores_what_the_objects_score(sections, tmp_path, monkeypatch, training_noise):
    """Stores are read one at a time, once per fold; the folds, models and scores are those of the objects."""
    import bitro as bt
    import bitro.io

    reads = []
    read_zarr = bitro.io.read_zarr

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return read_zarr(path, *args, **kwargs)

    monkeypatch.setattr(bitro.io, "read_zarr", counted)

    stores = [tmp_path / f"toy{i}.zarr" for i in range(2)]
    for s, path in zip(sections[:2], stores, strict=True):
        for key in list(s["bitro_cells"].obsp):  # a step the stores lack (the objects too, for the same scores)
            del s["bitro_cells"].obsp[key]
        s.write(path)
    options = {"n_genes": 10, "max_epochs": 1, "progress": False}
    from_stores = bt.tl.cross_validate(stores, **options)
    # one pass to find ids and groups, then per fold the training store once (training, validation score and
    # ridge all use the bags cut then) and the test store once
    assert sorted(reads) == ["toy0.zarr"] * 3 + ["toy1.zarr"] * 3
    in_memory = bt.tl.cross_validate(sections[:2], **options)
    assert from_stores.attrs["protocol"] == in_memory.attrs["protocol"]
    columns = ["fold", "test", "method", "n_obs", "pearson_mean", "val_pearson_hvg_mean"]
    pd.testing.assert_frame_equal(from_stores[columns], in_memory[columns])
    assert len(from_stores) == 6  # 2 folds x (BiTro, ridge, mean)
    # the steps a store lacked (the cell graph) were written into it, crash-safely, by the first pass
    assert "bitro_graph_connectivities" in bt.io.read_zarr(stores[0])["bitro_cells"].obsp


def test_samples_must_share_their_features(sections):
    import bitro as bt

    sections[1]["bitro_cells"].uns["bitro_features"]["method"] = "encoder"
    with pytest.raises(ValueError, match="toy1: the cells' features .* differ from the model's"):
        bt.tl.fit(sections[:2], n_genes=5, max_epochs=1, progress=False)


def test_custom_assignment_column_is_used(sections):
    import bitro as bt

    for s in sections[:2]:
        bt.pp.assign_cells(s, key_added="my_spot")
        del s["bitro_cells"].obs["spot_id"]
    model = bt.tl.fit(sections[:2], n_genes=5, val=None, max_epochs=1, progress=False)
    assert model.config["training"]["n_train_bags"] == 72


def test_ddp_on_two_cpu_processes_trains_as_well_as_one(trained, sections):
    """Lightning DDP (2 forked CPU processes, gloo): the caller gets the best weights and the history back.

    Forked from a pytest worker where other fits ran: it hung there (forever) while choosing genes left
    torch's OpenMP runtime on numba's thread count (see ``test_numba_steps_keep_torchs_thread_count``).
    """
    import bitro as bt

    ddp = bt.tl.fit(
        copy.deepcopy(sections[:3]),
        n_genes=N_GENES,
        val=["toy2"],
        max_epochs=15,
        patience=15,
        seed=0,
        progress=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
    )
    assert ddp.genes == trained.genes
    hist = ddp.history
    assert len(hist) == 15
    assert hist[["train_loss", "val_loss"]].notna().all().all()
    assert ddp.best_epoch == int(hist["val_loss"].idxmin())
    assert ddp.config["training"]["best_val_loss"] == pytest.approx(hist["val_loss"].min())
    scores = {}
    for name, model in (("one", trained), ("ddp", ddp)):
        test = copy.deepcopy(sections[3])
        bt.tl.predict(test, model, uncertainty=False)
        scores[name] = bt.tl.evaluate(test).loc["toy3", "pearson_mean"]
    assert scores["ddp"] > 0.3
    assert abs(scores["ddp"] - scores["one"]) < 0.1, scores


@pytest.mark.parametrize(("strategy", "inside"), [("ddp_spawn", "file_system"), ("ddp_fork", None)])
def test_spawned_training_processes_get_tensors_through_files(strategy, inside):
    """``strategy="ddp_spawn"`` starts: the trainer reaches its spawned processes through shared files.

    With torch's default file-descriptor sharing, starting them failed ("bad value(s) in fds_to_keep").
    Checked on the Trainer alone (a spawned fit re-imports bitro and Lightning in each process, ~15 s).
    """
    import lightning as L
    import torch.multiprocessing as mp

    from bitro.models._training import _spawn_sharing

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False)
    before = mp.get_sharing_strategy()  # "file_descriptor" on Linux
    with _spawn_sharing(trainer):
        assert mp.get_sharing_strategy() == (inside or before)
    assert mp.get_sharing_strategy() == before


def test_spot_circles_without_their_table_get_pseudo_spots(trained, sections):
    """A section whose expression table is gone (an H&E image with its old spot grid): predicted like an image."""
    import bitro as bt

    test = sections[3]
    del test.tables["table"]
    bt.tl.predict(test, trained, uncertainty=False)
    info = test.attrs["bitro"]
    assert info["spots_key"].endswith("_pseudo_spots")
    cells = bt.get.predictions(test, level="cells")
    assert np.isfinite(cells.X).all()
    assert cells.obs["bag"].str.startswith("pseudo").all()  # no cell is pooled into a spot without a table


def test_prediction_prefix_never_replaces_another_table(toy_st):
    import bitro as bt
    from bitro import _constants as K

    n_true = toy_st["true_cells"].n_obs
    for prefix in ("bitro", "true"):  # -> bitro_cells (the cells table), true_cells (the toy's true cells)
        with pytest.raises(ValueError, match=f"`key_added`: the prediction table '{prefix}_cells' would replace"):
            bt.tl.predict(toy_st, key_added=prefix)
    assert toy_st["true_cells"].n_obs == n_true
    assert K.CELLS_TABLE_KEY not in toy_st.tables  # failed before any step ran


def test_duplicated_gene_and_spot_names_get_errors_that_name_them(toy_sections):
    import anndata as ad

    import bitro as bt
    from bitro._expression import gene_columns

    table = ad.AnnData(
        np.ones((2, 3)), var=pd.DataFrame({"gene_name": ["CD99", "CD99", "TP53"]}, index=["E1", "E2", "E3"])
    )
    assert list(gene_columns(table, ["TP53", "E1"], where="x")) == [2, 0]  # a unique symbol, an id
    with pytest.raises(
        ValueError, match=r"x: 1 gene symbols name several genes of the data \({'CD99': \['E1', 'E2'\]}\)"
    ):
        gene_columns(table, ["CD99"], where="x")
    sections = toy_sections[:2]
    names = sections[0]["table"].var_names.to_list()
    sections[0]["table"].var_names = [names[1], *names[1:]]
    with pytest.raises(ValueError, match=r"sample 'toy0': the gene names \(var_names\) are not unique"):
        bt.tl.fit(sections, n_genes=5, val=None, max_epochs=1, progress=False)
    sections = toy_sections[2:]
    ids = sections[0]["table"].obs["spot_id"].to_numpy().copy()
    ids[1] = ids[0]
    sections[0]["table"].obs["spot_id"] = ids
    with pytest.raises(ValueError, match="section 'toy2': table 'table' names a spot in more than one row"):
        bt.tl.fit(sections, n_genes=5, val=None, max_epochs=1, progress=False)


def test_names_as_strings_and_arrays_and_inputs_without_what_the_target_needs(toy_sections, toy_cohort):
    import scipy.sparse as sp

    import bitro as bt
    from bitro import _constants as K

    sections = toy_sections[:3]
    gene = sections[0]["table"].var_names[0]
    model = bt.tl.fit(sections, genes=gene, val=np.array(["toy2"]), max_epochs=1, seed=0, progress=False)
    assert model.config["genes"]["spot"] == [gene]  # a string is one gene, never its characters
    assert model.config["training"]["validation"] == ["toy2"]
    with pytest.raises(ValueError, match=r"`val` lists names more than once: \['toy2'\]"):
        bt.tl.fit(sections, genes=gene, val=["toy2", "toy2"], max_epochs=1, progress=False)
    test = toy_sections[3]
    bt.tl.predict(test, model, uncertainty=False)
    assert bt.tl.evaluate(test, genes=gene, spatial=False)["n_obs"].iloc[0] > 0
    test["table"].X = sp.csr_matrix(test["table"].X.shape)  # a section without counts
    with pytest.raises(ValueError, match="toy3: table 'table' has no counts to score against"):
        bt.tl.evaluate(test, spatial=False)
    slides = toy_cohort[0][:2]
    with pytest.raises(ValueError, match="no spots .* for target='spot'; a whole slide with bulk expression"):
        bt.tl.fit(slides, target="spot", val=None, max_epochs=1, progress=False)
    assert K.CELLS_TABLE_KEY not in slides[0].tables  # refused before segmenting


def test_features_measured_on_some_samples_are_measured_on_the_others(toy_sections):
    import bitro as bt
    from bitro import _constants as K

    # as in the own-data tutorial: `bitro features` (morphology) on one store, none on the others; the
    # default preprocessing (morphology + encoder) would differ and stop the training at that store
    sections = toy_sections[:3]
    for s in (sections[0], sections[2]):
        cells = s[K.CELLS_TABLE_KEY]
        del cells.obsm[s.attrs["bitro"][K.ATTR_FEATURES]]
        del s.attrs["bitro"][K.ATTR_FEATURES]
    model = bt.tl.fit(sections, n_genes=10, val=["toy2"], max_epochs=1, progress=False)
    assert model.config["features"]["method"] == "morphology"
    assert model.config["preprocessing"]["features"] == {"method": "morphology"}


def test_samples_without_a_patient_are_not_one_patient(toy_sections):
    import bitro as bt

    with pytest.raises(ValueError, match=r"`groups` has no patient for samples \[1, 2\]"):
        bt.tl.fit(toy_sections[:3], groups=["p1", None, float("nan")], max_epochs=1, progress=False)
    for call in (bt.tl.fit, bt.tl.cross_validate):  # a string is not split into one patient per character
        with pytest.raises(TypeError, match=r"`groups` must be one patient per sample \(a list\), got the string"):
            call(toy_sections[:3], groups="P1P", max_epochs=1, progress=False)


def test_model_folders_paths_and_tables_are_taken_as_users_give_them(toy_sections, tmp_path, monkeypatch):
    import bitro as bt
    from bitro import _constants as K

    monkeypatch.setenv("HOME", str(tmp_path))
    model = bt.tl.fit(toy_sections[:2], n_genes=5, val=None, max_epochs=1, seed=0, progress=False)
    model.save("~/m")  # saved under the home folder, and loaded from the same words
    assert bt.models.BiTro.load("~/m").genes == model.genes
    with pytest.raises(FileExistsError, match="already exists"):
        model.save("~/m")
    spots = bt.tl.transfer(toy_sections[2:3], tmp_path / "m", mode="head", max_epochs=1, seed=0, progress=False)
    assert spots.genes == model.genes  # a saved model's folder, as bt.tl.predict takes
    test = toy_sections[3]
    bt.tl.predict(test, spots, uncertainty=False)
    with pytest.raises(ValueError, match="`key`: 'table' holds the data \\(counts or cells\\), not predictions"):
        bt.get.predictions(test, key="table")
    with pytest.raises(ValueError, match="holds spot \\(or slide\\) predictions; pass its cells table"):
        bt.get.predictions(test, level="cells", key=f"{K.PRED_KEY}_spots")
    with pytest.raises(FileNotFoundError, match="its folder .*nodir does not exist"):
        bt.pl.spatial_prediction(test, spots.genes[0], save=tmp_path / "nodir" / "x.png", show=False)


NUMBA_USERS = {
    "genes": (  # scanpy's residual variances, when fit chooses genes
        "import bitro as bt\n"
        "from bitro.tl._genes import select_genes\n"
        "tables = [bt.datasets.toy_st(n_spots=9, n_genes=40, seed=i)['table'] for i in range(2)]\n"
        "select_genes(tables, n_genes=5, batch=['a', 'b'])\n"
    ),
    "moran": (  # squidpy's Moran's I, in evaluate
        "import numpy as np\n"
        "from bitro.tl._evaluate import morans_i\n"
        "rng = np.random.default_rng(0)\n"
        "morans_i(rng.random((50, 3)), rng.random((50, 2)) * 100, ['a', 'b', 'c'])\n"
    ),
}


def test_numba_steps_keep_torchs_thread_count():
    """numba's OpenMP layer set torch's threads (one libgomp) to numba's; a later ddp_fork then hung."""
    import os
    import subprocess
    import sys

    # both steps in one fresh process (torch and scanpy import once: ~10 s each time), threads printed after each
    code = "import torch\n" + "".join(f"{c}print({s!r}, torch.get_num_threads())\n" for s, c in NUMBA_USERS.items())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    threads = {row[0]: row[1] for row in rows if len(row) == 2 and row[0] in NUMBA_USERS}
    assert threads == dict.fromkeys(NUMBA_USERS, "1")  # the first step that changed them is the one at fault
