"""Callbacks: hooks the training loop calls at the start and end of the run and of each epoch.

The loop knows only this interface; what a callback does with the model (stop early, restore
weights, write a file) is its own business, so the loop never imports the file format.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

from ..optim.arguments import NON_NEGATIVE, number
from ..validation import check_integer

__all__ = ["Callback", "EarlyStopping", "ReduceLROnPlateau"]


class Callback:
    """Hooks into :func:`fit`. ``self.model`` is set at the start; set ``model.stop_training = True`` to stop.

    An epoch calls, on every callback in turn (fit's own first, see :mod:`.progress`, then the
    user's): ``on_epoch_begin``, ``on_sync`` at each read of the running
    metrics, ``on_steps_end`` when the steps are over, then ``on_epoch_end`` with the logs, which
    a callback may add to for the ones after it (validation adds ``val_*``).
    """

    model: Any = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """``logs``: ``epochs`` (the last epoch number) and ``initial_epoch`` (where this call of fit starts)."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Before the epoch's first step, with the optimizer's rate for the epoch set."""

    def on_sync(self, epoch: int, seen: int, logs: dict[str, float]) -> None:
        """The running ``loss`` (and ``accuracy``) were read from the device after ``seen`` samples
        (every ``SYNC_SECONDS`` at most, and once after the last step): no device work of its own."""

    def on_steps_end(self, epoch: int, seen: int, logs: dict[str, float]) -> None:
        """The epoch's steps are over, or one raised (the error follows): release what the epoch held."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, Any]) -> None: ...


def call_each(callbacks: Sequence[Callback], hook: str, *args: Any) -> None:
    """``callback.<hook>(*args)`` for each callback, in order."""
    for callback in callbacks:
        getattr(callback, hook)(*args)


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
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights.

    Its counters (and the best weights, with ``restore_best``) are in :meth:`state_dict`; loaded
    with :meth:`load_state_dict` before ``fit(..., initial_epoch=...)``, a resumed run stops
    where the uninterrupted one would (:class:`~xpnn.ModelCheckpoint` keeps them)."""

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
        self._resumed = False

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """A new run starts from nothing; a run resumed after :meth:`load_state_dict` keeps the state loaded."""
        if not self._resumed:
            self.best = math.inf if self.mode == "min" else -math.inf
            self.wait, self.best_state, self.best_epoch = 0, None, None
        self.stopped_epoch, self._resumed = None, False

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

    def state_dict(self) -> dict[str, Any]:
        """The counters as JSON (an infinite ``best``, before any epoch, as None) and, with
        ``restore_best``, the best weights as host arrays (a model file stores them as arrays)."""
        return {"best": self.best if math.isfinite(self.best) else None, "best_epoch": self.best_epoch,
                "wait": self.wait, "best_state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s record (checked; nothing changes on a bad one) for the next ``fit``."""
        owner = "EarlyStopping.load_state_dict"
        if not isinstance(state, Mapping) or set(state) != {"best", "best_epoch", "wait", "best_state"}:
            raise ValueError(f"{owner}: expected a record with best, best_epoch, wait and best_state, got "
                             f"{str(state)[:120]}")
        best = _finite_or_none(owner, state["best"])
        best_epoch = None if state["best_epoch"] is None else check_integer(owner, "best_epoch", state["best_epoch"], 0)
        wait = check_integer(owner, "wait", state["wait"], 0)
        best_state = state["best_state"]
        if best_state is not None and not (isinstance(best_state, Mapping) and all(
                isinstance(k, str) and isinstance(v, np.ndarray) for k, v in best_state.items())):
            raise ValueError(f"{owner}: best_state must be null or arrays by parameter name")
        self.best = (math.inf if self.mode == "min" else -math.inf) if best is None else best
        self.best_epoch, self.wait, self._resumed = best_epoch, wait, True
        self.best_state = None if best_state is None else dict(best_state)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs, then wait ``cooldown`` epochs; never below ``min_lr``.

    Keras' callback, arguments and state machine. It lowers the optimizer's ``lr_factor``, so it
    works on a schedule too (the schedule's curve is scaled from then on; ``min_lr`` bounds the
    rate at the moment of a reduction). Its counters are in :meth:`state_dict`; loaded with
    :meth:`load_state_dict` before ``fit(..., initial_epoch=...)``, a resumed run continues exactly
    (``xpnn train --plateau`` keeps them in the run's checkpoint).
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        owner = "ReduceLROnPlateau"
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{owner}: monitor must be the name of a logged metric, got {monitor!r}")
        self.factor = number(owner, "factor", factor, ("a number in (0, 1)", lambda v: 0.0 < v < 1.0))
        self.patience = check_integer(owner, "patience", patience, 0)
        self.cooldown = check_integer(owner, "cooldown", cooldown, 0)
        self.min_delta = number(owner, "min_delta", min_delta, NON_NEGATIVE)
        self.min_lr = number(owner, "min_lr", min_lr, NON_NEGATIVE)
        self.mode = mode_for(monitor, mode)
        self.monitor, self.verbose = monitor, verbose
        self._reset()
        self._resumed = False

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """A new run starts from nothing; a run resumed after :meth:`load_state_dict` keeps the state loaded."""
        if not self._resumed:
            self._reset()
        self._resumed = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"ReduceLROnPlateau monitors {self.monitor!r}, but the epoch logs only have "
                           f"{sorted(logs)}; pass validation_data or monitor 'loss'")
        current = logs[self.monitor]
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if better(self.mode, current, self.best, self.min_delta):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                self._reduce(epoch)

    def _reduce(self, epoch: int) -> None:
        optimizer = self.model.optimizer
        old = float(optimizer.lr)
        if old > self.min_lr:
            new = max(old * self.factor, self.min_lr)
            optimizer.lr_factor = optimizer.lr_factor * (new / old)
            self.cooldown_counter, self.wait = self.cooldown, 0
            if self.verbose:
                print(f"epoch {epoch + 1}: ReduceLROnPlateau reducing the learning rate to {optimizer.lr:.4g}",
                      flush=True)

    def state_dict(self) -> dict[str, Any]:
        """The counters, as JSON (an infinite ``best``, before any epoch, as None)."""
        return {"best": self.best if math.isfinite(self.best) else None, "wait": self.wait,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s counters (checked; nothing changes on a bad one) for the next ``fit``."""
        owner = "ReduceLROnPlateau.load_state_dict"
        if not isinstance(state, Mapping) or set(state) != {"best", "wait", "cooldown_counter"}:
            raise ValueError(f"{owner}: expected a record with best, wait and cooldown_counter, got {state!r}")
        best = _finite_or_none(owner, state["best"])
        wait = check_integer(owner, "wait", state["wait"], 0)
        cooldown_counter = check_integer(owner, "cooldown_counter", state["cooldown_counter"], 0)
        self._reset()
        if best is not None:
            self.best = best
        self.wait, self.cooldown_counter, self._resumed = wait, cooldown_counter, True


def _finite_or_none(owner: str, best: Any) -> float | None:
    """A saved ``best``: a finite number, or None before any epoch; ValueError naming ``owner`` otherwise."""
    if best is not None and (isinstance(best, bool) or not isinstance(best, numbers.Real) or not math.isfinite(best)):
        raise ValueError(f"{owner}: best must be a finite number or null, got {best!r}")
    return None if best is None else float(best)
