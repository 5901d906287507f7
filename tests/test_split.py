"""train_test_split: seeded, stratified, disjoint, and clear about bad sizes."""
from __future__ import annotations

import numpy as np
import pytest

from xpnn.data import train_test_split
from xpnn.errors import DataError


def _data(counts=(50, 30, 20)):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = np.arange(len(y) * 2).reshape(len(y), 2)
    return x, y


def test_stratified_disjoint_and_complete():
    x, y = _data()
    (x_tr, y_tr), (x_te, y_te) = train_test_split(x, y, test_size=0.2, seed=1)
    assert np.bincount(y_te).tolist() == [10, 6, 4] and np.bincount(y_tr).tolist() == [40, 24, 16]
    rows = np.concatenate([x_tr[:, 0], x_te[:, 0]]) // 2
    assert sorted(rows.tolist()) == list(range(100))
    np.testing.assert_array_equal(y[x_te[:, 0] // 2], y_te)      # x and y stay paired


def test_uneven_classes_round_to_the_requested_total():
    x, y = _data((7, 7, 7))
    (_, y_tr), (_, y_te) = train_test_split(x, y, test_size=0.25, seed=0)
    assert len(y_te) == 6 and len(y_tr) == 15        # ceil(0.25 * 21) = 6, two per class
    assert np.bincount(y_te).tolist() == [2, 2, 2]
    (_, y_tr), (_, y_te) = train_test_split(x, y, test_size=5, seed=0)
    assert len(y_te) == 5 and sorted(np.bincount(y_te, minlength=3).tolist()) == [1, 2, 2]


def test_seeded():
    x, y = _data()
    a = train_test_split(x, y, seed=3)
    b = train_test_split(x, y, seed=3)
    c = train_test_split(x, y, seed=4)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[1][0], c[1][0])


def test_unstratified_accepts_any_target():
    x = np.arange(10.0)
    (x_tr, y_tr), (x_te, y_te) = train_test_split(x, x * 0.5, test_size=3, stratify=False)
    assert len(x_te) == 3 and len(x_tr) == 7
    np.testing.assert_array_equal(y_te, x_te * 0.5)
    with pytest.raises(DataError, match="stratify=False"):
        train_test_split(x, x * 0.5)


def test_bad_sizes():
    x, y = _data()
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        train_test_split(x, y, test_size=1.5)
    with pytest.raises(ValueError, match="both need at least one"):
        train_test_split(x, y, test_size=100)
    with pytest.raises(DataError, match="different lengths"):
        train_test_split(x, y[:-1])
