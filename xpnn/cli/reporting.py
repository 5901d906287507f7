"""Scores and report files: a model's class probabilities on images, the confusion-matrix files,
and the rule that a report that cannot be written is a warning, never the loss of a run."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..files import atomic_write
from ..train import predict
from .dataset import SCALE


def model_scores(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    return metrics.probabilities(predict(model, x, batch_size=batch_size, scale=SCALE))


def write_report(what: str, write: Any) -> None:
    """Draw or write one report file; a failure is a warning, never the loss of a finished run."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - plots and reports must not lose the run they describe
        warnings.warn(f"could not write {what}: {type(exc).__name__}: {exc}")


def write_confusion(cm: np.ndarray, classes: Sequence[str], out: Path, title: str) -> None:
    def write_text() -> None:
        text = f"{metrics.format_confusion_matrix(cm, classes)}\n\n{metrics.classification_report(cm, classes)}\n"
        with atomic_write(out / "confusion_matrix.txt", "w") as f:
            f.write(text)

    write_report("confusion_matrix.txt", write_text)
    write_report("confusion_matrix.png",
            lambda: metrics.plot_confusion_matrix(cm, str(out / "confusion_matrix.png"), classes, title=title))
