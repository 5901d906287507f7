"""Per-sample weights for ``fit``: ``class_weight`` and ``sample_weight`` checked and combined on the
host, once, before training (Keras' semantics: each sample's loss is multiplied by its weight and
the sum divided by the batch size; with both, the two weights multiply)."""
from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

from ..losses import Loss
from .inputs import host_array

__all__ = ["sample_weights", "balanced_class_weight"]


def balanced_class_weight(labels: np.ndarray, classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, ``n_samples / (n_classes * count)`` for each class;
    ValueError naming a class that has no samples (its weight would be infinite)."""
    counts = np.bincount(labels, minlength=classes)
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        raise ValueError(f"class_weight='balanced': class {', '.join(map(str, absent[:5]))} has no samples in y, so "
                         f"its weight n_samples / (n_classes * 0) is undefined; give the weights as a mapping")
    return len(labels) / (classes * counts)


def _class_labels(loss: Loss, y: np.ndarray, classes: int) -> np.ndarray:
    """Each sample's class (an integer array), or ValueError if the targets have none."""
    if loss.task == "multiclass":
        if y.ndim == 2:
            if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
                raise ValueError("class_weight needs a class per sample, but y holds soft targets (rows that are not "
                                 "one-hot); use sample_weight instead")
            return np.argmax(y, axis=1)
        return y.astype(np.int64)
    if loss.task == "binary":
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("class_weight needs a class per sample, but y holds values other than 0 and 1; use "
                             "sample_weight instead")
        return y.reshape(len(y), -1)[:, 0].astype(np.int64)
    raise ValueError(f"class_weight needs a classification loss, got {loss.describe()}; use sample_weight instead")


def _class_table(class_weight: Any, labels: np.ndarray, classes: int) -> np.ndarray:
    """One weight per class from a mapping ``{class: weight}`` (classes not named weigh 1) or "balanced"."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a mapping {{class: weight}} or 'balanced', got {class_weight!r}")
        return balanced_class_weight(labels, classes)
    if not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be a mapping {{class: weight}} or 'balanced', got "
                         f"{type(class_weight).__name__}")
    table = np.ones(classes)
    present = np.bincount(labels, minlength=classes) > 0
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < classes:
            raise ValueError(f"class_weight: {key!r} is not a class of this model (integers 0 to {classes - 1})")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
            raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {weight!r}")
        if not present[key]:
            raise ValueError(f"class_weight names class {key}, which has no samples in y")
        table[key] = float(weight)
    return table


def _checked_sample_weight(sample_weight: Any, n: int) -> np.ndarray:
    w = host_array(sample_weight, "sample_weight")
    if w.ndim != 1 or len(w) != n:
        raise ValueError(f"sample_weight must hold one number per sample, shape ({n},), got shape {w.shape}")
    if w.dtype.kind not in "iuf":
        raise ValueError(f"sample_weight must hold numbers, got dtype {w.dtype}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"sample_weight must be finite and >= 0, got {w[bad[0]]} at index {bad[0]}")
    return w.astype(np.float64)


def sample_weights(loss: Loss, y: np.ndarray, output_shape: tuple[int, ...], class_weight: Any = None,
                   sample_weight: Any = None) -> np.ndarray | None:
    """Each sample's weight (host float64, one per row of ``y``), or None when neither is given.

    ``output_shape`` is the model's (for the number of classes: its last axis, 2 for a single logit).
    Raises ValueError, naming the problem, for weights of the wrong length, negative or not finite,
    a class that is not the model's or absent from ``y``, or targets without classes.
    """
    weights = None if sample_weight is None else _checked_sample_weight(sample_weight, len(y))
    if class_weight is not None:
        classes = 2 if loss.task == "binary" else int(output_shape[-1])
        labels = _class_labels(loss, y, classes)
        by_sample = _class_table(class_weight, labels, classes)[labels]
        weights = by_sample if weights is None else weights * by_sample
    return weights
