"""Augmentation of NCHW float batches on the device they are on, in the array API only.

Each transform is a callable ``batch -> batch`` returning the same shape, dtype and device;
pass one (or a :class:`Compose` of several) as ``DataLoader(transform=...)``, which applies it
to training batches only. Per-sample random numbers come from
:func:`xpnn.backend.random_uniform`, so on CuPy they are drawn on the GPU, and everywhere
``xpnn.seed(n)`` makes them reproducible. No Python loop runs over samples or pixels.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import array_api_extra as xpx
from array_api_compat import array_namespace

from ..backend import native_device, random_uniform
from ..errors import ShapeError

__all__ = ["Compose", "RandomHorizontalFlip", "RandomCrop", "ColorJitter"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def _check(x: Any, who: str) -> Any:
    xp = array_namespace(x)
    if x.ndim != 4:
        raise ShapeError(f"{who} expects an NCHW batch (4-d), got shape {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{who} expects a floating-point batch (cast/scale it first, as DataLoader does), "
                        f"got {x.dtype}")
    return xp


def _clip(x: Any, low: float, high: float) -> Any:
    """``x`` limited to ``[low, high]`` in two element-wise operations.

    array-api-compat's ``clip`` for CuPy is generic code that indexes with boolean masks, and every
    mask index makes the GPU wait for the host (4 syncs and about 12 kernels per call).
    """
    xp = array_namespace(x)
    return xp.minimum(xp.maximum(x, low), high)


def _per_sample(values: Any, xp: Any) -> Any:
    """Shape (N,) to (N, 1, 1, 1), to broadcast against an NCHW batch."""
    return xp.reshape(values, (values.shape[0], 1, 1, 1))


def _pair(value: "int | Sequence[int]", name: str) -> tuple[int, int]:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or b < 0:
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return a, b


def _range(value: "float | Sequence[float]", name: str) -> tuple[float, float]:
    """``b`` -> factors in ``[max(0, 1 - b), 1 + b]``; a ``(lo, hi)`` pair is taken as is."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return max(0.0, 1.0 - value), 1.0 + value
    lo, hi = (float(v) for v in value)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} as a (min, max) factor range needs 0 <= min <= max, got {value!r}")
    return lo, hi


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.transforms))}])"


class RandomHorizontalFlip:
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Any) -> Any:
        xp = _check(x, "RandomHorizontalFlip")
        flip = random_uniform((x.shape[0],), like=x) < self.p
        return xp.where(_per_sample(flip, xp), xp.flip(x, axis=3), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Pad each side by ``padding`` with ``fill``, then cut ``size`` at a random offset per sample.

    ``size`` is ``(height, width)`` or an int; it must fit the padded image. The usual CIFAR
    recipe is ``RandomCrop(32, padding=4)``: shifts of up to 4 pixels, keeping the shape. The
    crop is one gather (``take_along_axis``, array API 2024.12) of per-sample flat positions,
    broadcast over the channels.
    """

    def __init__(self, size: "int | Sequence[int]", padding: "int | Sequence[int]" = 0, fill: float = 0.0) -> None:
        self.size, self.padding, self.fill = _pair(size, "size"), _pair(padding, "padding"), float(fill)
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {size!r}")

    def __call__(self, x: Any) -> Any:
        xp = _check(x, "RandomCrop")
        (h, w), (py, px) = self.size, self.padding
        n, c, hp, wp = x.shape[0], x.shape[1], x.shape[2] + 2 * py, x.shape[3] + 2 * px
        if h > hp or w > wp:
            raise ShapeError(f"RandomCrop: size {(h, w)} does not fit the padded {hp}x{wp} image "
                             f"(input {tuple(x.shape)}, padding {(py, px)})")
        if py or px:
            x = xpx.pad(x, ((0, 0), (0, 0), (py, py), (px, px)), constant_values=self.fill)
        u = random_uniform((2, n), like=x)
        dev, i64 = native_device(x), xp.int64
        oy = _clip(xp.astype(xp.floor(u[0, :] * (hp - h + 1)), i64), 0, hp - h)
        ox = _clip(xp.astype(xp.floor(u[1, :] * (wp - w + 1)), i64), 0, wp - w)
        # flat positions in each padded H*W plane, (N, 1, h*w): shared by the channels (broadcast)
        rows = xp.reshape(oy, (n, 1, 1)) + xp.reshape(xp.arange(h, dtype=i64, device=dev), (1, h, 1))
        cols = xp.reshape(ox, (n, 1, 1)) + xp.reshape(xp.arange(w, dtype=i64, device=dev), (1, 1, w))
        index = xp.reshape(rows * wp + cols, (n, 1, h * w))
        picked = xp.take_along_axis(xp.reshape(x, (n, c, hp * wp)), index, axis=2)
        return xp.reshape(picked, (n, c, h, w))

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"


class ColorJitter:
    """Scale brightness and contrast by random per-sample factors, then clip to ``clip``.

    ``brightness=b`` multiplies by a factor in ``[max(0, 1 - b), 1 + b]``; ``contrast=c`` blends
    with the sample's mean gray level (ITU-R 601 luma for 3 channels, the plain mean otherwise)
    by a factor in ``[max(0, 1 - c), 1 + c]``, as torchvision does; either may be a ``(min, max)``
    factor range. Brightness comes first. Meant for inputs in [0, 1] (``scale="unit"``); for
    standardized inputs pass ``clip=None``.
    """

    def __init__(self, brightness: "float | Sequence[float]" = 0.0, contrast: "float | Sequence[float]" = 0.0,
                 clip: "tuple[float, float] | None" = (0.0, 1.0)) -> None:
        self.brightness, self.contrast = _range(brightness, "brightness"), _range(contrast, "contrast")
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))

    def __call__(self, x: Any) -> Any:
        xp = _check(x, "ColorJitter")
        u = random_uniform((2, x.shape[0]), like=x)
        (b_lo, b_hi), (c_lo, c_hi) = self.brightness, self.contrast
        if (b_lo, b_hi) != (1.0, 1.0):
            x = x * _per_sample(b_lo + (b_hi - b_lo) * u[0, :], xp)
        if (c_lo, c_hi) != (1.0, 1.0):
            if x.shape[1] == 3:
                gray = _LUMA[0] * x[:, 0, ...] + _LUMA[1] * x[:, 1, ...] + _LUMA[2] * x[:, 2, ...]
                mean = xp.mean(gray, axis=(1, 2))
            else:
                mean = xp.mean(x, axis=(1, 2, 3))
            mean, factor = _per_sample(mean, xp), _per_sample(c_lo + (c_hi - c_lo) * u[1, :], xp)
            x = (x - mean) * factor + mean
        if self.clip is not None:
            x = _clip(x, self.clip[0], self.clip[1])
        return x

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, clip={self.clip})"
