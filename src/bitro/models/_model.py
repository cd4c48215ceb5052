"""The user-facing :class:`BiTro` model: network + the settings it was trained with, save and load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from bitro._logging import logger

from ._adapters import AdapterMixin

if TYPE_CHECKING:
    from ._data import Bags
    from ._module import BiTroModule

FORMAT = 1
"""Version of the saved layout (``config.json`` + ``model.safetensors``); bumped when it changes."""
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
WEIGHTS_DIGEST_KEY = "weights_sha256"
"""``config.json`` key of the sha256 of the ``model.safetensors`` saved with it."""
REQUIRED_KEYS = ("architecture", "genes", "hvg", "features", "training")
"""``config.json`` entries (JSON objects) every model needs."""


class Prediction(NamedTuple):
    """What :meth:`BiTro.predict_bags` returns (log1p(CP10k), clipped at 0)."""

    bags: np.ndarray
    cells: np.ndarray
    weight: np.ndarray
    bags_std: np.ndarray | None = None
    cells_std: np.ndarray | None = None


class BiTro(AdapterMixin):
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

    Examples
    --------
    >>> import bitro as bt
    >>> model = bt.models.default_model()
    >>> model.head, len(model.genes)
    ('spot', 50)
    """

    def __init__(self, module: BiTroModule, config: dict[str, Any], history: pd.DataFrame | None = None) -> None:
        self.module = module
        self.config = config
        self.history = history if history is not None else pd.DataFrame(columns=["epoch", "train_loss", "val_loss"])
        self._init_adapters()

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
    def predict_bags(
        self, bags: Bags, *, head: str | None = None, batch_size: int = 64, n_samples: int = 0, _base: bool = False
    ) -> Prediction:
        """Bag and cell predictions (log1p CP10k) of one section or slide, streamed by chunks of sequences.

        A cell's prediction is the head's output, unscaled and clipped at 0 (a linear head can
        extrapolate below the smallest possible log1p(CP10k)); a bag's prediction is the
        attention-weighted mean of its cells' predictions. With ``n_samples > 0`` the network also
        runs ``n_samples`` times with dropout on (Monte Carlo dropout, seeded) and the standard
        deviation of those predictions is the model's uncertainty of each cell and bag.

        Returns
        -------
        :class:`Prediction`: ``bags`` ``(n_bags, G)`` (NaN for a bag without a cell), ``cells``
        ``(n_cells, G)``, ``weight`` ``(n_cells,)`` (pooling weight within the cell's bag, NaN for
        cells in no bag), and ``bags_std`` / ``cells_std`` (``None`` without samples).
        """
        import torch

        from ._data import collate, sequence_arrays
        from ._module import empty_pool_state, merge_pool_rows, pool_state

        head = head or self.head
        active = self.adapters.get(self.active_adapter) if self.active_adapter is not None else None
        if not _base and active is not None and head != active.kind:
            # another label kind's head belongs to the base backbone: run it without the active adapter
            with self.peft.disable_adapter():
                return self.predict_bags(bags, head=head, batch_size=batch_size, n_samples=n_samples, _base=True)
        module = self.module
        device = next(module.parameters()).device
        mod_head = module.heads[head]
        mean, std = mod_head.target_mean.double(), mod_head.target_std.double()
        n_cells, g = len(bags.x), len(mean)
        cell_pred = np.full((n_cells, g), np.nan, np.float32)
        cell_logit = np.full(n_cells, -np.inf, np.float64)
        cell_std = np.full((n_cells, g), np.nan, np.float32) if n_samples else None
        seqs = [s for s in range(len(bags.seq_cells)) if len(bags.seq_cells[s])]
        # online-softmax pooling state of every bag, for the prediction and for each MC sample; a batch
        # pools over its own bags only and merges those rows (batch-sized work, not bag-count-sized)
        state = empty_pool_state(bags.n_bags, g, device)
        sample_states = [empty_pool_state(bags.n_bags, g, device) for _ in range(n_samples)]

        def values(batch):
            expression, logits = module.cells(batch, head)
            unscaled = (expression.double() * std.to(device) + mean.to(device)).clamp(min=0.0)
            return unscaled, logits.double()

        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the dropout masks of the samples: the same uncertainty on every run
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start : start + batch_size]
                rows, local = np.unique(bags.seq_bag[chunk], return_inverse=True)
                batch = collate([sequence_arrays(bags, s) for s in chunk], local, len(rows))
                batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
                rows = torch.from_numpy(rows).to(device)
                module.eval()
                unscaled, logits = values(batch)
                merge_pool_rows(state, rows, pool_state(unscaled, logits, batch["bag"], len(rows)))
                cells_np, logits_np = unscaled.cpu().numpy(), logits.cpu().numpy()
                for i, s in enumerate(chunk):
                    m = len(bags.seq_cells[s])
                    cell_pred[bags.seq_cells[s]] = cells_np[i, :m]
                    cell_logit[bags.seq_cells[s]] = logits_np[i, :m]
                if n_samples:
                    module.train()  # dropout on (the network has no batch norm)
                    # a cell is in one sequence: its samples all come in this batch, so its spread is
                    # summed here (batch-sized), not in float64 arrays over every cell of the slide
                    total = square = 0.0
                    for t in range(n_samples):
                        sampled, sampled_logits = values(batch)
                        merge_pool_rows(
                            sample_states[t], rows, pool_state(sampled, sampled_logits, batch["bag"], len(rows))
                        )
                        sampled = sampled.cpu().numpy()
                        total, square = total + sampled, square + sampled**2
                    with np.errstate(invalid="ignore"):
                        var = square / n_samples - (total / n_samples) ** 2
                    spread = np.sqrt(np.maximum(var, 0)).astype(np.float32)
                    for i, s in enumerate(chunk):
                        cell_std[bags.seq_cells[s]] = spread[i, : len(bags.seq_cells[s])]
            module.eval()
        bag_pred = np.full((bags.n_bags, g), np.nan, np.float32)
        weight = np.full(n_cells, np.nan, np.float32)
        bag_std = None
        if seqs:
            denom, num, bag_max = (t.cpu().numpy() for t in state)
            with np.errstate(invalid="ignore", divide="ignore"):
                bag_pred = (num / denom[:, None]).astype(np.float32)
            cell_bag = np.full(n_cells, -1, np.int64)
            for s in seqs:
                cell_bag[bags.seq_cells[s]] = bags.seq_bag[s]
            ok = cell_bag >= 0
            weight[ok] = np.exp(cell_logit[ok] - bag_max[cell_bag[ok]]) / denom[cell_bag[ok]]
        if n_samples and seqs:
            with np.errstate(invalid="ignore", divide="ignore"):
                samples = np.stack([(st[1] / st[0][:, None]).cpu().numpy() for st in sample_states])
                bag_std = samples.std(axis=0).astype(np.float32)
            cell_std[~np.isfinite(cell_pred).all(axis=1)] = np.nan
        elif n_samples:
            cell_std = None
        return Prediction(bag_pred, cell_pred, weight, bag_std, cell_std)

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
        from bitro._files import file_digest, write_json, write_weights
        from bitro._store import replace_folder

        if self.peft is not None:
            raise ValueError(
                f"this model holds LoRA adapters {list(self.adapters)}: save each with save_adapter() next to the "
                "base model's folder, or merge_adapter() first to save one plain model."
            )
        path = Path(dir_path).expanduser()
        if path.exists() and not overwrite:
            raise FileExistsError(f"`dir_path`: {path} already exists; pass overwrite=True to replace it.")
        config = dict(self.config, format=FORMAT, bitro_version=str(__version__))
        config["history"] = self.history.replace({np.nan: None}).to_dict(orient="list")
        with replace_folder(path, overwrite=overwrite, owned={CONFIG_FILE, WEIGHTS_FILE}) as tmp:
            write_weights(self.module.state_dict(), tmp / WEIGHTS_FILE, config=config, fmt=FORMAT)
            config[WEIGHTS_DIGEST_KEY] = file_digest(tmp / WEIGHTS_FILE)  # ties config.json to these weights
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
        from bitro._files import check_digest, check_file_digest, read_json, read_weights

        from ._lora import ADAPTER_FILE

        path = Path(dir_path).expanduser()
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"`dir_path`: {path} is not a saved BiTro model (expected {CONFIG_FILE} and {WEIGHTS_FILE})."
            )
        paths = [] if adapter is None else [adapter] if isinstance(adapter, str | os.PathLike) else list(adapter)
        for p in paths:  # named as this call's argument, before any weights are read
            if not (Path(p).expanduser() / ADAPTER_FILE).is_file():
                raise FileNotFoundError(f"`adapter`: {p} is not a saved bitro adapter (no {ADAPTER_FILE}).")
        config = read_json(path / CONFIG_FILE, what="model's settings")
        fmt = config.get("format")
        if fmt != FORMAT:
            raise ValueError(
                f"{path}: model format {fmt!r} (written by bitro {config.get('bitro_version', '?')}); this bitro "
                f"reads format {FORMAT}. Re-train or re-save the model with a matching bitro version."
            )
        check_config(config, path / CONFIG_FILE)
        history = pd.DataFrame(config.pop("history", {"epoch": [], "train_loss": [], "val_loss": []}))
        weights_sha256 = config.pop(WEIGHTS_DIGEST_KEY, None)  # older saves have none: accepted
        state, metadata = read_weights(path / WEIGHTS_FILE, what="model's weights")
        check_digest(metadata, config, weights=path / WEIGHTS_FILE, config_path=path / CONFIG_FILE)
        check_file_digest(path / WEIGHTS_FILE, weights_sha256, record=path / CONFIG_FILE)
        module = build_module(config)
        check_state(module, state, config, path)
        module.load_state_dict(state)
        module.to(device or "cpu").eval()
        model = cls(module, config, history.astype(float) if len(history) else None)
        names = [model.load_adapter(p) for p in paths]
        if names:
            model.set_adapter(names[0])
        return model


def check_config(config: dict, path) -> None:
    """Refuse a ``config.json`` without the settings a model needs, naming the file and the entries."""
    missing = [k for k in REQUIRED_KEYS if not isinstance(config.get(k), dict)]
    if missing:
        raise ValueError(
            f"{path}: the entries {missing} are missing or not JSON objects; the model's settings are damaged "
            "(expected those BiTro.save writes). Save the model again."
        )
    target = config["training"].get("target")
    if not isinstance(target, str) or target not in config["genes"]:
        raise ValueError(
            f"{path}: training.target is {target!r}, expected one of the heads {list(config['genes'])}; the model's "
            "settings are damaged. Save the model again."
        )


def build_module(config: dict) -> BiTroModule:
    """The network an ``architecture`` config describes (weights at initialisation), its settings checked."""
    from ._config import Architecture

    heads = {kind: len(genes) for kind, genes in config["genes"].items()}
    return Architecture(**config["architecture"]).build(heads)


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
