"""ModelCheckpoint: the callback that writes a checkpoint after an epoch (through :func:`xpnn.save`,
atomically), holding everything an exact resume needs, and :meth:`ModelCheckpoint.resume`, which
reads it back. ``xpnn train`` writes its run's checkpoint with it too."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .. import backend, distributed
from ..io import load_checkpoint, save
from .callbacks import Callback, better, mode_for
from .history import History

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save the model after each epoch, or with ``save_best_only`` only when ``monitor`` improved.

    The file (written atomically by rank 0; never from NaN/inf weights, see :func:`xpnn.save`)
    holds the weights, the optimizer and its state, and in its metadata the epoch, the epoch's
    logs, the History, the host random generator's state and the state of each callback named
    in ``callbacks`` (``{name: callback}``, each with ``state_dict()``/``load_state_dict()``,
    such as EarlyStopping and ReduceLROnPlateau), plus ``metadata``. Put it after those callbacks
    in fit's list, so it saves what they did this epoch. :meth:`write` saves at any time (before
    the first epoch: the initial weights); :meth:`resume` reads the file back so that
    ``fit(..., initial_epoch=epoch)`` continues the run bit for bit.
    """

    def __init__(self, path: "str | os.PathLike[str]", monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", callbacks: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        self.path, self.monitor, self.save_best_only = Path(path), monitor, save_best_only
        self.mode = mode_for(monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.callbacks = dict(callbacks or {})
        for name, callback in self.callbacks.items():
            if not (hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")):
                raise TypeError(f"ModelCheckpoint: callback {name!r} ({type(callback).__name__}) has no "
                                f"state_dict()/load_state_dict() to save and resume")
        self.metadata = dict(metadata or {})
        #: the number of epochs the file on disk has seen (0: the initial weights), None before a write
        self.saved_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            value = logs.get(self.monitor, math.nan)
            if math.isnan(value) or not better(self.mode, value, self.best, 0.0):
                return
            self.best = value
        self.write(epoch + 1, logs)

    def write(self, epoch: int, logs: dict[str, float], model: Any = None) -> None:
        """Write the checkpoint of ``model`` (default: the one ``fit`` trains) after ``epoch`` epochs,
        rank 0 only. Before ``fit``, ``write(0, {}, model)`` keeps the initial weights, with the
        optimizer set as ``model.optimizer``, so that a run stopped in its first epoch can resume."""
        if model is not None:
            self.model = model
        if not distributed.is_main():
            return
        history = self.model.history
        save(self.model, self.path, optimizer=self.model.optimizer,
             metadata={**self.metadata, "epoch": epoch, "logs": logs,
                       "history": (history if history is not None else History()).to_dict(),
                       "rng_state": backend.rng_state(),
                       "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()}})
        self.saved_epoch = epoch

    def resume(self, device: "backend.Device | str | None" = None) -> tuple[Any, int]:
        """``(model, epoch)`` from this checkpoint's file (see :meth:`restore`). Train on with
        ``model.fit(..., epochs=N, initial_epoch=epoch, callbacks=[..., this checkpoint])``."""
        model, optimizer, meta = load_checkpoint(self.path, device)
        return model, self.restore(model, optimizer, meta)

    def restore(self, model: Any, optimizer: Any, meta: Mapping[str, Any]) -> int:
        """Put back the training state of a checkpoint already loaded (``xpnn.load_checkpoint``):
        ``model.optimizer`` and ``model.history``, the host random generator where it was, and the
        state of each callback named in ``callbacks``; returns the epoch to pass as ``initial_epoch``.
        With ``save_best_only`` the file holds the best epoch, whose monitored value becomes the bar
        to beat. Raises ValueError if the file lacks what a resume needs or holds a damaged state, and
        then changes nothing: each callback's state is first loaded into a (shallow) copy of it."""
        states = meta.get("callbacks")
        missing = [key for key in ("epoch", "history", "rng_state") if key not in meta]
        missing += [f"the state of callback {name!r}" for name in self.callbacks
                    if not (isinstance(states, dict) and name in states)]
        if optimizer is None or missing:
            lacks = (["the optimizer state"] if optimizer is None else []) + missing
            raise ValueError(f"{self.path} cannot resume a run: it lacks {', '.join(lacks)} "
                             f"(a file written by xpnn.ModelCheckpoint has them)")
        history = History.from_dict(meta["history"])
        for name, callback in self.callbacks.items():  # every state checked before any is loaded
            copy.copy(callback).load_state_dict(states[name])
        backend.set_rng_state(meta["rng_state"])
        for name, callback in self.callbacks.items():
            callback.load_state_dict(states[name])
        model.optimizer, model.history = optimizer, history
        logs = meta.get("logs")
        best = logs.get(self.monitor) if isinstance(logs, dict) else None
        if self.save_best_only and isinstance(best, (int, float)) and math.isfinite(best):
            self.best = float(best)
        self.saved_epoch = int(meta["epoch"])
        return self.saved_epoch
