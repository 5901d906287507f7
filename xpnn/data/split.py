"""Seeded, stratified train/test split of host arrays."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from ..errors import DataError

__all__ = ["train_test_split", "split_indices"]


def _test_count(test_size: float | int, n: int) -> int:
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise TypeError(f"test_size must be a fraction in (0, 1) or a sample count, got {test_size!r}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        count = math.ceil(test_size * n)
    else:
        count = int(test_size)
    if not 0 < count < n:
        raise ValueError(f"test_size={test_size!r} of {n} samples leaves {count} for test and {n - count} for "
                         f"training; both need at least one")
    return count


def _allocate(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, random ties)."""
    exact = counts * (total / counts.sum())
    take = np.floor(exact).astype(np.int64)
    remainder = exact - take
    order = np.lexsort((rng.random(len(counts)), -remainder))
    for c in order:
        if take.sum() >= total:
            break
        if take[c] < counts[c]:
            take[c] += 1
    return take


def split_indices(y: Any, test_size: float | int = 0.2, seed: int | None = 0,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled ``(train_idx, test_idx)`` for ``n = len(y)`` samples; see :func:`train_test_split`."""
    y = backend.to_numpy(y)
    n = len(y)
    n_test = _test_count(test_size, n)
    rng = np.random.default_rng(seed)
    if not stratify:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind in "bUS"):
        raise DataError(f"stratify=True needs 1-d class labels, got {y.dtype} {y.shape}; pass stratify=False "
                        f"for other targets")
    classes, labels = np.unique(y, return_inverse=True)
    counts = np.bincount(labels, minlength=len(classes))
    per_class = _allocate(counts, n_test, rng)
    train, test = [], []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[:per_class[c]])
        train.append(members[per_class[c]:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def train_test_split(x: Any, y: Any, test_size: float | int = 0.2, seed: int | None = 0, stratify: bool = True):
    """``((x_train, y_train), (x_test, y_test))``, like the data set loaders return.

    ``test_size`` is a fraction (rounded up, as scikit-learn does) or a count. ``stratify=True``
    keeps each class's share in both parts (largest-remainder rounding). The same ``seed``
    always gives the same split; both parts come shuffled. Inputs are host arrays (anything
    ``xpnn.to_numpy`` takes); the results are NumPy arrays.
    """
    x, y = backend.to_numpy(x), backend.to_numpy(y)
    if len(x) != len(y):
        raise DataError(f"x and y have different lengths: {len(x)} samples in x, {len(y)} in y")
    train, test = split_indices(y, test_size, seed, stratify)
    return (x[train], y[train]), (x[test], y[test])
