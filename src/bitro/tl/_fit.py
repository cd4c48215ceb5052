"""``bt.tl.fit``: train a BiTro model on the spots of ST sections or on bulk RNA-seq of whole slides."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from bitro._logging import logger
from bitro._validate import check_choice, check_int

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro
    from bitro.models._training import TrainingData


def fit(
    sdatas: SpatialData | str | os.PathLike | Sequence[SpatialData | str | os.PathLike],
    *,
    target: Literal["spot", "bulk"] = "spot",
    genes: Sequence[str] | None = None,
    n_genes: int = 50,
    val: float | Sequence[str] | None = 0.25,
    groups: Sequence[str] | None = None,
    max_epochs: int = 60,
    patience: int = 10,
    lr: float = 5e-4,
    weight_decay: float = 1e-2,
    batch_size: int | None = None,
    architecture: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    preprocessing: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> BiTro:
    """Train a BiTro model on the spots of ST sections or on bulk RNA-seq of whole slides.

    Each sample is first preprocessed with whatever it lacks (segmentation, cell features,
    cell-to-spot assignment, cell graph; ``preprocessing=`` sets the options). Targets are
    log1p(CP10k) of the selected genes, standardised per gene with statistics of the training
    samples only; cell features are standardised the same way. Early stopping and the choice of
    weights use a validation split grouped by patient (else by sample) and never the test data,
    which ``fit`` does not see. With a single patient, validation holds out spatial blocks of spots
    (a 4 x 4 grid; spot targets only) and the log says so; genes are then ranked on the whole
    section, validation blocks included (they only steer early stopping).

    Parameters
    ----------
    sdatas
        One SpatialData per section (``target="spot"``: spots table and spot circles, as
        :mod:`bitro.io` reads them) or per slide (``target="bulk"``: a 1 x genes table, as
        :func:`bitro.io.cohort` or :func:`bitro.datasets.toy_bulk_cohort` give), or the path of its
        zarr store, or a folder of such stores. Stores are read one at a time, preprocessed in
        place (the steps a store lacks are written into it, crash-safely) and released once their
        bags (cell features, positions, graph) are in one memory-mapped temporary file (in
        ``$TMPDIR``), so a cohort of whole slides trains in about the memory of one slide.
    target
        Label kind: ``"spot"`` (a bag is the cells of a spot) or ``"bulk"`` (all cells of a slide).
    genes
        Genes to predict; default: the ``n_genes`` most variable genes of the training samples.
    n_genes
        Number of highly variable genes when ``genes`` is not given.
    val
        Validation: a fraction of the patients (groups), a list of sample ids, or ``None`` (no
        validation: train ``max_epochs`` and keep the last weights).
    groups
        Patient of each sample, for grouped splits (default: ``attrs["bitro"]["patient_id"]`` or
        the table's ``patient_id`` column, else each sample is its own group).
    max_epochs, patience
        Epoch limit (>= 1) and early-stopping patience (epochs without a better validation loss, >= 0).
    lr, weight_decay
        AdamW settings (``lr`` in (0, 10], ``weight_decay`` in [0, 10]).
    batch_size
        Bags per step (default 16 spots or 2 slides).
    architecture
        Network size (see :class:`bitro.models.Architecture` for the accepted ranges): ``hidden``,
        ``n_heads``, ``n_gat``, ``n_layers``, ``dropout``.
    data
        Bag settings: ``context_um`` / ``max_context`` (ring of context cells around each spot;
        0 turns it off), ``max_cells`` per sequence, ``tile_um`` and ``max_tiles`` for slides.
    preprocessing
        Options of the preprocessing steps (``{"segmentation": {...}, "features": {...},
        "assign": {...}, "graph": {...}}``), recorded in the model and reused by
        :func:`bitro.tl.predict`.
    seed
        Seed of splits, sub-sampling and initialisation.
    accelerator, devices, strategy
        Passed to :class:`lightning.pytorch.Trainer`: e.g. ``accelerator="gpu", devices=4`` trains on
        four GPUs with DDP. From a script, ``strategy="ddp"`` starts one process per device (the
        script runs again in each); from a notebook or any caller that cannot be re-run, use
        ``strategy="ddp_fork"`` (Linux and macOS; ``accelerator="cpu", devices=2`` trains on two
        CPU processes) or ``strategy="ddp_spawn"`` (any platform; each process imports anew). Losses are averaged over the processes, so all stop at the same epoch, and
        the caller gets the best epoch's weights and the history.
    checkpoint_dir
        Folder for the training state, written after every epoch; calling ``fit`` again with the same
        data, settings and folder resumes where the last run stopped (killed, or interrupted).
    progress
        Show Lightning's progress bar with the losses (default: when ``bt.settings.verbosity`` >= 1).

    Returns
    -------
    The trained :class:`bitro.models.BiTro`, with ``model.genes`` and ``model.history``.

    Raises
    ------
    bitro.models.TrainingInterrupted
        On Ctrl-C (it is a :class:`KeyboardInterrupt`); its ``model`` holds the best weights so far.

    Examples
    --------
    >>> import bitro as bt
    >>> sections = [bt.datasets.toy_st(seed=s) for s in range(3)]
    >>> model = bt.tl.fit(sections, n_genes=20, max_epochs=5)  # doctest: +SKIP
    >>> model.genes[:3]  # doctest: +SKIP
    """
    with fitting(locals()) as (model, _):
        return model


@contextlib.contextmanager
def fitting(arguments: dict[str, Any]) -> Iterator[tuple[BiTro, TrainingData]]:
    """Train as :func:`fit` does with ``arguments`` (its parameters by name, every one given).

    Yields the model and its :class:`~bitro.models._training.TrainingData`, whose bags (memory-mapped
    for stores) stay readable until the block ends: callers that score the training samples too
    (cross-validation's baselines) do not read the stores again.
    """
    import lightning as L

    from bitro.models._config import data_settings
    from bitro.models._training import TrainingOptions

    from ._preprocess import preprocessing_settings
    from ._samples import as_samples
    from ._training_data import spill_folder, training_data

    arguments = dict(arguments)
    target = arguments["target"] = check_choice(arguments["target"], "target", ("spot", "bulk"))
    n_genes = check_int(arguments["n_genes"], "n_genes", min_value=1)
    samples = as_samples(arguments["sdatas"])
    prep = preprocessing_settings(arguments["preprocessing"])
    bag_settings = data_settings(target, arguments["data"])
    options = TrainingOptions.from_arguments(arguments, default_batch_size=bag_settings["batch_size"])
    L.seed_everything(options.seed, verbose=False)
    with spill_folder(samples) as spill_to:  # stores: their bags wait on disk, not in memory
        td = training_data(
            samples, target, prep, bag_settings, options, genes=arguments["genes"], n_genes=n_genes,
            val=arguments["val"], groups=arguments["groups"], spill_to=spill_to,
        )  # fmt: skip
        try:
            yield _train(td, target, prep, bag_settings, options, arguments["architecture"]), td
        finally:
            del td  # the mapped bags go before their folder


def _train(td, target: str, prep: dict, bag_settings: dict, options, architecture: dict | None) -> BiTro:
    """Build the network for ``td``, standardise with its training samples, train, calibrate."""
    import torch

    from bitro.models import BiTro
    from bitro.models._calibration import calibrate
    from bitro.models._config import Architecture, model_config, training_record
    from bitro.models._training import train

    from ._preprocess import as_trained, features_step

    prep = as_trained(prep, td.preprocessed)  # the cells it learnt from, as new slides must repeat them
    prep["features"] = features_step(td.features, prep["features"])  # how to measure them on new slides
    arch = Architecture.from_settings(int(td.sections[0].x.shape[1]), architecture)
    module = arch.build({target: len(td.genes)})
    # standardisation from training data only
    f_mean, f_std = td.feature_stats()
    y_mean, y_std = td.target_stats()
    module.feature_mean.copy_(torch.as_tensor(f_mean))
    module.feature_std.copy_(torch.as_tensor(f_std))
    module.heads[target].target_mean.copy_(torch.as_tensor(y_mean))
    module.heads[target].target_std.copy_(torch.as_tensor(y_std))
    identity = {"kind": "fit", "target": target, "genes": td.genes, **td.split_record()}
    identity.update(architecture=arch.to_dict(), data=bag_settings, preprocessing=prep)

    def build(hist, history, interrupted: bool = False) -> BiTro:
        config = model_config(
            architecture=arch,
            genes={target: td.genes},
            hvg={target: td.hvg},
            features=td.features,
            preprocessing=prep,
            data=bag_settings,
            mpp=td.mpp,
            spots=td.spots,
            training=training_record(td, hist, history, options, target=target, interrupted=interrupted),
        )
        model = BiTro(module, config, hist)
        calibration = calibrate(model, td, target)
        if calibration is not None:
            model.config["calibration"] = {target: calibration}
        return model

    model = train(module, target, td, options, identity=identity, build=build)
    hist = model.history
    logger.info(
        "trained %s: %d epochs, best epoch %s (validation loss %s)",
        target,
        len(hist),
        model.best_epoch,
        model.config["training"]["best_val_loss"],
    )
    return model
