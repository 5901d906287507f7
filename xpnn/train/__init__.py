"""Training: the loop (``fit``, ``evaluate``, ``predict``), History, callbacks and checkpoints.

    loop.py        fit / evaluate / predict: fit's set-up, then one function per epoch and one per step
    session.py     TrainingSession: what a model remembers of its training (loss, optimizer, history ...)
    inputs.py      the user's x/y checked against the model and the loss before any step
    weights.py     class_weight / sample_weight checked and turned into one weight per sample
    monitor.py     device-side loss/accuracy sums read at a sync; the finite-weights check
    history.py     History: per-epoch metrics, written as JSON, CSV or a PNG curve
    callbacks.py   Callback (the interface the loop calls), EarlyStopping, ReduceLROnPlateau
    progress.py    fit's own callbacks, first in its list: progress bar, validation, epoch statistics,
                   the History's recording, the verbose-2 epoch line
    checkpoint.py  ModelCheckpoint: the callback that writes model files (the only one that imports io)

The loop sits below the model (:class:`xpnn.Sequential` calls it), the checkpoint callback above
the model files it writes; so this package's ``ModelCheckpoint`` is imported on first use.
The loop gets the data-parallel strategy from :func:`xpnn.distributed.active`.
"""
from typing import Any

from .callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from .history import History
from .loop import evaluate, fit, predict
from .session import TrainingSession

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint",
           "TrainingSession"]


def __getattr__(name: str) -> Any:
    if name in ("checkpoint", "ModelCheckpoint"):
        from .checkpoint import ModelCheckpoint  # the import also sets this package's ``checkpoint``
        return ModelCheckpoint if name == "ModelCheckpoint" else globals()["checkpoint"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
