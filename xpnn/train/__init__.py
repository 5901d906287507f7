"""Training: the loop (``fit``, ``evaluate``, ``predict``), History and callbacks.

    loop.py        fit / evaluate / predict; the step, progress bar, validation, callbacks calls
    inputs.py      the user's x/y checked against the model and the loss before any step
    weights.py     class_weight / sample_weight checked and turned into one weight per sample
    monitor.py     device-side loss/accuracy sums read at a sync; the finite-weights check
    history.py     History: per-epoch metrics, written as JSON, CSV or a PNG curve
    callbacks.py   Callback (the interface the loop calls), EarlyStopping, ReduceLROnPlateau
    checkpoint.py  ModelCheckpoint: the callback that writes model files (the only one that imports io)

``Sequential.fit`` and friends call :mod:`.loop`; the loop gets the data-parallel strategy from
:func:`xpnn.distributed.active`.
"""
from .callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from .checkpoint import ModelCheckpoint
from .history import History
from .loop import evaluate, fit, predict

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"]
