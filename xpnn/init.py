"""Weight initializers, drawn on the host from xpnn's seeded generator and moved to the device.

Drawing on the host means one seed gives the same initial model on NumPy, CuPy or any other
backend. ``fan_in``/``fan_out`` count the inputs/outputs of one unit (for a convolution,
channels times kernel area).

Under :func:`placeholders` (what loading a model file uses) initializers draw nothing: they
return zeros that the file's weights replace, and refuse to allocate more than a byte budget,
so a small file declaring a huge layer is refused before the memory is taken.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterator

import numpy as np

from . import backend

__all__ = ["INITIALIZERS", "initialize", "placeholders"]


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _he_uniform(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def _glorot(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def _glorot_normal(rng, shape, fan_in, fan_out):
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def _lecun(rng, shape, fan_in, fan_out):
    """The deep-learning tutorials' ``np.random.randn(n, n_prev) / np.sqrt(n_prev)``."""
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def _normal(rng, shape, fan_in, fan_out):
    """The tutorials' first ``np.random.randn(n, n_prev) * 0.01``."""
    return rng.standard_normal(shape) * 0.01


def _zeros(rng, shape, fan_in, fan_out):
    return np.zeros(shape)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "he": _he, "he_uniform": _he_uniform, "glorot": _glorot, "glorot_normal": _glorot_normal,
    "lecun": _lecun, "normal": _normal, "zeros": _zeros,
}


class _Budget(threading.local):
    remaining: int | None = None


_budget = _Budget()


@contextlib.contextmanager
def placeholders(max_bytes: int) -> Iterator[None]:
    """Within this block :func:`initialize` draws nothing: it returns zeros (weights a file will
    replace), and raises ValueError before allocating once the arrays asked for would exceed
    ``max_bytes`` in total. Nothing is drawn from the generator, so its state is unchanged, and
    ``init`` is not looked up, so a model built with a custom initializer function (saved as
    ``"custom"``) loads."""
    previous, _budget.remaining = _budget.remaining, int(max_bytes)
    try:
        yield
    finally:
        _budget.remaining = previous


def _placeholder(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    count = 1
    for n in shape:
        count *= int(n)
    kind = np.dtype(dtype)
    if kind.kind != "f":
        raise ValueError(f"weights must have a floating-point dtype, got {dtype!r}")
    need = count * kind.itemsize
    remaining = _budget.remaining
    if need > remaining:
        raise ValueError(f"the architecture declares arrays larger than the weights stored for them "
                         f"({need:,} bytes asked for with {remaining:,} bytes of stored weights left)")
    _budget.remaining = remaining - need
    return np.zeros(shape, dtype=dtype)


def initialize(init: "str | Callable[..., np.ndarray]", shape: tuple[int, ...], fan_in: int, fan_out: int,
               dtype: str = "float32", device: "backend.Device | str | None" = None) -> Any:
    """A new array of ``shape`` drawn by initializer ``init`` on the active (or given) device.

    ``init`` is a name from :data:`INITIALIZERS` or a callable ``f(rng, shape, fan_in, fan_out)``
    returning a NumPy array.
    """
    if _budget.remaining is not None:
        return backend.to_device(_placeholder(tuple(shape), dtype), device)
    if isinstance(init, str):
        try:
            draw = INITIALIZERS[init]
        except KeyError:
            raise ValueError(f"unknown initializer {init!r}; choose one of {', '.join(INITIALIZERS)}") from None
    elif callable(init):
        draw = init
    else:
        raise TypeError(f"init must be a name or a callable, got {type(init).__name__}")
    host = np.asarray(draw(backend.host_rng(), tuple(shape), fan_in, fan_out))
    if host.shape != tuple(shape):
        raise ValueError(f"initializer {init!r} returned shape {host.shape}, expected {tuple(shape)}")
    return backend.to_device(host.astype(dtype), device)
