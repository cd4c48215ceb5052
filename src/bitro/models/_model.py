"""The user-facing :class:`BiTro` model: network + the settings it was trained with, save and load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bitro._logging import logger

if TYPE_CHECKING:
    from ._data import Bags
    from ._module import BiTroModule

FORMAT = 1
"""Version of the saved layout (``config.json`` + ``model.safetensors``); bumped when it changes."""
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class BiTro:
    """A trained BiTro model: the network, its genes and every setting needed to apply it to new data.

    Made by :func:`bitro.tl.fit` (or :meth:`load`), applied with :func:`bitro.tl.predict`.

    Parameters
    ----------
    module
        The network.
    config
        JSON-serialisable settings: ``architecture``, ``genes`` and ``hvg`` per head, ``features``,
        ``preprocessing``, ``data`` (bag settings), ``mpp``, ``spots`` and ``training``.
    history
        Loss per epoch (``epoch``, ``train_loss``, ``val_loss``).

    Attributes
    ----------
    head
        The label kind whose head predicts by default (``"spot"`` or ``"bulk"``).
    genes
        Genes of that head, in output order.
    history
        Loss per epoch; :func:`bitro.pl.training_history` plots it.
    best_epoch
        Epoch whose weights were kept (best validation loss), or ``None``.
    """

    def __init__(self, module: BiTroModule, config: dict[str, Any], history: pd.DataFrame | None = None) -> None:
        self.module = module
        self.config = config
        self.history = history if history is not None else pd.DataFrame(columns=["epoch", "train_loss", "val_loss"])
        self.peft = None
        """The ``peft.PeftModel`` wrapping ``module`` once it holds LoRA adapters (the LoRA layers sit inside ``module``)."""
        self.adapters: dict[str, dict[str, Any]] = {}
        """LoRA adapters by name, each ``{"kind", "genes", "hvg", "head", "meta"}``."""
        self.active_adapter: str | None = None
        self.base_heads: dict[str, dict[str, Any]] = {}
        """The base model's heads that adapters of the same kind replaced (``{kind: {"head", "genes", "hvg"}}``)."""

    # --- properties ------------------------------------------------------------------------------
    @property
    def head(self) -> str:
        return self.config["training"]["target"]

    @property
    def genes(self) -> list[str]:
        return list(self.config["genes"][self.head])

    @property
    def hvg(self) -> list[str]:
        """Genes ranked by variability in the training data (most variable first)."""
        return list(self.config["hvg"][self.head])

    @property
    def best_epoch(self) -> int | None:
        return self.config["training"].get("best_epoch")

    @property
    def identity(self) -> str:
        """The sha256 hash of the backbone weights, which an adapter checks when it is loaded onto this model."""
        from ._lora import backbone_identity

        return backbone_identity(self.module)

    def __repr__(self) -> str:
        t = self.config["training"]
        n_params = sum(p.numel() for p in self.module.parameters())
        return (
            f"BiTro(head={self.head!r}, n_genes={len(self.genes)}, features={self.config['features']['method']!r} "
            f"({self.config['architecture']['n_features']}), parameters={n_params}, "
            f"trained on {len(t.get('samples', []))} samples, best_epoch={self.best_epoch}"
            + (f", adapters={list(self.adapters)} (active {self.active_adapter!r})" if self.adapters else "")
            + ")"
        )

    # --- application -----------------------------------------------------------------------------
    def predict_bags(self, bags: Bags, *, head: str | None = None, batch_size: int = 64, _base: bool = False):
        """Bag and cell predictions (log1p CP10k) of one section or slide, streamed by chunks of sequences.

        Returns ``(bag_pred, cell_pred, cell_weight)``: ``(n_bags, G)`` (NaN for a bag without a
        cell), ``(n_cells, G)`` and ``(n_cells,)`` pooling weights (NaN for cells in no bag).
        """
        import torch

        from ._data import collate, sequence_arrays
        from ._module import merge_pool_state, pool_state

        head = head or self.head
        if not _base and self.peft is not None and head != self.adapters[self.active_adapter]["kind"]:
            # another label kind's head belongs to the base backbone: run it without the active adapter
            with self.peft.disable_adapter():
                return self.predict_bags(bags, head=head, batch_size=batch_size, _base=True)
        module = self.module
        module.eval()
        device = next(module.parameters()).device
        mod_head = module.heads[head]
        mean, std = mod_head.target_mean.cpu().numpy(), mod_head.target_std.cpu().numpy()
        n_cells, g = len(bags.x), len(mean)
        cell_pred = np.full((n_cells, g), np.nan, np.float32)
        cell_logit = np.full(n_cells, -np.inf, np.float64)
        seqs = [s for s in range(len(bags.seq_cells)) if len(bags.seq_cells[s])]
        state = None
        with torch.inference_mode():
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start : start + batch_size]
                batch = collate([sequence_arrays(bags, s) for s in chunk], bags.seq_bag[chunk], bags.n_bags)
                batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
                expression, logits = module.cells(batch, head)
                part = pool_state(expression.double(), logits.double(), batch["bag"], bags.n_bags)
                state = part if state is None else merge_pool_state(state, part)
                expression, logits = expression.cpu().numpy(), logits.cpu().numpy()
                for i, s in enumerate(chunk):
                    m = len(bags.seq_cells[s])
                    cell_pred[bags.seq_cells[s]] = expression[i, :m] * std + mean
                    cell_logit[bags.seq_cells[s]] = logits[i, :m]
        bag_pred = np.full((bags.n_bags, g), np.nan, np.float32)
        weight = np.full(n_cells, np.nan, np.float32)
        if state is not None:
            denom, num, bag_max = (t.cpu().numpy() for t in state)
            with np.errstate(invalid="ignore", divide="ignore"):
                bag_pred = (num / denom[:, None] * std + mean).astype(np.float32)
            cell_bag = np.full(n_cells, -1, np.int64)
            for s in seqs:
                cell_bag[bags.seq_cells[s]] = bags.seq_bag[s]
            ok = cell_bag >= 0
            weight[ok] = np.exp(cell_logit[ok] - bag_max[cell_bag[ok]]) / denom[cell_bag[ok]]
        return bag_pred, cell_pred, weight

    # --- persistence -----------------------------------------------------------------------------
    def save(self, dir_path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save the weights (``model.safetensors``) and the settings (``config.json``) to a folder.

        The folder is written beside ``dir_path`` and swapped in whole when complete, so an
        interrupted save leaves the previous model in place.

        Parameters
        ----------
        dir_path
            Folder to write; created if needed.
        overwrite
            Replace a model already saved there (a folder holding other files is refused, so
            nothing else in it is lost).
        """
        from bitro import __version__
        from bitro._store import replace_folder

        from ._files import write_json, write_weights

        if self.peft is not None:
            raise ValueError(
                f"this model holds LoRA adapters {list(self.adapters)}: save each with save_adapter() next to the "
                "base model's folder, or merge_adapter() first to save one plain model."
            )
        path = Path(dir_path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"`dir_path`: {path} already exists; pass overwrite=True to replace it.")
        config = dict(self.config, format=FORMAT, bitro_version=str(__version__))
        config["history"] = self.history.replace({np.nan: None}).to_dict(orient="list")
        with replace_folder(path, overwrite=overwrite, owned={CONFIG_FILE, WEIGHTS_FILE}) as tmp:
            write_weights(self.module.state_dict(), tmp / WEIGHTS_FILE, config=config, fmt=FORMAT)
            write_json(config, tmp / CONFIG_FILE)
        logger.info("saved BiTro (%s head, %d genes) to %s", self.head, len(self.genes), path)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        *,
        adapter: str | os.PathLike | list[str | os.PathLike] | None = None,
        device: str | None = None,
    ) -> BiTro:
        """Load a model saved with :meth:`save`. Reads JSON and safetensors only: nothing is unpickled.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adapter
            Folder(s) written by :meth:`save_adapter` to load onto the model (the first is active).
            Each is checked against this base model's identity.
        device
            Torch device to put the weights on (default ``"cpu"``).

        Returns
        -------
        BiTro
            The model, in evaluation mode.
        """
        from ._files import check_digest, read_json, read_weights

        path = Path(dir_path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"`dir_path`: {path} is not a saved BiTro model (expected {CONFIG_FILE} and {WEIGHTS_FILE})."
            )
        config = read_json(path / CONFIG_FILE, what="model's settings")
        fmt = config.get("format")
        if fmt != FORMAT:
            raise ValueError(
                f"{path}: model format {fmt!r} (written by bitro {config.get('bitro_version', '?')}); this bitro "
                f"reads format {FORMAT}. Re-train or re-save the model with a matching bitro version."
            )
        history = pd.DataFrame(config.pop("history", {"epoch": [], "train_loss": [], "val_loss": []}))
        state, metadata = read_weights(path / WEIGHTS_FILE, what="model's weights")
        check_digest(metadata, config, weights=path / WEIGHTS_FILE, config_path=path / CONFIG_FILE)
        module = build_module(config)
        check_state(module, state, config, path)
        module.load_state_dict(state)
        module.to(device or "cpu").eval()
        model = cls(module, config, history.astype(float) if len(history) else None)
        paths = [] if adapter is None else [adapter] if isinstance(adapter, str | os.PathLike) else list(adapter)
        names = [model.load_adapter(p) for p in paths]
        if names:
            model.set_adapter(names[0])
        return model

    # --- LoRA adapters ---------------------------------------------------------------------------
    def register_adapter(self, name: str, *, kind: str, genes: list[str], hvg: list[str], head, meta: dict) -> None:
        """Record adapter ``name`` (its LoRA weights already in :attr:`peft`) with its head, and activate it."""
        self.adapters[name] = {"kind": kind, "genes": list(genes), "hvg": list(hvg), "head": head, "meta": meta}
        self.set_adapter(name)

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` (and its head and genes) the one that predicts.

        Parameters
        ----------
        name
            One of :attr:`adapters`.
        """
        if name not in self.adapters:
            raise KeyError(f"`name`: no adapter {name!r}; this model has {list(self.adapters) or 'none'}.")
        entry = self.adapters[name]
        self.peft.set_adapter(name)
        kind = entry["kind"]
        adapter_heads = {id(a["head"]) for a in self.adapters.values()}
        if kind in self.module.heads and id(self.module.heads[kind]) not in adapter_heads:
            self.base_heads[kind] = {
                "head": self.module.heads[kind],
                "genes": list(self.config["genes"][kind]),
                "hvg": list(self.config["hvg"].get(kind, self.config["genes"][kind])),
            }
        self.module.heads[kind] = entry["head"]
        self.config["genes"][entry["kind"]] = list(entry["genes"])
        self.config["hvg"][entry["kind"]] = list(entry["hvg"])
        self.config["training"] = dict(self.config["training"], target=entry["kind"])
        for key in ("data", "spots"):  # bag settings and spot geometry the adapter was trained with
            if entry["meta"].get(key):
                self.config[key] = entry["meta"][key]
        self.active_adapter = name
        self.module.eval()

    def save_adapter(self, dir_path: str | os.PathLike, *, name: str | None = None, overwrite: bool = False) -> None:
        """Save one LoRA adapter on its own: peft's files, its head and ``bitro_adapter.json``.

        Parameters
        ----------
        dir_path
            Folder to write (small: the LoRA matrices and one head).
        name
            Adapter to save (default: the active one).
        overwrite
            Replace an adapter already saved there.
        """
        import shutil
        import tempfile

        from bitro import __version__
        from bitro._store import replace_folder

        from ._files import write_json, write_weights
        from ._lora import ADAPTER_FILE, HEAD_FILE, PEFT_FILES

        name = name or self.active_adapter
        if self.peft is None or name not in self.adapters:
            raise ValueError(f"`name`: no LoRA adapter {name!r} to save (adapters: {list(self.adapters) or 'none'}).")
        path = Path(dir_path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"`dir_path`: {path} already exists; pass overwrite=True to replace it.")
        entry = self.adapters[name]
        meta = dict(
            entry["meta"],
            format=FORMAT,
            name=name,
            kind=entry["kind"],
            genes=entry["genes"],
            hvg=entry["hvg"],
            bitro_version=str(__version__),
        )
        owned = {ADAPTER_FILE, HEAD_FILE, *PEFT_FILES}
        with replace_folder(path, overwrite=overwrite, owned=owned) as out, tempfile.TemporaryDirectory() as peft_dir:
            self.peft.save_pretrained(peft_dir, selected_adapters=[name])
            src = Path(peft_dir) if name == "default" else Path(peft_dir) / name
            for f in PEFT_FILES:
                shutil.copyfile(src / f, out / f)
            head_config = {"genes": {entry["kind"]: entry["genes"]}, "architecture": self.config["architecture"]}
            write_weights(entry["head"].state_dict(), out / HEAD_FILE, config=head_config, fmt=FORMAT)
            write_json(meta, out / ADAPTER_FILE)
        logger.info("saved adapter %r (%s head, %d genes) to %s", name, entry["kind"], len(entry["genes"]), path)

    def load_adapter(self, dir_path: str | os.PathLike, *, name: str | None = None) -> str:
        """Load an adapter saved with :meth:`save_adapter` onto this (base) model and activate it.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save_adapter`.
        name
            Name to give it (default: the name it was saved under).

        Returns
        -------
        str
            The adapter's name.
        """
        from ._files import check_digest, read_json, read_weights
        from ._lora import ADAPTER_FILE, HEAD_FILE, PEFT_FILES, check_adapter_loaded
        from ._module import BagHead

        path = Path(dir_path)
        if not (path / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"`dir_path`: {path} is not a saved bitro adapter (no {ADAPTER_FILE}).")
        meta = read_json(path / ADAPTER_FILE, what="adapter's settings")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: adapter format {meta.get('format')!r}; this bitro reads format {FORMAT}.")
        if meta["base_identity"] != self.identity:
            raise ValueError(
                f"{path}: the adapter was trained on another base model (backbone {meta['base_identity'][:12]}..., "
                f"this model's is {self.identity[:12]}...). Load it onto the model it was trained from."
            )
        name = name or meta["name"]
        if name in self.adapters:
            raise ValueError(f"`name`: the model already has an adapter {name!r}; pass another name.")
        # read and check every file before the model changes, so a damaged adapter leaves it as it was
        head_state, head_meta = read_weights(path / HEAD_FILE, what="adapter's head")
        head_config = {"genes": {meta["kind"]: meta["genes"]}, "architecture": self.config["architecture"]}
        check_digest(head_meta, head_config, weights=path / HEAD_FILE, config_path=path / ADAPTER_FILE)
        head = BagHead(self.config["architecture"]["hidden"], len(meta["genes"]))
        try:
            head.load_state_dict(head_state)
        except RuntimeError as err:
            raise ValueError(f"{path / HEAD_FILE}: the head does not match {ADAPTER_FILE} ({err}).") from err
        read_json(path / PEFT_FILES[0], what="LoRA settings")
        read_weights(path / PEFT_FILES[1], what="LoRA weights")
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.module, str(path), adapter_name=name)
        else:
            self.peft.load_adapter(str(path), adapter_name=name)
        check_adapter_loaded(self.peft, name, path)
        keep = {k: v for k, v in meta.items() if k not in ("genes", "hvg", "name", "kind")}
        self.register_adapter(name, kind=meta["kind"], genes=meta["genes"], hvg=meta["hvg"], head=head, meta=keep)
        return name

    def merge_adapter(self) -> None:
        """Merge the active LoRA adapter into the base weights, leaving one plain model (for deployment).

        Predictions are unchanged (up to float rounding); other adapters are dropped; :meth:`save`
        then writes an ordinary model.
        """
        if self.peft is None:
            raise ValueError("this model has no LoRA adapter to merge.")
        name = self.active_adapter
        entry = self.adapters[name]
        self.module = self.peft.merge_and_unload(adapter_names=[name])
        self.peft = None
        self.adapters = {}
        self.active_adapter = None
        self.config["merged_adapter"] = dict(entry["meta"], name=name)
        self.module.eval()


def build_module(config: dict) -> BiTroModule:
    """The network an ``architecture`` config describes (weights at initialisation)."""
    from ._module import BiTroModule

    a = config["architecture"]
    heads = {kind: len(genes) for kind, genes in config["genes"].items()}
    return BiTroModule(
        a["n_features"],
        0,
        heads=heads,
        hidden=a["hidden"],
        n_heads=a["n_heads"],
        n_gat=a["n_gat"],
        n_layers=a["n_layers"],
        dropout=a["dropout"],
    )


def check_state(module, state: dict, config: dict, path) -> None:
    """Clear errors for weights that do not match their config (other genes, other features, missing tensors)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            kind = name.split(".")[1] if name.startswith("heads.") else None
            what = (
                f"head {kind!r} has {state[name].shape[0]} genes but the config lists {len(config['genes'][kind])}"
                if kind is not None and state[name].ndim >= 1
                else f"{name} has shape {tuple(state[name].shape)}, the config implies {tuple(tensor.shape)}"
            )
            raise ValueError(f"{path}: weights do not match the config: {what}.")
