"""Transfer a trained BiTro model to another label kind or data set: LoRA (peft), full fine-tuning or head only."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from bitro._logging import logger
from bitro._validate import check_choice

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro


def transfer(
    sdatas: SpatialData | str | os.PathLike | Sequence[SpatialData | str | os.PathLike],
    model: BiTro,
    *,
    target: Literal["spot", "bulk"] = "spot",
    mode: Literal["lora", "full", "head"] = "lora",
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    adapter_name: str = "default",
    val: float | Sequence[str] | None = 0.25,
    groups: Sequence[str] | None = None,
    max_epochs: int = 30,
    patience: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int | None = None,
    data: dict[str, Any] | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> BiTro:
    """Adapt a trained model to new labels: bulk -> spots, spots -> bulk, or the same kind on new data.

    The backbone (encoder, GAT, transformer) is kept; the ``target`` head starts from the model's
    head of that kind if it has one, else from its trained head, mapped by gene name: genes both
    panels share start from the source head's rows, new genes start fresh (the counts are logged).
    Targets are standardised with statistics of the new training data; the data are preprocessed
    with the model's own settings, and cells features that differ from the model's are an error.

    Modes: ``"lora"`` (peft ``LoraConfig`` on ``target_modules``: base weights frozen, the LoRA
    matrices and the head train; the adapter can be saved on its own and several named adapters
    can sit on one base), ``"full"`` (every weight trains) and ``"head"`` (only the head trains).

    Parameters
    ----------
    sdatas
        Target data: sections (``target="spot"``) or slides (``target="bulk"``), as SpatialData
        objects, zarr store paths or a folder of stores, as for :func:`bitro.tl.fit` (stores are
        read one at a time and their bags kept in a memory-mapped file, not the slides in memory).
    model
        The trained source model, or the folder of a saved one; it is not modified (the result is a copy).
    target
        Label kind of the target data.
    mode
        What trains (see above).
    r, alpha, dropout
        LoRA rank (1 to the network width, at most 256), scaling (``lora_alpha``, in (0, 1024]) and
        dropout (in [0, 0.9]).
    target_modules
        Backbone linears LoRA adapts (names or name suffixes); default: the encoder, attention
        ``q_proj``/``k_proj``/``v_proj``/``out_proj`` and feed-forward ``ff_in``/``ff_out``.
    genes
        Target genes; default: the source head's genes that the target data have.
    adapter_name
        Name of the new LoRA adapter (a model can hold several and switch with ``set_adapter``).
    val, groups, max_epochs, patience, lr, weight_decay, batch_size, data, seed, accelerator, devices, strategy, checkpoint_dir, progress
        As in :func:`bitro.tl.fit`.

    Returns
    -------
    The adapted :class:`bitro.models.BiTro`; ``model.config["transfer"]`` records the mode, the LoRA
    settings, the trainable and total parameter counts and the gene mapping.

    Raises
    ------
    bitro.models.TrainingInterrupted
        On Ctrl-C (it is a :class:`KeyboardInterrupt`); its ``model`` holds the best weights so far.

    Examples
    --------
    >>> import bitro as bt
    >>> slides, cohort = bt.datasets.toy_bulk_cohort(n_slides=3, cells_per_slide=300)
    >>> bulk = bt.tl.fit(slides, target="bulk", n_genes=20, val=None, max_epochs=2, progress=False)
    >>> sections = [bt.datasets.toy_st(n_spots=9, seed=s, sample_id=f"s{s}") for s in (0, 1)]
    >>> spots = bt.tl.transfer(sections, bulk, target="spot", mode="lora", val=["s1"], max_epochs=2, progress=False)
    >>> spots.config["transfer"]["mode"]
    'lora'
    >>> spots.save_adapter("toy_lora")  # the adapter alone, a fraction of the model's size
    """
    import lightning as L

    from bitro.models._adapters import check_lora
    from bitro.models._config import data_settings
    from bitro.models._training import TrainingOptions

    from ._predict import resolve_model
    from ._samples import as_samples
    from ._training_data import spill_folder, training_data

    model = resolve_model(model)  # a saved model's folder, as bt.tl.predict takes
    target = check_choice(target, "target", ("spot", "bulk"))
    mode = check_choice(mode, "mode", ("lora", "full", "head"))
    if mode == "lora":
        check_lora(r, alpha, dropout, model.config["architecture"]["hidden"])
        if adapter_name in model.adapters:
            raise ValueError(f"`adapter_name`: the model already has an adapter {adapter_name!r}; pick another name.")
    if mode != "lora" and model.peft is not None:
        raise ValueError(f"mode={mode!r} on a model with LoRA adapters: merge_adapter() first, or use mode='lora'.")
    samples = as_samples(sdatas)
    L.seed_everything(seed, verbose=False)  # new head rows, LoRA matrices and dropout follow `seed`
    source_kind = target if target in model.config["genes"] else model.head
    source = model.base_head(source_kind)  # a base head an adapter replaced: start from it, not the adapter's
    prep = model.config["preprocessing"]
    # bag settings: the target kind's defaults, the model's own when it was trained on that kind, then `data`
    bag_settings = data_settings(target, model.config.get("data") if target == model.head else None, data)
    options = TrainingOptions.from_arguments(locals(), default_batch_size=bag_settings["batch_size"])

    with spill_folder(samples) as spill_to:
        td = training_data(
            samples, target, prep, bag_settings, options, genes=genes, source_genes=source.genes, val=val,
            groups=groups, features=model.config["features"], spill_to=spill_to,
        )  # fmt: skip
        new = _adapt(
            model, td, source, source_kind, target=target, mode=mode, adapter_name=adapter_name,
            lora_settings={"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules},
            prep=prep, bag_settings=bag_settings, options=options,
        )  # fmt: skip
        del td  # the mapped bags go before their folder
    return new


def _adapt(
    model: BiTro,
    td,
    source,
    source_kind: str,
    *,
    target: str,
    mode: str,
    adapter_name: str,
    lora_settings: dict,
    prep: dict,
    bag_settings: dict,
    options,
) -> BiTro:
    """A copy of ``model`` with the ``target`` head mapped from ``source``, trained on ``td`` in ``mode``."""
    import torch

    from bitro.models._calibration import calibrate
    from bitro.models._config import Architecture, model_config, training_record
    from bitro.models._lora import backbone_identity, mapped_head
    from bitro.models._training import train

    new = copy.deepcopy(model)
    base_identity = backbone_identity(new.module)
    head, n_shared = mapped_head(source.head, source.genes, td.genes, new.config["architecture"]["hidden"])
    y_mean, y_std = td.target_stats()
    head.target_mean.copy_(torch.as_tensor(y_mean))
    head.target_std.copy_(torch.as_tensor(y_std))
    lora = None
    if mode == "lora":
        lora = new.add_lora(adapter_name, **lora_settings)
    if mode == "full":
        new.drop_heads(keep=target)
    new.use_head(target, head)
    n_trainable, n_total = new.set_trainable(mode, head=target, adapter_name=adapter_name)
    logger.info("transfer %s -> %s (%s): %d of %d parameters train", source_kind, target, mode, n_trainable, n_total)
    identity = {"kind": "transfer", "target": target, "genes": td.genes, **td.split_record()}
    identity.update(mode=mode, base_identity=base_identity, lora=lora, data=bag_settings)

    def finish(hist, history, interrupted: bool = False):
        new.set_trainable("none", head=target)
        record = {
            "mode": mode,
            "source_kind": source_kind,
            "target": target,
            "lora": lora,
            "trainable_parameters": int(n_trainable),
            "total_parameters": int(n_total),
            "n_genes_shared": int(n_shared),
            "n_genes_new": len(td.genes) - int(n_shared),
            "source_samples": list(model.config["training"].get("samples", [])),
            "base_identity": base_identity,
            **td.split_record(),
            "epochs": int(len(hist)),
            "best_epoch": history.best_epoch,
            "data": {k: v for k, v in bag_settings.items() if k != "batch_size"},
            "spots": new.config.get("spots") or td.spots,
        }
        training = training_record(td, hist, history, options, target=target, interrupted=interrupted)
        training["source"] = model.config["training"]
        new.module.eval()
        calibration = calibrate(new, td, target)
        if calibration is not None:
            record["calibration"] = calibration
        if mode == "lora":
            new.register_adapter(adapter_name, kind=target, genes=td.genes, hvg=td.hvg, head=head, meta=record)
        else:
            new.set_head(target, head, genes=td.genes, hvg=td.hvg)
        config = model_config(
            architecture=Architecture(**new.config["architecture"]),
            genes=new.config["genes"],
            hvg=new.config["hvg"],
            features=new.config["features"],
            preprocessing=prep,
            data=bag_settings,
            mpp=new.config.get("mpp"),
            spots=record["spots"],
            training=training,
        )
        new.config = {**new.config, **config, "transfer": record}
        calibrations = {k: v for k, v in (new.config.get("calibration") or {}).items() if k != target}
        if calibration is not None:
            calibrations[target] = calibration
        new.config["calibration"] = calibrations
        new.history = hist
        new.module.eval()
        return new

    train(new.module, target, td, options, identity=identity, build=finish)
    logger.info(
        "transferred to %s (%s): %d epochs, best epoch %s; %d genes (%d from the source head)",
        target,
        mode,
        len(new.history),
        new.best_epoch,
        len(td.genes),
        n_shared,
    )
    return new
