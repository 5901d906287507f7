"""Data set loaders: the shipped Fashion-MNIST sample, and file discovery on real IDX files."""
from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn.data import datasets
from xpnn.data.idx import save_idx
from xpnn.errors import DataError


def test_sample_shapes_balance_and_classes():
    (x_train, y_train), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    assert x_train.shape == (6000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    assert np.bincount(y_train).tolist() == [600] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    assert 0 < x_train.mean() < 255 and x_train.max() == 255
    assert len(xpnn.datasets.FASHION_MNIST_CLASSES) == 10


def test_sample_file_records_its_source():
    from importlib import resources
    with resources.as_file(resources.files("xpnn.data") / datasets.SAMPLE_FILE) as path:
        with np.load(path, allow_pickle=False) as f:
            assert tuple(f["classes"].tolist()) == datasets.FASHION_MNIST_CLASSES
            assert "Zalando" in str(f["info"]) and "MIT" in str(f["info"])
            assert len(np.unique(f["train_index"])) == 6000


def _write_set(folder, n_train=12, n_test=5, gz=True, rng=None):
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    parts = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        save_idx(folder / f"{stem}-images-idx3-ubyte{ext}", x)
        save_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", y)
        parts[stem] = (x, y)
    return parts


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_root(tmp_path, gz):
    parts = _write_set(tmp_path, gz=gz)
    (x_train, y_train), (x_test, y_test) = datasets.mnist(tmp_path)
    assert x_train.shape == (12, 1, 28, 28) and x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0], parts["train"][0])
    np.testing.assert_array_equal(y_test, parts["t10k"][1])


def test_env_subfolder_is_preferred(tmp_path, monkeypatch):
    _write_set(tmp_path / "fashion-mnist", n_train=7)
    _write_set(tmp_path, n_train=9)
    monkeypatch.setenv("XPNN_DATA", str(tmp_path))
    (x_train, _), _ = datasets.fashion_mnist()
    assert len(x_train) == 7
    (x_train, _), _ = datasets.mnist()
    assert len(x_train) == 9


def test_missing_files_explain_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        datasets.mnist(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "Nothing is downloaded" in str(err.value)
    _write_set(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"partial has only .*train-images"):
        datasets.fashion_mnist(tmp_path / "partial")
    assert "apt-get install dataset-fashion-mnist" in datasets._how_to_get("fashion-mnist")


def test_mismatched_counts_name_both_files(tmp_path):
    _write_set(tmp_path)
    save_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds 12 images but .*train-labels.* 3 labels"):
        datasets.mnist(tmp_path)


def test_debian_location_is_searched():
    assert datasets.DEBIAN_FASHION_MNIST in datasets.data_dirs("fashion-mnist")


_DEBIAN = datasets.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not _DEBIAN.is_file(), reason=f"full Fashion-MNIST not installed ({_DEBIAN} missing; "
                                                    "apt-get install dataset-fashion-mnist)")
def test_full_fashion_mnist_contains_the_sample():
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist(datasets.DEBIAN_FASHION_MNIST)
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    from importlib import resources
    with resources.as_file(resources.files("xpnn.data") / datasets.SAMPLE_FILE) as path:
        with np.load(path, allow_pickle=False) as f:
            np.testing.assert_array_equal(x_train[f["train_index"]], f["x_train"])
            np.testing.assert_array_equal(y_test[f["test_index"]], f["y_test"])
