"""Mini-batches: shuffled on the host, moved to the device one batch at a time.

Host inputs stay on the host in their stored dtype (often uint8, four times smaller than
float32); each batch is cut there, moved, and only then cast and scaled on the device. Inputs
already on the loader's device stay there: batches are cut on the device (a slice, or a gather
by the shuffled indices), never through the host.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np
from array_api_compat import array_namespace

from .. import backend

__all__ = ["DataLoader", "channel_stats"]

Transform = Callable[[Any], Any]


class DataLoader:
    """Iterate ``(x_batch, y_batch)`` on ``device``; with ``weights`` (one per sample, e.g. from
    ``fit``'s ``class_weight``), ``(x_batch, y_batch, w_batch)`` as Keras' datasets do.

    ``scale``: ``None`` (cast only), ``"unit"`` (divide by 255: uint8 images to [0, 1]), or a
    ``(mean, std)`` pair to standardize, in the units of ``x``: two numbers, or two sequences
    with one value per channel (axis 1, e.g. from :func:`channel_stats`). ``transform`` runs on
    each device batch of inputs when ``train=True`` (augmentation, see
    ``xpnn.data.transforms``). ``seed`` makes the shuffle of epoch ``e`` depend only on
    ``(seed, e)``, so a resumed run sees the same order.
    """

    def __init__(self, x: Any, y: Any = None, batch_size: int | None = 32, *, shuffle: bool = False,
                 seed: int | None = None, device: "backend.Device | str | None" = None, dtype: str = "float32",
                 scale: Any = None, transform: Transform | None = None, drop_last: bool = False,
                 weights: Any = None) -> None:
        self.device = backend.resolve(device)
        self.x = self._kept(x)
        self.y = None if y is None else self._kept(y)
        self.weights = None if weights is None else self._kept(weights)
        n = int(self.x.shape[0])
        for name, other in (("y", self.y), ("weights", self.weights)):
            if other is not None and int(other.shape[0]) != n:
                from ..errors import DataError
                raise DataError(f"x and {name} have different lengths: {n} samples in x, {int(other.shape[0])} "
                                f"in {name}")
        if batch_size is None:
            batch_size = n
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None (full batch), got {batch_size!r}")
        self.batch_size = batch_size
        self.shuffle, self.seed, self.dtype = shuffle, seed, dtype
        self.scale, self.transform, self.drop_last = scale, transform, drop_last
        self._shift_factor = self._standardize_constants(scale)
        self.epoch = 0

    def _kept(self, array: Any) -> Any:
        """``array`` itself if it is a NumPy array or already on the loader's device, else a host copy."""
        if isinstance(array, np.ndarray) or (backend.is_array(array) and backend.device_of(array) == self.device):
            return array
        return backend.to_numpy(array)

    def __len__(self) -> int:
        n = int(self.x.shape[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (called by ``fit`` at the start of each epoch)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The sample order of the current epoch."""
        n = int(self.x.shape[0])
        if not self.shuffle:
            return np.arange(n)
        rng = backend.host_rng() if self.seed is None else np.random.default_rng((self.seed, self.epoch))
        return rng.permutation(n)

    def batch_indices(self) -> Iterator[np.ndarray]:
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            yield idx

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for idx in self.batch_indices():
            yield self.take(idx, train=True)

    def take(self, idx: np.ndarray, train: bool = False) -> tuple[Any, ...]:
        """The samples ``idx`` as a device batch (inputs cast, scaled and, if train, transformed)."""
        contiguous = idx.size and idx[-1] - idx[0] == idx.size - 1 and (np.diff(idx) == 1).all()
        device_idx = None

        def cut(array: Any) -> Any:
            nonlocal device_idx
            if contiguous:
                return array[int(idx[0]):int(idx[-1]) + 1]
            if isinstance(array, np.ndarray):
                return array[idx]
            if device_idx is None:  # the indices cross to the device, the samples do not cross back
                device_idx = backend.to_device(idx, self.device, dtype="int64")
            return self.device.xp.take(array, device_idx, axis=0)

        xb = self.prepare(cut(self.x))
        if train and self.transform is not None:
            xb = self.transform(xb)
        if self.y is None:
            return xb, None
        yb = cut(self.y)
        integral = backend.dtype_name(yb.dtype).startswith(("int", "uint", "bool"))
        yb = self._moved(yb, "int64" if integral else self.dtype)
        if self.weights is None:
            return xb, yb
        return xb, yb, self._moved(cut(self.weights), self.dtype)

    def _moved(self, batch: Any, dtype: str) -> Any:
        """A batch cut from a host array moved to the device in ``dtype``; one already there cast."""
        return backend.to_device(batch, self.device, dtype=dtype) if isinstance(batch, np.ndarray) \
            else _cast(batch, dtype)

    def prepare(self, x: Any) -> Any:
        """Move host inputs to the device (arrays there stay), cast to ``dtype`` and apply ``scale`` there."""
        xb = backend.to_device(np.ascontiguousarray(x), self.device, dtype=self.dtype) if isinstance(x, np.ndarray) \
            else _cast(x, self.dtype)
        if self.scale is None:
            return xb
        if isinstance(self.scale, str):
            if self.scale != "unit":
                raise ValueError(f"scale must be None, 'unit' or (mean, std), got {self.scale!r}")
            return xb * (1.0 / 255.0)
        shift, factor = self._shift_factor
        return (xb - shift) * factor

    def _standardize_constants(self, scale: Any) -> Any:
        """``(mean, 1 / std)`` for a ``(mean, std)`` scale: floats, or per-channel device arrays."""
        if scale is None or isinstance(scale, str):
            if scale not in (None, "unit"):
                raise ValueError(f"scale must be None, 'unit' or (mean, std), got {scale!r}")
            return None
        try:
            mean, std = (np.asarray(backend.to_numpy(v), dtype=np.float64) for v in scale)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scale must be None, 'unit' or (mean, std), got {scale!r}") from exc
        if mean.shape != std.shape or mean.ndim > 1:
            raise ValueError(f"scale (mean, std) must be two numbers or two 1-d sequences of one length, "
                             f"got shapes {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"scale (mean, std) must be finite with std > 0, got mean={mean}, std={std}")
        if mean.ndim == 0:
            return float(mean), 1.0 / float(std)
        channels = self.x.shape[1] if self.x.ndim >= 2 else None
        if channels != mean.size:
            from ..errors import DataError
            raise DataError(f"scale has {mean.size} per-channel values but x has shape {self.x.shape} "
                            f"({channels} channels on axis 1)")
        shape = (1, mean.size) + (1,) * (self.x.ndim - 2)
        return tuple(backend.to_device(v.reshape(shape), self.device, dtype=self.dtype) for v in (mean, 1.0 / std))


def _cast(array: Any, dtype: str) -> Any:
    """A device array in ``dtype`` (itself when it already is)."""
    xp = array_namespace(array)
    wanted = backend.dtype_of(xp, dtype)
    return array if array.dtype == wanted else xp.astype(array, wanted)


def channel_stats(x: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and standard deviation of host data, in its own units (float64).

    Computed in batches with float64 sums, so uint8 image sets of any size fit; pass the result
    as ``DataLoader(scale=...)`` or ``fit(..., scale=...)``. Use training data only.
    """
    x = x if isinstance(x, np.ndarray) else backend.to_numpy(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"channel_stats needs a non-empty array of shape (N, C, ...), got {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size].astype(np.float64)
        total += chunk.sum(axis=axes)
        squares += np.square(chunk).sum(axis=axes)
    count = x.size // x.shape[1]
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
