"""Prediction plots: spots (observed vs predicted), cells, per-gene scores, training history, and the
show / save / return contract every ``bt.pl`` plot follows (``MPLBACKEND=agg``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bitro import _constants as K
from bitro._docs import inject_docs
from bitro.pl import cell_expression, gene_scores, segmentation, spatial_prediction, training_history

PRED_GENES = ["gene0007", "gene0002", "gene0011", "gene0005"]
"""Predicted genes, deliberately not in ``var`` order."""
NAN_SPOTS = [0, 4, 9]
REGION = (1550.0, 850.0, 1700.0, 1000.0)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _log_cp10k(table, genes) -> np.ndarray:
    counts = table.X.toarray() if hasattr(table.X, "toarray") else np.asarray(table.X)
    counts = counts.astype(float)
    scaled = counts / counts.sum(axis=1, keepdims=True) * 1e4
    return np.log1p(scaled[:, table.var_names.get_indexer(genes)])


SPOTS, CELLS = f"{K.PRED_KEY}_spots", f"{K.PRED_KEY}_cells"


def _write_predictions(sdata, level: str, values: np.ndarray, genes) -> None:
    """As ``bt.tl.predict`` writes them: a table annotating the spots (or cells), genes as var_names."""
    import anndata as ad
    from spatialdata.models import TableModel

    source = sdata.tables[K.TABLE_KEY if level == "spots" else K.CELLS_TABLE_KEY]
    attrs = source.uns["spatialdata_attrs"]
    obs = source.obs[[attrs["region_key"], attrs["instance_key"]]].copy()
    table = ad.AnnData(np.asarray(values, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))
    name = SPOTS if level == "spots" else CELLS
    sdata.tables[name] = TableModel.parse(
        table, region=attrs["region"], region_key=attrs["region_key"], instance_key=attrs["instance_key"]
    )
    sdata.attrs[K.ATTRS_KEY][K.ATTR_PRED_SPOTS if level == "spots" else K.ATTR_PRED_CELLS] = name


@pytest.fixture
def predicted(toy_cells):
    """Toy section with spot predictions (observed + noise, NaN rows) and random cell predictions (NaN rows)."""
    rng = np.random.default_rng(0)
    spots = toy_cells.tables[K.TABLE_KEY]
    spot_pred = _log_cp10k(spots, PRED_GENES) + rng.normal(0, 0.3, (spots.n_obs, len(PRED_GENES)))
    spot_pred[NAN_SPOTS] = np.nan
    _write_predictions(toy_cells, "spots", spot_pred, PRED_GENES)
    cells = toy_cells.tables[K.CELLS_TABLE_KEY]
    cell_pred = rng.gamma(2.0, 1.0, (cells.n_obs, len(PRED_GENES)))
    cell_pred[rng.random(cells.n_obs) < 0.2] = np.nan
    _write_predictions(toy_cells, "cells", cell_pred, PRED_GENES)
    return toy_cells


def _collections(ax):
    from matplotlib.collections import PatchCollection, PolyCollection

    return [c for c in ax.collections if isinstance(c, PatchCollection | PolyCollection)]


def _is_hollow(collection) -> bool:
    face = collection.get_facecolor()
    return len(face) == 0 or bool(np.all(face[:, 3] == 0))


# --- helper --------------------------------------------------------------------------------------


def test_plots_after_a_zarr_round_trip(predicted, tmp_path):
    import spatialdata as sd

    info = predicted.attrs[K.ATTRS_KEY]
    shapes = {key: predicted.shapes[key] for key in (info[K.ATTR_SPOTS], info[K.ATTR_CELLS_SHAPES])}
    tables = {key: predicted.tables[key] for key in (K.TABLE_KEY, K.CELLS_TABLE_KEY, SPOTS, CELLS)}
    small = sd.SpatialData(shapes=shapes, tables=tables)  # no image: a quick write
    small.attrs[K.ATTRS_KEY] = dict(info)
    small.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    assert back.attrs[K.ATTRS_KEY][K.ATTR_SPOTS] == info[K.ATTR_SPOTS]
    assert list(back.tables[SPOTS].var_names) == PRED_GENES
    assert list(back.tables[CELLS].var_names) == PRED_GENES
    _, pred_ax = spatial_prediction(back, "gene0005", image=False)
    assert len(_collections(pred_ax)) == 2
    ax = cell_expression(back, "gene0005", crop=REGION)
    assert len(_collections(ax)) == 2
    assert not ax.images


# --- spots ---------------------------------------------------------------------------------------


def test_spatial_prediction_panels_r_and_nan(predicted, tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    genes = ["gene0002", "gene0005"]
    path = tmp_path / "spots.png"
    fig = spatial_prediction(predicted, genes, save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 10_000
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    colorbars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(panels) == 4
    assert len(colorbars) == 2  # one shared scale per gene

    table = predicted.tables[K.TABLE_KEY]
    observed = _log_cp10k(table, genes)
    pred = predicted.tables[SPOTS].X[:, [PRED_GENES.index(g) for g in genes]]
    finite = np.isfinite(pred[:, 0])
    for g, gene in enumerate(genes):
        obs_ax, pred_ax = panels[2 * g], panels[2 * g + 1]
        assert obs_ax.get_title() == f"{gene} observed"
        r = np.corrcoef(observed[finite, g], pred[finite, g])[0, 1]
        assert pred_ax.get_title() == f"{gene} predicted (r = {r:.2f})"
        assert len([a for a in pred_ax.get_children() if isinstance(a, AxesImage)]) == 1
        # observed: every spot coloured
        (obs_spots,) = _collections(obs_ax)
        assert len(obs_spots.get_paths()) == table.n_obs
        np.testing.assert_allclose(obs_spots.get_array(), observed[:, g], rtol=1e-6)  # float32 log_cp10k
        # predicted: only finite spots are coloured, NaN spots are a separate hollow collection
        coloured, hollow = _collections(pred_ax)
        assert len(coloured.get_paths()) == table.n_obs - len(NAN_SPOTS)
        assert np.isfinite(coloured.get_array()).all()
        np.testing.assert_allclose(coloured.get_array(), pred[finite, g])
        assert len(hollow.get_paths()) == len(NAN_SPOTS)
        assert _is_hollow(hollow)
        assert hollow.get_array() is None
        # one colour scale for both panels
        assert obs_spots.norm.vmin == coloured.norm.vmin
        assert obs_spots.norm.vmax == coloured.norm.vmax
        assert coloured.norm.vmin == pytest.approx(min(np.nanmin(pred[:, g]), observed[:, g].min()))


def test_spatial_prediction_real_radii_in_um(predicted):
    _, pred_ax = spatial_prediction(predicted, "gene0007", image=False, size=0.5)
    assert not pred_ax.images
    coloured = _collections(pred_ax)[0]
    # toy: spot radius 55 px, 0.5 µm/px, so 27.5 µm; centres at px * 0.5 + (1500, 800)
    extents = coloured.get_paths()[0].get_extents()  # PatchCollection paths are in data units
    assert extents.width == pytest.approx(2 * 27.5 * 0.5, rel=1e-3)
    x0, x1 = pred_ax.get_xlim()
    assert x0 == pytest.approx(1500 + 200 * 0.5 - 27.5 * 0.5)  # the default crop reaches the (scaled) circles


def test_spatial_prediction_without_counts_and_grid(predicted):
    table = predicted.tables[K.TABLE_KEY]
    genes = ["NOTMEASURED", *PRED_GENES]
    values = np.random.default_rng(1).random((table.n_obs, len(genes)))
    _write_predictions(predicted, "spots", values, genes)
    # H&E only: no gene has counts -> one panel per gene, wrapped in rows of ncols
    panels = spatial_prediction(predicted, ["NOTMEASURED"], crop=REGION)
    assert len(panels) == 1
    assert panels[0].get_title() == "NOTMEASURED predicted"
    assert panels[0].get_xlim() == pytest.approx((REGION[0], REGION[2]))
    # a measured and an unmeasured gene: two panels each, the unmeasured observed panel is empty
    panels = spatial_prediction(predicted, ["NOTMEASURED", "gene0011"])
    assert len(panels) == 4
    assert not _collections(panels[0])
    assert "r = " in panels[3].get_title()


def test_spatial_prediction_into_given_axes(predicted):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    out = spatial_prediction(predicted, "gene0005", ax=axes[1:], image=False)
    assert out == list(axes[1:])
    assert spatial_prediction(predicted, "gene0005", ax=axes[1:], image=False, return_fig=True) is fig
    assert not axes[0].collections
    assert axes[1].collections
    assert axes[2].collections
    with pytest.raises(ValueError, match="2 panels"):
        spatial_prediction(predicted, "gene0005", ax=axes[0])


def test_spatial_prediction_r_is_the_metrics_pearson(predicted):
    """The title's r is bt.tl's Pearson: 0.00 for a constant prediction of varying counts (not n/a)."""
    values = np.array(predicted.tables[SPOTS].X)
    values[:, PRED_GENES.index("gene0002")] = 1.5
    values[NAN_SPOTS] = np.nan
    _write_predictions(predicted, "spots", values, PRED_GENES)
    _, pred_ax = spatial_prediction(predicted, "gene0002", image=False)
    assert pred_ax.get_title() == "gene0002 predicted (r = 0.00)"


def test_spatial_prediction_errors(predicted):
    with pytest.raises(KeyError, match=r"`key`: no prediction table 'nope'.*bt.tl.predict"):
        spatial_prediction(predicted, "gene0002", key="nope")
    with pytest.raises(KeyError, match=r"gene0003.*not predicted.*gene0007"):
        spatial_prediction(predicted, ["gene0002", "gene0003"])
    with pytest.raises(KeyError, match="table_key"):
        spatial_prediction(predicted, "gene0002", table_key="nope")
    with pytest.raises(ValueError, match="crop"):
        spatial_prediction(predicted, "gene0002", crop=(10, 10, 0, 0))
    del predicted.tables[SPOTS]
    with pytest.raises(KeyError, match="run bt.tl.predict first"):
        spatial_prediction(predicted, "gene0002")


# --- cells ---------------------------------------------------------------------------------------


def test_cell_expression(predicted, tmp_path):
    import shapely
    from matplotlib.figure import Figure

    path = tmp_path / "cells.png"
    fig = cell_expression(predicted, "gene0011", crop=REGION, save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 10_000
    ax, colorbar = fig.axes
    assert colorbar.get_label() == "<colorbar>"
    assert len(ax.images) == 1

    cells = predicted.tables[K.CELLS_TABLE_KEY]
    shapes = predicted.shapes[predicted.attrs[K.ATTRS_KEY][K.ATTR_CELLS_SHAPES]]
    geometry = shapes.geometry.loc[cells.obs[K.CELL_ID_KEY].to_numpy()].to_numpy()
    geometry_um = shapely.transform(geometry, lambda xy: xy * 0.5 + [1500, 800])
    inside = shapely.intersects(geometry_um, shapely.box(*REGION))
    values = predicted.tables[CELLS].X[:, PRED_GENES.index("gene0011")]
    finite = np.isfinite(values)
    filled, hollow = _collections(ax)
    assert len(filled.get_paths()) == (inside & finite).sum() > 10
    np.testing.assert_allclose(filled.get_array(), values[inside & finite])
    assert len(hollow.get_paths()) == (inside & ~finite).sum() > 0
    assert _is_hollow(hollow)
    # polygons are drawn in µm
    vertices = np.concatenate([p.vertices for p in filled.get_paths()])
    assert vertices[:, 0].min() < REGION[2]
    assert vertices[:, 0].max() > REGION[0]
    assert vertices[:, 0].min() > REGION[0] - 50


def test_cell_expression_default_crop_and_errors(predicted):
    ax = cell_expression(predicted, "gene0002", image=False)
    x0, x1 = ax.get_xlim()
    assert x1 - x0 == pytest.approx(300.0)
    with pytest.raises(KeyError, match=r"not predicted.*gene0007"):
        cell_expression(predicted, "gene0003")
    with pytest.raises(KeyError, match=r"no prediction table 'nope'"):
        cell_expression(predicted, "gene0002", key="nope")
    with pytest.raises(TypeError, match="one gene"):
        cell_expression(predicted, ["gene0002"])


# --- scores --------------------------------------------------------------------------------------


def _scores(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    bitro = rng.uniform(-0.1, 0.8, n)
    return pd.DataFrame(
        {"bitro": bitro, "ridge": bitro - rng.uniform(0, 0.2, n), "mean": rng.uniform(-0.1, 0.1, n)},
        index=[f"gene{i:04d}" for i in range(n)],
    )


def test_gene_scores(tmp_path):
    from matplotlib.figure import Figure

    scores = _scores()
    path = tmp_path / "scores.png"
    fig = gene_scores(scores, n_genes=10, save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 10_000
    (ax,) = fig.axes
    assert len(ax.patches) == 10 * 3
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == scores.sort_values("bitro", ascending=False).index[:10].tolist()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"bitro (mean r = {scores['bitro'].mean():.3f})"
    assert legend[2].startswith("mean (mean r = ")
    # sorted by another method
    ax = gene_scores(scores, n_genes=5, sort_by="ridge")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == scores.sort_values("ridge", ascending=False).index[:5].tolist()


def test_gene_scores_series_and_per_gene_attrs():
    scores = _scores(8)
    assert len(gene_scores(scores["bitro"]).patches) == 8
    summary = pd.DataFrame({"bitro": [0.5], "ridge": [0.4]}, index=["mean"])
    summary.attrs["per_gene"] = scores
    assert len(gene_scores(summary, n_genes=4).patches) == 4 * 3
    summary.attrs["per_gene"] = scores.to_dict()  # as bt.tl.cross_validate stores it
    assert len(gene_scores(summary, n_genes=4).patches) == 4 * 3
    with pytest.raises(KeyError, match=r"sort_by.*ridge"):
        gene_scores(scores, sort_by="nope")
    with pytest.raises(TypeError, match="DataFrame"):
        gene_scores([0.1, 0.2])
    # a selection of a cross_validate table keeps its attrs: the whole table's means would be drawn
    cv = pd.DataFrame({"method": ["bitro", "ridge", "bitro", "ridge"], "pearson_mean": [0.5, 0.4, 0.6, 0.3]})
    cv.attrs.update(per_gene=scores.to_dict(), per_gene_rows=len(cv))
    assert len(gene_scores(cv, n_genes=4).patches) == 4 * 3
    with pytest.raises(ValueError, match=r"holds 2 of the 4 rows its attrs\['per_gene'\] averages"):
        gene_scores(cv[cv["method"] == "bitro"])
    for bad in (None, 2.7, "5"):
        with pytest.raises(TypeError, match="`n_genes` must be an integer"):
            gene_scores(scores, n_genes=bad)


def _evaluate_like() -> pd.DataFrame:
    """Columns of bt.tl.evaluate: Pearson summaries next to counts, MSE and a text column."""
    return pd.DataFrame(
        {
            "level": ["spot", "spot", "spot"],
            "pearson_mean": [0.41, 0.35, 0.52],
            "pearson_median": [0.40, 0.30, 0.50],
            "pooled_pearson": [0.6, 0.5, 0.7],
            "mse": [0.8, 1.1, 0.7],
            "n_obs": [36, 30, 33],
            "n_genes_undefined": [0, 2, 1],
            "n_obs_dropped": [0, 6, 3],
        },
        index=pd.Index(["toy1", "toy2", "toy3"], name="sample"),
    )


def test_gene_scores_of_a_metrics_table_plots_pearson_only():
    scores = _evaluate_like()
    ax = gene_scores(scores)
    legend = [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()]
    assert legend == ["pearson_mean", "pearson_median", "pooled_pearson"]
    assert len(ax.patches) == 3 * 3
    widths = sorted(p.get_width() for p in ax.patches)
    assert max(widths) == pytest.approx(0.7)  # never n_obs (36) or mse
    assert ax.get_title() == "top 3 of 3 samples by pearson_mean"
    # a bt.tl.cross_validate frame whose attrs were lost: rows of folds, Pearson columns only
    cv = scores.reset_index().assign(fold=[0, 1, 2], method="bitro", n_train=2, fit_s=3.5)
    ax = gene_scores(cv, sort_by="pooled_pearson")
    assert len(ax.get_legend().get_texts()) == 3
    with pytest.raises(ValueError, match="no Pearson column"):
        gene_scores(scores[["level", "mse", "n_obs"]])


# --- training ------------------------------------------------------------------------------------


class _Model:
    def __init__(self, history=None, best_epoch=None):
        self.history = history
        self.best_epoch = best_epoch


def test_training_history(tmp_path):
    from matplotlib.figure import Figure

    history = pd.DataFrame(
        {"epoch": np.arange(1, 11), "train_loss": np.linspace(1, 0.2, 10), "val_loss": np.linspace(1.1, 0.5, 10)}
    )
    history.loc[0, "val_loss"] = np.nan
    path = tmp_path / "history.png"
    fig = training_history(_Model(history, best_epoch=7), save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 10_000
    (ax,) = fig.axes
    train, val, best = ax.get_lines()
    np.testing.assert_allclose(train.get_xdata(), history["epoch"])
    np.testing.assert_allclose(val.get_ydata(), history["val_loss"])
    assert best.get_xdata()[0] == 7
    # no validation and no best epoch: one line
    history["val_loss"] = np.nan
    assert len(training_history(_Model(history)).get_lines()) == 1


def test_training_history_untrained():
    with pytest.raises(ValueError, match="no training history"):
        training_history(_Model())
    with pytest.raises(ValueError, match="no training history"):
        training_history(object())


# --- the contract: save / show / return_fig / ax, the same for every plot --------------------------


def _history() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.5], "val_loss": [1.1, 0.8, 0.9]})


PLOTS = {
    "segmentation": lambda sdata, **kw: segmentation(sdata, region=REGION, **kw),
    "spatial_prediction": lambda sdata, **kw: spatial_prediction(sdata, "NOTMEASURED", crop=REGION, **kw),
    "cell_expression": lambda sdata, **kw: cell_expression(sdata, "gene0005", crop=REGION, image=False, **kw),
    "gene_scores": lambda sdata, **kw: gene_scores(_scores(6), **kw),
    "training_history": lambda sdata, **kw: training_history(_Model(_history(), best_epoch=2), **kw),
}
"""Each public plot with arguments that make one panel quickly."""


@pytest.fixture
def one_panel(predicted):
    """``predicted`` plus a gene without counts, so that spatial_prediction draws one panel."""
    table = predicted.tables[K.TABLE_KEY]
    genes = [*PRED_GENES, "NOTMEASURED"]
    values = np.column_stack([predicted.tables[SPOTS].X, np.linspace(0, 1, table.n_obs)])
    _write_predictions(predicted, "spots", values, genes)
    return predicted


@pytest.fixture
def show_calls(monkeypatch):
    """The calls of ``matplotlib.pyplot.show`` during the test (which draws nothing)."""
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def test_every_plot_follows_the_contract():
    import bitro as bt

    assert sorted(PLOTS) == sorted(bt.pl.__all__)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_contract_save_and_return_fig(name, one_panel, tmp_path, show_calls):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    path = tmp_path / f"{name}.png"
    out = PLOTS[name](one_panel, save=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    panels = out if isinstance(out, list) else [out]
    assert all(isinstance(ax, Axes) for ax in panels)
    fig = PLOTS[name](one_panel, return_fig=True)
    assert isinstance(fig, Figure)
    assert fig.axes
    assert show_calls == []


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_contract_draws_into_the_given_axes(name, one_panel, show_calls):
    import matplotlib.pyplot as plt

    fig, (spare, target) = plt.subplots(1, 2)
    out = PLOTS[name](one_panel, ax=target, show=None)
    assert (out == [target]) if isinstance(out, list) else (out is target)
    assert target.has_data()
    assert not spare.has_data()
    assert PLOTS[name](one_panel, ax=target, return_fig=True) is fig
    assert show_calls == []


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_contract_show(name, one_panel, show_calls):
    import matplotlib as mpl

    assert mpl.get_backend().lower() == "agg"
    assert PLOTS[name](one_panel) is not None  # show=None under agg: not shown, axes returned
    assert show_calls == []
    assert PLOTS[name](one_panel, show=True) is None  # shown: nothing returned (Jupyter draws it once)
    assert len(show_calls) == 1
    assert PLOTS[name](one_panel, show=True, return_fig=True) is not None
    assert len(show_calls) == 2


def test_contract_show_none_on_an_interactive_backend(one_panel, show_calls, monkeypatch):
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    monkeypatch.setattr(mpl, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    assert gene_scores(_scores(6)) is None  # its own figure: shown
    assert len(show_calls) == 1
    assert gene_scores(_scores(6), return_fig=True) is not None
    _, ax = plt.subplots()
    assert gene_scores(_scores(6), ax=ax) is ax  # the caller's axes: the caller shows
    assert len(show_calls) == 1


# --- shared docs ------------------------------------------------------------------------------------


def test_inject_docs_indents_blocks_and_leaves_other_braces():
    @inject_docs(doc_a="a\n    First.\nb\n    Second.", doc_x="Shared text\nover two lines.")
    def f(x: int) -> None:
        """Do.

        Parameters
        ----------
        x
            {doc_x} More, with {"gene": 0}.
        {doc_a}
        """

    assert f.__doc__.splitlines()[5:10] == [
        "            Shared text",
        '            over two lines. More, with {"gene": 0}.',
        "        a",
        "            First.",
        "        b",
    ]
    with pytest.raises(ValueError, match="no placeholder"):
        inject_docs(doc_b="text")(f)


def test_plot_docstrings_have_no_placeholder_left():
    import inspect

    import bitro as bt

    for name in bt.pl.__all__:
        doc = inspect.getdoc(getattr(bt.pl, name))
        assert "{doc_" not in doc, name
        assert "\nshow\n    Show the figure." in doc, name
        assert "\nreturn_fig\n" in doc, name
