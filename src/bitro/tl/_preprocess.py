"""Run the preprocessing a model needs (segmentation, features, assignment, graph) unless it already ran."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger

DEFAULT_PREPROCESSING: dict[str, dict[str, Any]] = {
    "segmentation": {"method": "unet"},
    "features": {"method": "morphology+encoder"},
    "assign": {"factor": 1.5},
    "graph": {"k": 8, "within": "all"},
}
"""The offline default: nuclei of the bundled U-Net, the 21 morphology features and the bundled cell
encoder's 64 (chosen over morphology alone on the validation sections of HER2ST cross-validation:
+0.013 mean per-gene Pearson, 8 of 12 fold-seeds; docs/benchmarks.md), BiTro's 1.5 x radius
assignment, kNN (k=8). A model records its own settings, so the bundled model (morphology) keeps them."""


def preprocessing_settings(overrides: dict | None = None) -> dict:
    """The default preprocessing with ``overrides`` (``{step: {option: value}}``) merged in."""
    settings = copy.deepcopy(DEFAULT_PREPROCESSING)
    for step, options in (overrides or {}).items():
        if step not in settings:
            raise ValueError(f"`preprocessing`: unknown step {step!r}; steps are {list(settings)}.")
        settings[step].update(options)
    return settings


def features_step(features: dict, step: dict) -> dict:
    """The features step that reproduces ``features`` (a model's ``config["features"]``) on new data.

    Training sections may hold features other than ``step`` asks for (e.g. computed by the user with
    an encoder); the model must record how to compute those, or prediction on a new slide would
    measure other columns.
    """
    method = features.get("method")
    if method is None or method == step.get("method") == "morphology":
        return step
    params = features.get("params") or {}
    out = {"method": method}
    if method != "morphology":
        out.update({key: params[key] for key in ("encoder", "mode") if params.get(key) is not None})
        if params.get("mode") == "crop" and params.get("crop_um") is not None:
            out["crop_um"] = params["crop_um"]
    return out


def existing_features(samples) -> dict | None:
    """The cell features of the first sample that has some (as a model records them), or ``None``.

    A user who measured features on some samples (``bitro features``) gets those on the others too,
    not the default's, which would differ and stop the training at the next sample.
    """
    from bitro.models._config import feature_config

    from ._samples import opened

    for sample in samples:
        if isinstance(sample, str | os.PathLike):  # a store: its attributes say, without reading its tables
            from bitro._store import _root_attributes

            try:
                recorded = _root_attributes(Path(sample)).get(K.ATTRS_KEY) or {}
                if K.ATTR_FEATURES not in recorded:
                    continue
                return _stored_feature_config(Path(sample), recorded)  # the store itself is read once, later
            except Exception:  # noqa: BLE001 - not a readable store: the training's own read says so, naming it
                continue
        with opened(sample) as sdata:
            cells_key = _sdata.recorded(sdata, K.ATTR_CELLS_TABLE)
            cells = sdata.tables.get(cells_key)
            if cells is not None and _sdata.recorded(sdata, K.ATTR_FEATURES) in cells.obsm:
                return feature_config(sdata)
    return None


def _stored_feature_config(store: Path, recorded: dict) -> dict:
    """:func:`bitro.models._config.feature_config` of a store, from its cells table's ``uns`` alone."""
    import zarr
    from anndata.io import read_elem

    from bitro.models._config import features_record

    cells_key = recorded.get(K.ATTR_CELLS_TABLE) or K.CELLS_TABLE_KEY
    group = zarr.open_group(str(store), mode="r", use_consolidated=False)
    return features_record(read_elem(group[f"tables/{cells_key}/uns/{recorded[K.ATTR_FEATURES]}"]))


def preprocessed_with(sdata, *, kind: str) -> dict:
    """The segmentation and (spots) assignment ``sdata``'s cells were made with, as far as recorded."""
    done = {}
    segmentation = _sdata.info(sdata).get(K.ATTR_SEGMENTATION)
    if segmentation:
        done["segmentation"] = dict(segmentation)
    if kind == "spot":
        cells = sdata.tables.get(_sdata.recorded(sdata, K.ATTR_CELLS_TABLE))
        factor = ((cells.uns.get(K.ASSIGN_UNS_KEY) or {}).get("params") or {}).get("factor") if cells else None
        if factor is not None:
            done["assign"] = {"factor": float(factor)}
    return done


def common_preprocessing(done: list[dict], ids: list[str]) -> dict:
    """The training samples' preprocessing (the first's), warning when samples differ."""
    for sid, other in zip(ids[1:], done[1:], strict=True):
        if other != done[0]:
            logger.warning(
                "training samples were preprocessed differently: %s %s, %s %s; the model records the first",
                ids[0], done[0], sid, other,
            )  # fmt: skip
            break
    return done[0] if done else {}


def as_trained(prep: dict, done: dict | None) -> dict:
    """``prep`` with the segmentation and assignment the training cells really had: what new slides must repeat.

    Cells already in a sample are used as they are (see :func:`ensure_preprocessed`), so the settings
    asked for (or the defaults) may not be the ones the model learnt from.
    """
    prep = copy.deepcopy(prep)
    segmentation = dict((done or {}).get("segmentation") or {})
    method = segmentation.get("method")
    if method == "import":
        logger.warning(
            "the training cells were imported: new slides will be segmented with %s (bt.tl.predict), not "
            "like the training cells; segment them as you did for training",
            prep["segmentation"],
        )
    elif method is not None:
        if segmentation.pop("model_object", False):
            logger.warning(
                "the training cells were segmented (%s) with a model object, which a saved model cannot "
                "record: new slides get the method's default model; segment them as you did for training",
                method,
            )
        prep["segmentation"] = segmentation
    if (done or {}).get("assign"):
        prep["assign"] = {**prep["assign"], **done["assign"]}
    return prep


def ensure_preprocessed(sdata, settings: dict, *, kind: str, features: dict | None = None) -> None:
    """Run each step of ``settings`` that ``sdata`` lacks; steps that already ran are kept as they are.

    The graph is rebuilt when its ``k`` / ``within`` differ from ``settings``; an existing cells
    layer and spot assignment are reused whatever their options.

    ``features`` (a model's ``config["features"]``) makes existing features that differ from the
    model's (method or names) an error instead of silently feeding the network other columns, and
    missing features are measured at the pixel size the model's were.
    """
    from bitro.pp import assign_cells, cell_features, cell_graph, segment_cells

    sample = _sdata.sample_id(sdata, "?")
    spots = _sdata.info(sdata).get(K.ATTR_SPOTS)
    if kind == "spot" and (spots is None or spots not in sdata.shapes):
        # before any step runs: segmenting a slide only to fail at the spot assignment wastes minutes
        raise ValueError(
            f"{sample}: no spots (attrs['bitro']['spots_key'] is {spots!r}) for target='spot'; a whole slide "
            "with bulk expression trains with target='bulk', and bt.tl.predict gives it pseudo-spots."
        )
    cells_key = _sdata.recorded(sdata, K.ATTR_CELLS_TABLE)
    if cells_key not in sdata.tables:
        logger.info("%s: no cells layer, segmenting (%s)", sample, settings["segmentation"])
        segment_cells(sdata, **settings["segmentation"])
        cells_key = _sdata.recorded(sdata, K.ATTR_CELLS_TABLE)
        if cells_key not in sdata.tables:
            mpp = _sdata.image_mpp(sdata, _sdata.image_key(sdata, None))
            hint = (
                f"; its image is {mpp:.3g} µm/px, too coarse to see nuclei (give the full-resolution H&E: "
                "bt.io.visium(..., fullres_image_file=...) or `bitro run visium ... --fullres-image FILE`)"
                if mpp > 2
                else ""
            )
            raise ValueError(f"{sample}: segmentation found no cells, so there is nothing to predict from{hint}.")
    cells = sdata.tables[cells_key]
    fkey = _sdata.recorded(sdata, K.ATTR_FEATURES)
    if fkey not in cells.obsm:
        logger.info("%s: computing cell features (%s)", sample, settings["features"])
        options = dict(settings["features"])
        model_mpp = ((features or {}).get("params") or {}).get("mpp")
        if model_mpp is not None and "mpp" not in options:
            options["mpp"] = model_mpp  # measured at the pixel size the model's features were
        cell_features(sdata, **options)
        fkey = _sdata.recorded(sdata, K.ATTR_FEATURES)
        cells = sdata.tables[cells_key]
    have = cells.uns.get(fkey, {})
    if features is not None:
        names = list(features.get("names", []))
        have_names = sorted(have.get("names", {}), key=have.get("names", {}).get)
        if have.get("method") != features["method"] or (names and have_names != names):
            raise ValueError(
                f"{sample}: the cells' features (method {have.get('method')!r}, {len(have_names)} columns) differ "
                f"from the model's (method {features['method']!r}, {len(names)} columns). Recompute them with "
                f"bt.pp.cell_features(sdata, method={features['method']!r}) or use a model trained on these features."
            )
    if kind == "spot":
        assign_key = _sdata.recorded(sdata, K.ATTR_SPOT_ASSIGNMENT)
        if assign_key not in cells.obs:
            assign_cells(sdata, **settings["assign"])
            cells = sdata.tables[cells_key]
    graph = settings["graph"]
    gkey = _sdata.recorded(sdata, K.ATTR_GRAPH)
    params = cells.uns.get(gkey, {}).get("params", {})
    stale = any(params.get(k) != v for k, v in graph.items())
    if f"{gkey}_connectivities" not in cells.obsp or stale:
        if params:
            logger.info("%s: rebuilding the cell graph with the model's settings %s (it had %s)", sample, graph, params)
        cell_graph(sdata, **graph)
