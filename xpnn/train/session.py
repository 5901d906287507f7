"""TrainingSession: what a model remembers about its training, kept apart from its layers.

The layers (a composition of children, :class:`xpnn.layers.Sequential`) know how to compute;
the session knows how they were trained: the loss and optimizer ``fit`` used (and continues
with), the history of the run, the metadata a model file carried, the stop flag callbacks set,
and the sample shape recorded for export and summaries. :class:`xpnn.Sequential` holds one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..losses import Loss
from .history import History

__all__ = ["TrainingSession"]


@dataclass
class TrainingSession:
    """The training state of one model; ``xpnn.Sequential`` reads and writes it through
    ``model.loss``, ``model.optimizer``, ``model.history``, ``model.metadata``,
    ``model.stop_training`` and ``model.input_shape``."""

    #: the loss the last ``fit`` used (or a model file named); ``evaluate`` defaults to it
    loss: Loss | None = None
    #: the optimizer the last ``fit`` used, with its state; the next ``fit`` continues with it
    optimizer: Any = None
    #: the per-epoch metrics of the run so far (None before the first ``fit``)
    history: History | None = None
    #: free JSON-able data a model file carried (``xpnn train`` writes classes, settings, epoch ...)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: set by a callback (EarlyStopping) to end ``fit`` after the current epoch
    stop_training: bool = False
    #: one sample's shape (no batch axis), recorded once: by the layers themselves, an explicit
    #: ``build``, a model file, the first ``fit`` or the first call; ONNX export and ``summary`` use it
    input_shape: tuple[int, ...] | None = None
