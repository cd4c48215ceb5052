"""Transfer a trained BiTro model to another label kind or data set: LoRA (peft), full fine-tuning or head only."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from bitro import _constants as K
from bitro import _sdata
from bitro._logging import logger
from bitro._validate import check_choice, check_int

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from bitro.models import BiTro


def transfer(
    sdatas: SpatialData | Sequence[SpatialData],
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
        Target data: sections (``target="spot"``) or slides (``target="bulk"``), as for :func:`bitro.tl.fit`.
    model
        The trained source model; it is not modified (the result is a copy).
    target
        Label kind of the target data.
    mode
        What trains (see above).
    r, alpha, dropout
        LoRA rank, scaling (``lora_alpha``) and dropout.
    target_modules
        Backbone linears LoRA adapts (names or name suffixes); default: the encoder, attention
        ``q_proj``/``k_proj``/``v_proj``/``out_proj`` and feed-forward ``ff_in``/``ff_out``.
    genes
        Target genes; default: the source head's genes that the target data have.
    adapter_name
        Name of the new LoRA adapter (a model can hold several and switch with ``set_adapter``).
    val, groups, max_epochs, patience, lr, weight_decay, batch_size, data, seed, accelerator, devices, progress
        As in :func:`bitro.tl.fit`.

    Returns
    -------
    The adapted :class:`bitro.models.BiTro`; ``model.config["transfer"]`` records the mode, the LoRA
    settings, the trainable and total parameter counts and the gene mapping.

    Examples
    --------
    >>> import bitro as bt
    >>> slides, cohort = bt.datasets.toy_bulk_cohort(n_slides=40)
    >>> bulk = bt.tl.fit(slides, target="bulk")  # doctest: +SKIP
    >>> spatial = bt.tl.transfer([bt.datasets.toy_st()], bulk, target="spot", mode="lora")  # doctest: +SKIP
    >>> spatial.save_adapter("toy_lora")  # doctest: +SKIP
    """
    import lightning as L
    import torch

    from bitro.models._lora import DEFAULT_TARGET_MODULES, backbone_identity, check_target_modules, mapped_head

    from ._fit import DEFAULT_DATA, _as_list, run_training, training_data

    target = check_choice(target, "target", ("spot", "bulk"))
    mode = check_choice(mode, "mode", ("lora", "full", "head"))
    r = check_int(r, "r", min_value=1)
    max_epochs = check_int(max_epochs, "max_epochs", min_value=1)
    sdatas = _as_list(sdatas)
    L.seed_everything(seed, verbose=False)  # new head rows, LoRA matrices and dropout follow `seed`
    if mode == "lora" and adapter_name in model.adapters:
        raise ValueError(f"`adapter_name`: the model already has an adapter {adapter_name!r}; pick another name.")
    if mode != "lora" and model.peft is not None:
        raise ValueError(f"mode={mode!r} on a model with LoRA adapters: merge_adapter() first, or use mode='lora'.")
    source_kind = target if target in model.config["genes"] else model.head
    base = model.base_heads.get(source_kind)  # a base head an adapter replaced: start from it, not the adapter's
    source_genes = list(base["genes"] if base else model.config["genes"][source_kind])
    prep = model.config["preprocessing"]
    # bag settings: the defaults of the target kind, the model's own when it was trained on that kind, then `data`
    data_settings = dict(DEFAULT_DATA[target])
    if target == model.head:
        data_settings.update({k: v for k, v in model.config.get("data", {}).items() if k in DEFAULT_DATA[target]})
    data_settings.update(data or {})

    chosen = None if genes is None else [str(g) for g in genes]
    if chosen is None:
        chosen = _shared_genes(sdatas, source_genes, prep, target, model.config["features"])
    td = training_data(
        sdatas,
        target=target,
        genes=chosen,
        n_genes=len(chosen),
        val=val,
        groups=groups,
        prep=prep,
        data_settings=data_settings,
        seed=seed,
        max_epochs=max_epochs,
        features=model.config["features"],
    )

    new = copy.deepcopy(model)
    module = new.module
    base_identity = backbone_identity(module)
    hidden = new.config["architecture"]["hidden"]
    source_head = new.base_heads[source_kind]["head"] if base else module.heads[source_kind]
    head, n_shared = mapped_head(source_head, source_genes, td.genes, hidden)
    y_mean, y_std = td.target_stats()
    head.target_mean.copy_(torch.as_tensor(y_mean))
    head.target_std.copy_(torch.as_tensor(y_std))

    lora = None
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = check_target_modules(module, target_modules or DEFAULT_TARGET_MODULES)
        lora = {"r": r, "alpha": float(alpha), "dropout": float(dropout), "target_modules": targets}
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        if new.peft is None:
            new.peft = get_peft_model(module, config, adapter_name=adapter_name)
        else:
            new.peft.add_adapter(adapter_name, config)
            new.peft.set_adapter(adapter_name)
        for name, p in module.named_parameters():  # exactly the new adapter's LoRA matrices train
            p.requires_grad = ".lora_" in name and f".{adapter_name}." in name
    else:
        for p in module.parameters():
            p.requires_grad = mode == "full"
        if mode == "full":  # the other heads sat on the old backbone: they would predict stale values
            stale = [k for k in module.heads if k != target]
            for k in stale:
                del module.heads[k]
                new.config["genes"].pop(k, None)
                new.config["hvg"].pop(k, None)
            if stale:
                logger.info("full transfer: the %s head(s) of the source model are dropped", stale)
    module.heads[target] = head
    for p in head.parameters():
        p.requires_grad = True
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in module.parameters())
    logger.info("transfer %s -> %s (%s): %d of %d parameters train", source_kind, target, mode, n_trainable, n_total)

    hist, history = run_training(
        module,
        target,
        td,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=int(batch_size or data_settings["batch_size"]),
        max_epochs=max_epochs,
        patience=patience,
        accelerator=accelerator,
        devices=devices,
        progress=progress,
        seed=seed,
    )
    for p in module.parameters():
        p.requires_grad = False

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
    }
    new.history = hist
    new.config["data"] = {k: v for k, v in data_settings.items() if k in DEFAULT_DATA[target] and k != "batch_size"}
    if target == "spot" and not new.config.get("spots"):
        from ._fit import _spot_geometry

        new.config["spots"] = _spot_geometry(sdatas)
    record["data"], record["spots"] = new.config["data"], new.config.get("spots")
    if mode == "lora":
        new.register_adapter(adapter_name, kind=target, genes=td.genes, hvg=td.hvg, head=head, meta=record)
    else:
        new.config["genes"][target] = list(td.genes)
        new.config["hvg"][target] = list(td.hvg)
    new.config["training"] = {
        "target": target,
        **td.split_record(),
        "groups": dict(zip(td.ids, td.groups, strict=True)),
        "n_train_bags": len(td.train_items),
        "n_val_bags": len(td.val_items),
        "epochs": int(len(hist)),
        "best_epoch": history.best_epoch,
        "seed": int(seed),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "source": model.config["training"],
    }
    new.config["transfer"] = record
    new.module.eval()
    logger.info(
        "transferred to %s (%s): %d epochs, best epoch %s; %d genes (%d from the source head)",
        target,
        mode,
        len(hist),
        history.best_epoch,
        len(td.genes),
        n_shared,
    )
    return new


def _shared_genes(sdatas: list, source_genes: list[str], prep: dict, target: str, features: dict) -> list[str]:
    """The source genes that every target table has (dropped ones logged); an error if none."""
    from bitro.models._data import table_genes

    from ._preprocess import ensure_preprocessed

    present = set(source_genes)
    for sdata in sdatas:
        ensure_preprocessed(sdata, prep, kind=target, features=features)
        key = _sdata.recorded(sdata, K.ATTR_TABLE)
        if key not in sdata.tables:
            raise KeyError(f"sample {_sdata.sample_id(sdata)!r} has no expression table {key!r}.")
        present &= set(table_genes(sdata.tables[key]))
    shared = [g for g in source_genes if g in present]
    if not shared:
        raise ValueError(
            f"the target data share none of the model's {len(source_genes)} genes (e.g. {source_genes[:5]}); "
            "pass `genes=` to train a new panel."
        )
    if len(shared) < len(source_genes):
        dropped = [g for g in source_genes if g not in present]
        logger.warning(
            "%d of the model's genes are missing from the target data and dropped (e.g. %s)", len(dropped), dropped[:5]
        )
    return shared
