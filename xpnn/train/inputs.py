"""The user's ``x``/``y`` checked against the model and the loss before a step runs.

Host data stays on the host (the loader moves each batch); an array already on the model's
device stays there, is checked there in bounded slices, and is read back only to word an error.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .. import backend
from ..losses import Loss
from ..validation import check_inputs, check_lengths, check_targets


def host_array(array: Any, name: str) -> np.ndarray:
    """A NumPy view/copy of user data (lists, NumPy arrays, or arrays on any device)."""
    if isinstance(array, np.ndarray):
        return array
    try:
        return backend.to_numpy(array)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(array).__name__}") from exc


def on_models_device(model: Any, array: Any) -> bool:
    """Whether ``array`` is a (non-NumPy) array already on the model's device."""
    return not isinstance(array, np.ndarray) and backend.is_array(array) and backend.device_of(array) == model.device


#: Elements per operation of the NaN/inf check of data already on the device (16 Mi: 64 MiB of
#: float32), so its temporaries stay small however large the data set on the GPU is.
CHECK_SLICE_ELEMENTS = 2 ** 24


def _within_limit(array: Any, limit: float) -> bool:
    """Whether every value of the floating-point ``array`` is finite and at most ``limit`` in magnitude.

    Checked in slices of whole samples of about :data:`CHECK_SLICE_ELEMENTS` elements (one sample
    where a sample is larger), the slices' flags combined on the device and read once at the end.
    """
    xp = array_namespace(array)
    per_sample = math.prod(int(n) for n in array.shape[1:])
    rows = max(1, CHECK_SLICE_ELEMENTS // max(per_sample, 1))
    flag = None
    for lo in range(0, int(array.shape[0]), rows):
        part = xp.all(xp.abs(array[lo:lo + rows]) <= limit)  # False for NaN too
        flag = part if flag is None else flag & part
    return bool(flag)


def checked_inputs(model: Any, array: Any, name: str) -> Any:
    """User inputs checked (:func:`check_inputs`): an array already on the model's device as it is,
    so it never goes to the host and back (one flag is read for the NaN/inf check), else on the host."""
    if not on_models_device(model, array):
        host = host_array(array, name)
        check_inputs(host, name, model.dtype)
        return host
    xp = array_namespace(array)
    suspect = array.ndim == 0 or int(array.shape[0]) == 0 or xp.isdtype(array.dtype, "complex floating")
    if not suspect and xp.isdtype(array.dtype, "real floating"):  # NaN, inf or beyond the model's dtype
        suspect = not _within_limit(array, float(np.finfo(model.dtype).max))
    if suspect:
        check_inputs(backend.to_numpy(array), name, model.dtype)  # the host copy only to word the error
    return array


def checked_data(model: Any, x: Any, y: Any, loss: Loss, names: tuple[str, str]) -> tuple[Any, Any]:
    """``x``/``y`` checked against the model and the loss (before any step runs): host arrays, or
    the arrays themselves where they are on the model's device (the labels are read once to check)."""
    x_data = checked_inputs(model, x, names[0])
    y_data = y if on_models_device(model, y) else host_array(y, names[1])
    y_host = host_array(y_data, names[1])
    check_lengths(range(int(x_data.shape[0])), y_host, *names)  # only the lengths are compared
    out_shape = model.output_shape(tuple(int(d) for d in x_data.shape))  # checks; records nothing
    check_targets(loss, y_host, out_shape, names[1], model.dtype)
    return x_data, y_data
