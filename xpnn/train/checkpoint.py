"""ModelCheckpoint: the callback that writes the model file after an epoch (through :func:`xpnn.save`)."""
from __future__ import annotations

import math

from .. import distributed
from ..io import save
from .callbacks import Callback, better, mode_for

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save the model (atomically, see :func:`xpnn.save`) after each epoch, or only on improvement."""

    def __init__(self, path: str, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto") -> None:
        self.path, self.monitor, self.save_best_only = str(path), monitor, save_best_only
        self.mode = mode_for(monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if not distributed.is_main():
            return
        if self.save_best_only:
            value = logs.get(self.monitor, math.nan)
            if math.isnan(value) or not better(self.mode, value, self.best, 0.0):
                return
            self.best = value
        save(self.model, self.path, metadata={"epoch": epoch + 1, "logs": logs})
