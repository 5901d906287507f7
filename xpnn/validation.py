"""Host-side checks of user data, run once before training or prediction starts, and the one
check of an integer argument (a layer's width, a batch size, an optimizer's step count ...).

They run on NumPy copies or Python numbers, never inside a training step, and each error names
the argument, what was expected and what was received, before any parameter changes.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import DataError, ShapeError

__all__ = ["check_inputs", "check_targets", "check_lengths", "check_integer"]


def check_integer(owner: str, name: str, value: Any, low: int = 1) -> int:
    """``value`` as a Python int, if it is an integer (a NumPy one too, never a bool) of at least
    ``low``; else a ValueError naming ``owner`` and ``name``, with "a positive integer" for ``low`` 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{owner}: {name} must be {wanted}, got {value!r}")
    return int(value)


def check_inputs(x: np.ndarray, name: str = "x", dtype: str | None = None) -> None:
    """Non-empty, real (not complex) numbers, free of NaN and inf, and (with ``dtype``, the
    model's float dtype) small enough to stay finite when cast to it."""
    if x.ndim == 0:
        raise ShapeError(f"{name} must be a batch of samples (first axis = samples), got a scalar")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty: shape {x.shape}, expected at least one sample")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{name} is complex (dtype {x.dtype}); xpnn trains on real numbers: pass x.real, "
                        f"np.abs(x), or the real and imaginary parts as separate features")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{name} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        what = "NaN/inf value(s)"
        if not bad.any() and dtype is not None and np.finfo(dtype).max < np.finfo(x.dtype).max:
            bad = np.abs(x) > np.finfo(dtype).max
            what = f"value(s) too large for {dtype} (beyond {np.finfo(dtype).max:.3g}, they would become inf)"
        if bad.any():
            count = int(bad.sum())
            first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
            raise DataError(f"{name} contains {count} {what}; the first is in sample {first}")


def check_lengths(x: np.ndarray, y: np.ndarray, x_name: str = "x", y_name: str = "y") -> None:
    if len(x) != len(y):
        raise DataError(f"{x_name} and {y_name} have different lengths: {len(x)} samples in {x_name}, "
                        f"{len(y)} in {y_name}")


def check_targets(loss: Any, y: np.ndarray, output_shape: tuple[int, ...], name: str = "y",
                  dtype: str | None = None) -> None:
    """Targets fit the loss and the model's output: label range, one-hot width and range, element count."""
    check_inputs(y, name, dtype)
    loss_name = type(loss).__name__
    per_sample = int(np.prod(output_shape[1:]))
    if loss.task == "multiclass":
        classes = output_shape[-1]
        if y.ndim == 1:
            if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
                raise DataError(f"{loss_name}: 1-D {name} must be integer class labels, got dtype {y.dtype}")
            if y.min() < 0 or y.max() >= classes:
                raise DataError(f"{loss_name}: labels in {name} must be in [0, {classes - 1}] for a model with "
                                f"{classes} outputs, got values from {y.min()} to {y.max()}")
        elif y.ndim == 2:
            if y.shape[1] != classes:
                raise ShapeError(f"{loss_name}: one-hot {name} has {y.shape[1]} columns, the model has {classes} "
                                 f"outputs")
            if y.min() < 0 or y.max() > 1:
                raise DataError(f"{loss_name}: one-hot (or soft) {name} must hold probabilities in [0, 1], got "
                                f"values from {y.min()} to {y.max()}")
        else:
            raise ShapeError(f"{loss_name}: {name} must be labels (N,) or one-hot (N, {classes}), got shape {y.shape}")
        return
    if y.size != len(y) * per_sample:
        raise ShapeError(f"{loss_name}: {name} of shape {y.shape} does not match model outputs of shape "
                         f"(N, {', '.join(map(str, output_shape[1:]))})")
    if loss.task == "binary" and (y.min() < 0 or y.max() > 1):
        raise DataError(f"{loss_name}: labels in {name} must be in [0, 1], got values from {y.min()} to {y.max()}")
