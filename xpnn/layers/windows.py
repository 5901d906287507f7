"""Window helpers shared by Conv2D and the pooling layers: the kernel, stride and padding
arguments checked, the output size, each kernel offset's strided slices of the padded input,
padding, and adding a window's gradient back in place."""
from __future__ import annotations

from typing import Any, Iterator

import array_api_extra as xpx
from array_api_compat import array_namespace

from ..backend import native_device
from ..errors import ShapeError
from .base import Layer

__all__ = ["Pair", "as_pair", "as_config", "output_size", "window_slices", "pad_hw", "add_into",
           "spatial_output_shape"]

Pair = tuple[int, int]


def as_pair(value: Any, name: str, layer: str, minimum: int = 1) -> Pair:
    """``3`` -> ``(3, 3)``; ``(3, 2)`` stays; anything else (or below ``minimum``) is a ValueError."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)):
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def as_config(value: Any) -> Any:
    """A constructor argument as JSON keeps it: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


def output_size(size: int, pads: Pair, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output length along one axis (floor mode, as PyTorch); < 1 when the kernel does not fit."""
    return (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


def window_slices(kernel: Pair, stride: Pair, out_hw: Pair, dilation: Pair = (1, 1)) -> Iterator[tuple[slice, slice]]:
    """For each kernel offset (row-major), the strided (rows, cols) slices of the padded input it sees."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = i * dilation[0], j * dilation[1]
            yield (slice(top, top + (out_hw[0] - 1) * stride[0] + 1, stride[0]),
                   slice(left, left + (out_hw[1] - 1) * stride[1] + 1, stride[1]))


def pad_hw(x: Any, pads: tuple[Pair, Pair], value: float = 0.0) -> Any:
    """``x`` (rank 4) padded on its last two axes; ``x`` itself when there is nothing to pad.

    Two operations, a fill and a copy (``cupy.pad`` launches a kernel per padded side as well).
    """
    if pads == ((0, 0), (0, 0)):
        return x
    xp = array_namespace(x)
    n, c, h, w = (int(d) for d in x.shape)
    (top, bottom), (left, right) = pads
    shape = (n, c, h + top + bottom, w + left + right)
    out = xp.zeros(shape, dtype=x.dtype, device=native_device(x)) if value == 0 else \
        xp.full(shape, value, dtype=x.dtype, device=native_device(x))
    return xpx.at(out, (slice(None), slice(None), slice(top, top + h), slice(left, left + w))).set(x)


def add_into(target: Any, key: tuple[Any, ...], part: Any) -> None:
    """``target[key] += part`` as one in-place operation on the view ``target[key]``.

    ``xpx.at(target, key).add(part)`` reads the view, adds, and writes the sum back: two
    operations (two kernels on a GPU) and an extra copy on the CPU. Writing through a basic-slice
    view works on every library xpnn runs on (NumPy, CuPy, PyTorch, array-api-strict).
    """
    view = target[key]
    view += part


def spatial_output_shape(layer: Layer, input_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                         pads: tuple[Pair, Pair], dilation: Pair = (1, 1)) -> Pair:
    """(Ho, Wo) for an NCHW ``input_shape``; ShapeError naming the layer if the window does not fit."""
    layer._check_rank(input_shape)
    height, width = input_shape[2], input_shape[3]
    out = (output_size(height, pads[0], kernel[0], stride[0], dilation[0]),
           output_size(width, pads[1], kernel[1], stride[1], dilation[1]))
    if out[0] < 1 or out[1] < 1:
        extent = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        padded = (height + sum(pads[0]), width + sum(pads[1]))
        raise ShapeError(
            f"{layer.describe()}: the {extent[0]}x{extent[1]} window is larger than the padded input "
            f"{padded[0]}x{padded[1]} (input shape {tuple(input_shape)}, padding {pads})"
        )
    return out
