"""A training run: the bags it trains on and the Lightning loop around :class:`TrainingPlan`.

Interruptible: Ctrl-C stops the run at once and raises :class:`TrainingInterrupted` (a
:class:`KeyboardInterrupt`) to the caller, with the best weights so far restored into the module
(Lightning alone would call ``sys.exit(1)`` and lose them). Resumable: with ``checkpoint_dir`` the
full training state (weights, optimiser, epoch, early stopping, best weights) is written after
every epoch, atomically, and a later run with the same data and settings continues from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bitro._logging import logger

CHECKPOINT_FILE, RUN_FILE = "last.ckpt", "run.json"
"""Files of a ``checkpoint_dir``: Lightning's training state, and the identity of the run it belongs to."""


@dataclass
class TrainingData:
    """Samples, their bags, genes and the training / validation items of a training run."""

    ids: list[str]
    groups: list[str]
    train: list[int]
    val: list[int]
    how: str
    genes: list[str]
    hvg: list[str]
    sections: list
    train_items: list[tuple[int, int]]
    val_items: list[tuple[int, int]]
    settings: dict
    """Bag settings (``DEFAULT_DATA`` of the label kind, updated by the caller's ``data=``)."""
    features: dict
    """The cell features every sample has (method, names, parameters), as the model records them."""
    mpp: float | None = None
    """Median pixel size (µm/px) the readers recorded, or ``None``."""
    spots: dict | None = None
    """Median spot radius and pitch (µm) of spot samples (``None`` for slides)."""
    preprocessed: dict | None = None
    """The segmentation / assignment the samples' cells had (see ``bitro.tl._preprocess.preprocessed_with``)."""

    def target_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and std of the training bags' targets (std 1 for constant genes)."""
        y = np.stack([self.sections[si].y[b] for si, b in self.train_items])
        std = y.std(axis=0)
        return y.mean(axis=0), np.where(std > 1e-6, std, 1.0)

    def feature_stats(self, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and std over the cells of the training samples (std 1 for constant features).

        Accumulated by chunks of cells (Chan et al.'s pairwise update), so a cohort's features are
        never copied into one array; missing (NaN) values are left out, as ``np.nanmean`` would.
        """
        n_features = self.sections[0].x.shape[1]
        count, mean, m2 = np.zeros(n_features), np.zeros(n_features), np.zeros(n_features)
        for si in sorted({si for si, _ in self.train_items}):
            x = self.sections[si].x
            for start in range(0, len(x), chunk):
                block = np.asarray(x[start : start + chunk], dtype=np.float64)
                ok = np.isfinite(block)
                n_b = ok.sum(axis=0)
                sum_b = np.where(ok, block, 0).sum(axis=0)
                mean_b = np.divide(sum_b, n_b, out=np.zeros(n_features), where=n_b > 0)
                m2_b = (np.where(ok, block - mean_b, 0) ** 2).sum(axis=0)
                total = count + n_b
                delta = mean_b - mean
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(total > 0, mean + delta * n_b / total, 0.0)
                    m2 = np.where(total > 0, m2 + m2_b + delta**2 * count * n_b / total, 0.0)
                count = total
        # an all-missing feature has no mean: 0 (the value missing features get after scaling)
        std = np.sqrt(np.divide(m2, count, out=np.zeros(n_features), where=count > 0))
        return mean, np.where(std > 1e-8, std, 1.0)

    def split_record(self) -> dict:
        if self.how == "blocks":
            return {"samples": list(self.ids), "validation": "spatial blocks"}
        return {"samples": [self.ids[i] for i in self.train], "validation": [self.ids[i] for i in self.val]}


@dataclass(frozen=True)
class TrainingOptions:
    """How a run trains (the options :func:`bitro.tl.fit` and :func:`bitro.tl.transfer` share), checked."""

    lr: float
    weight_decay: float
    max_epochs: int
    patience: int
    batch_size: int
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    progress: bool | None = None
    checkpoint_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        from ._config import check_training

        check_training(
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            patience=self.patience,
            batch_size=self.batch_size,
        )

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any], *, default_batch_size: int) -> TrainingOptions:
        """The options among a caller's arguments (its ``locals()``); ``batch_size=None`` means the bag default."""
        from dataclasses import fields

        picked = {f.name: arguments[f.name] for f in fields(cls) if f.name in arguments}
        if picked.get("batch_size") is None:
            picked["batch_size"] = default_batch_size
        return cls(**picked)

    def identity(self) -> dict[str, Any]:
        """The options a resumed run must share with the run it continues (epochs and patience may grow)."""
        return {
            "seed": int(self.seed),
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "batch_size": int(self.batch_size),
        }


def train(module, head: str, td: TrainingData, options: TrainingOptions, *, identity: dict, build):
    """Train ``module``'s ``head`` on ``td`` and return ``build(history, History)``.

    On Ctrl-C the :class:`TrainingInterrupted` raised carries ``build(..., interrupted=True)`` as its
    ``model``: what was trained so far, with the best weights.
    """
    try:
        hist, history = run_training(module, head, td, options, identity={**identity, **options.identity()})
    except TrainingInterrupted as err:
        err.model = build(*err.result, interrupted=True)
        raise
    return build(hist, history)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training: the exception's ``model`` holds the model with the best weights so far.

    It is a :class:`KeyboardInterrupt`, so ``except KeyboardInterrupt as err: model = err.model``
    keeps what was trained, and code that does not catch it stops as on any Ctrl-C.

    Examples
    --------
    >>> import bitro as bt
    >>> try:
    ...     model = bt.tl.fit(sections)  # doctest: +SKIP
    ... except bt.models.TrainingInterrupted as err:
    ...     model = err.model  # the best weights before Ctrl-C
    """

    def __init__(self, message: str, *, epochs: int, result: tuple | None = None) -> None:
        super().__init__(message)
        self.epochs = epochs
        """Epochs finished before the interruption."""
        self.model = None
        """The model with the best weights so far (set by :func:`bitro.tl.fit` / :func:`bitro.tl.transfer`)."""
        self.result = result


class _SigInt(BaseException):
    """Raised by the SIGINT handler during training: not a KeyboardInterrupt, so Lightning re-raises it."""


@contextlib.contextmanager
def _catch_sigint(gate):
    """Turn Ctrl-C into a pending interrupt that ``gate`` raises (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if gate.pending:  # a second Ctrl-C: stop now
            raise _SigInt
        gate.pending = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _spawn_sharing(trainer):
    """Share tensors through files while a strategy spawns its processes (e.g. ``strategy="ddp_spawn"``).

    Spawned processes get the trainer pickled; torch's default sharing passes each tensor's storage as a
    file descriptor, which makes ``multiprocessing`` fail to start them ("bad value(s) in fds_to_keep").
    The file-system strategy does not; the caller's strategy is restored afterwards.
    """
    import torch.multiprocessing as mp

    launcher = getattr(trainer.strategy, "launcher", None)
    if getattr(launcher, "_start_method", None) != "spawn":  # one process, fork, or a script re-run (ddp)
        yield
        return
    previous = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        mp.set_sharing_strategy(previous)


def _check_run(checkpoint_dir: Path, identity: dict) -> Path | None:
    """The checkpoint to resume from, if ``checkpoint_dir`` holds one of this very run; else an error or None."""
    from bitro._store import write_json_atomic

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    run_file, ckpt = checkpoint_dir / RUN_FILE, checkpoint_dir / CHECKPOINT_FILE
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text())
        except ValueError as err:
            raise ValueError(f"{run_file}: not valid JSON ({err}); remove the folder to start afresh.") from err
        differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if differ:
            raise ValueError(
                f"`checkpoint_dir`: {checkpoint_dir} holds a run with other data or settings (differs in {differ}); "
                "pass another folder, or delete it to start afresh."
            )
        if ckpt.is_file():
            return ckpt
    write_json_atomic(run_file, identity)
    return None


def run_training(module, head: str, td: TrainingData, options: TrainingOptions, *, identity: dict | None = None):
    """Lightning training of ``module``'s ``head`` on ``td``; keeps the best validation weights.

    Returns the loss history (DataFrame) and the :class:`~bitro.models._plan.History` callback.
    Raises :class:`TrainingInterrupted` on Ctrl-C, with the best weights so far in ``module`` and
    ``(history DataFrame, History)`` as its ``result``.
    """
    import lightning as L

    from bitro._settings import settings

    from ._data import BagDataset, collate_bags
    from ._plan import Checkpoint, History, Resample, SigIntGate, TrainingPlan

    seed, batch_size, checkpoint_dir = options.seed, options.batch_size, options.checkpoint_dir
    mod_head = module.heads[head]
    y_mean = mod_head.target_mean.detach().cpu().numpy()
    y_std = mod_head.target_std.detach().cpu().numpy()
    sections = td.sections

    def dataset(items, train):
        targets = [((sections[si].y[b] - y_mean) / y_std).astype(np.float32) for si, b in items]
        return BagDataset(
            sections,
            items,
            targets,
            max_cells=int(td.settings["max_cells"]),
            max_tiles=int(td.settings["max_tiles"]),
            train=train,
            seed=seed,
        )

    def loader(ds, shuffle):
        import torch
        from torch.utils.data import DataLoader

        generator = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=generator)

    train_ds = dataset(td.train_items, True)
    loaders = {"train_dataloaders": loader(train_ds, True)}
    if td.val_items:
        loaders["val_dataloaders"] = loader(dataset(td.val_items, False), False)
    history, gate = History(), SigIntGate(_SigInt)
    callbacks = [gate, history, Resample(train_ds)]
    if td.val_items:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, mode="min"))
    resume = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir).expanduser()
        resume = _check_run(checkpoint_dir, identity or {})
        callbacks.append(Checkpoint(checkpoint_dir / CHECKPOINT_FILE))
        if resume is not None:
            logger.warning("resuming training from %s", resume)
    show = options.progress if options.progress is not None else settings.verbosity >= 1
    plan = TrainingPlan(module, head, lr=options.lr, weight_decay=options.weight_decay)
    module.train()  # a loaded or copied model is in eval mode; dropout (and LoRA dropout) must be on
    interrupted = False
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(), _quiet_lightning():
        # with worker processes (e.g. ddp_fork) the callbacks run there: rank 0 hands its history back here
        history.path = Path(root) / "history.pt"
        # Lightning's advice on DataLoader workers and on unused accelerators is not actionable here
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*validation_step` but have no `val_dataloader.*")  # val=None
        warnings.filterwarnings("ignore", ".*number of training batches.*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")  # Lightning 2.6 vs torch 2.13
        trainer = L.Trainer(
            max_epochs=options.max_epochs,
            accelerator=options.accelerator,
            devices=options.devices,
            strategy=options.strategy,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=bool(show),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            default_root_dir=root,
        )
        try:
            with _catch_sigint(gate), _spawn_sharing(trainer):
                if resume is not None:
                    trainer.fit(plan, ckpt_path=str(resume), weights_only=True, **loaders)
                else:
                    trainer.fit(plan, **loaders)
        except _SigInt:
            interrupted = True
        interrupted = interrupted or gate.pending  # Ctrl-C after the last batch still reaches the caller
        if not history.rows and history.path.is_file():
            history.load_state_dict(_load_history(history.path))
    if history.best_state is not None:
        module.load_state_dict(history.best_state)
    module.cpu().eval()
    hist = pd.DataFrame(sorted(history.rows.values(), key=lambda r: r["epoch"]))
    for col in ("epoch", "train_loss", "val_loss"):
        if col not in hist:
            hist[col] = np.nan
    hist = hist[["epoch", "train_loss", "val_loss"]]
    if interrupted:
        done = int(hist["train_loss"].notna().sum())
        where = f"; resume with the same call (checkpoint_dir={str(checkpoint_dir)!r})" if checkpoint_dir else ""
        raise TrainingInterrupted(
            f"training interrupted (Ctrl-C) after {done} of {options.max_epochs} epochs; the model with the best weights "
            f"so far is `err.model` (except KeyboardInterrupt as err){where}",
            epochs=done,
            result=(hist, history),
        )
    return hist, history


def _load_history(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up banners (GPU/TPU availability, tips) at INFO go away; its warnings stay."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
