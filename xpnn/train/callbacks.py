"""Callbacks: hooks the training loop calls at the start and end of the run and of each epoch.

The loop knows only this interface; what a callback does with the model (stop early, restore
weights, write a file) is its own business, so the loop never imports the file format.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["Callback", "EarlyStopping"]


class Callback:
    """Hooks into :func:`fit`. ``self.model`` is set at the start; set ``model.stop_training = True`` to stop."""

    model: Any = None

    def on_train_begin(self, logs: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, Any]) -> None: ...


def better(mode: str, value: float, best: float, min_delta: float) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` ("min": lower is better)."""
    return value < best - min_delta if mode == "min" else value > best + min_delta


def mode_for(monitor: str, mode: str) -> str:
    """"min" or "max" for ``monitor``; "auto" means "max" for accuracies and "min" for the rest."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True) -> None:
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = mode_for(monitor, mode)
        self.restore_best = restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, np.ndarray] | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_state, self.best_epoch, self.stopped_epoch = 0, None, None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the epoch logs only have "
                           f"{sorted(logs)}; pass validation_data or monitor 'loss'")
        value = logs[self.monitor]
        if better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best and self.best_state is not None and self.stopped_epoch is not None:
            self.model.load_state_dict(self.best_state)
