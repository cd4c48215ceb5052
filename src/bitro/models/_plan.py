"""The Lightning training plan of :class:`~bitro.models.BiTroModule` and the callbacks ``fit`` uses."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from ._module import BiTroModule


class TrainingPlan(L.LightningModule):
    """Mean squared error between pooled bag expression and standardised bag targets, AdamW.

    Only parameters with ``requires_grad`` are optimised, so a frozen backbone (LoRA, head-only
    transfer) stays exactly as it was.

    Examples
    --------
    >>> import bitro as bt
    >>> net = bt.models.BiTroModule(n_features=21, n_genes=10, heads=("spot",), hidden=32)
    >>> plan = bt.models.TrainingPlan(net, "spot", lr=1e-3)
    >>> type(plan.configure_optimizers()).__name__
    'AdamW'
    """

    def __init__(self, module: BiTroModule, head: str, *, lr: float = 1e-3, weight_decay: float = 1e-2) -> None:
        super().__init__()
        self.module = module
        self.head = head
        self.lr, self.weight_decay = lr, weight_decay

    def _loss(self, batch) -> torch.Tensor:
        pred = self.module(batch, self.head)
        return F.mse_loss(pred, batch["y"])

    def training_step(self, batch, batch_idx):
        """Loss of one batch of bags, logged per epoch as ``train_loss``."""
        loss = self._loss(batch)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=int(batch["n_bags"]),
            **self._sync,
        )
        return loss

    def validation_step(self, batch, batch_idx):
        """Validation loss of one batch, logged per epoch as ``val_loss``."""
        loss = self._loss(batch)
        self.log(
            "val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=int(batch["n_bags"]), **self._sync
        )

    @property
    def _sync(self) -> dict:
        # several processes (DDP): epoch losses averaged over all of them, so every rank stops and keeps the same epoch
        return {"sync_dist": self.trainer.world_size > 1}

    def configure_optimizers(self):
        """AdamW over the parameters that require gradients."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


class History(L.Callback):
    """Keeps the epoch losses (``train_loss``, ``val_loss``) and the weights of the best validation epoch."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.path: Path | None = None
        """Where rank 0 leaves the history at the end of a run in worker processes (the caller reads it back)."""

    def _value(self, trainer, name: str) -> float:
        value = trainer.callback_metrics.get(name)
        return float(value) if value is not None else math.nan

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = self.rows.setdefault(trainer.current_epoch, {"epoch": trainer.current_epoch})
        row["train_loss"] = self._value(trainer, "train_loss")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        loss = self._value(trainer, "val_loss")
        self.rows.setdefault(trainer.current_epoch, {"epoch": trainer.current_epoch})["val_loss"] = loss
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, trainer.current_epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.module.state_dict().items()})

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path is not None and trainer.world_size > 1 and trainer.is_global_zero:
            import torch

            torch.save(self.state_dict(), self.path)

    def state_dict(self) -> dict:
        """Losses so far and the best weights, saved in a checkpoint so a resumed run keeps them."""
        return {
            "rows": {int(k): dict(v) for k, v in self.rows.items()},
            "best_loss": float(self.best_loss),
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = {int(k): dict(v) for k, v in state["rows"].items()}
        self.best_loss, self.best_epoch, self.best_state = state["best_loss"], state["best_epoch"], state["best_state"]


class Checkpoint(L.Callback):
    """The whole training state to ``path`` after each epoch, written beside it and renamed (never half a file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # validation and early stopping ran before this hook: the saved state is a whole epoch
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


class SigIntGate(L.Callback):
    """Raises a pending Ctrl-C at the next batch, never inside an epoch's end hooks.

    The history and the checkpoint are both written at an epoch's end: an interrupt between them
    would count an epoch the checkpoint does not hold, and the resumed run would train it again.
    """

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error
        self.pending = False

    def on_train_batch_start(self, *args, **kwargs) -> None:
        if self.pending:
            raise self.error

    on_validation_batch_start = on_train_batch_start


class Resample(L.Callback):
    """Tells the training dataset the epoch, so cell and tile sub-samples are re-drawn each epoch."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.dataset.epoch = trainer.current_epoch
