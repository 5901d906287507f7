"""MNIST and Fashion-MNIST from local IDX files, and a Fashion-MNIST sample shipped with xpnn.

Nothing is downloaded. The full data sets are looked up, in order, in the folder given as
``root``; else in ``$XPNN_DATA`` (several folders may be joined with ``os.pathsep``), then
``~/.xpnn/data``, each first in its subfolder named after the data set (``fashion-mnist``,
``mnist``) and then directly; and for Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``,
where Debian's ``dataset-fashion-mnist`` package installs it. The first folder holding all four
files wins. MNIST and Fashion-MNIST use the same file names, so keep each in its own subfolder
when you have both.

All loaders return ``((x_train, y_train), (x_test, y_test))``: images as uint8 NCHW
``(N, 1, 28, 28)`` arrays, labels as int64, on the host. Scale them on the device with
``DataLoader(..., scale="unit")``.
"""
from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .idx import load_idx

__all__ = ["fashion_mnist", "mnist", "fashion_mnist_sample", "FASHION_MNIST_CLASSES", "MNIST_CLASSES",
           "data_dirs", "SAMPLE_FILE"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_FILE = "fashion_mnist_sample.npz"

_PARTS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}
_SUBFOLDERS = {"fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST"),
               "mnist": ("mnist", "MNIST")}


def _candidates(stem: str, kind: str) -> list[str]:
    """Accepted names for one file: ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, ``.gz`` or not."""
    return [f"{stem}{sep}{kind}-ubyte{gz}" for sep in ("-", ".") for gz in (".gz", "")]


def _find(folder: Path, stem: str, kind: str) -> Path | None:
    return next((folder / name for name in _candidates(stem, kind) if (folder / name).is_file()), None)


def data_dirs(name: str, root: "str | os.PathLike[str] | None" = None) -> list[Path]:
    """The folders searched for data set ``name`` (``"fashion-mnist"`` or ``"mnist"``), in order."""
    if root is not None:
        bases, system = [Path(root)], []
    else:
        env = [Path(p) for p in os.environ.get("XPNN_DATA", "").split(os.pathsep) if p]
        bases = env + [Path.home() / ".xpnn" / "data"]
        system = [DEBIAN_FASHION_MNIST] if name == "fashion-mnist" else []
    out: list[Path] = []
    for base in bases:
        out += [base / sub for sub in _SUBFOLDERS[name]] + [base]
    return out + system


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return ("Install Debian's package (`sudo apt-get install dataset-fashion-mnist`, which puts them in "
                f"{DEBIAN_FASHION_MNIST}), or copy the four files from "
                "https://github.com/zalandoresearch/fashion-mnist into ~/.xpnn/data/fashion-mnist or a folder "
                "named by $XPNN_DATA. For a quick start without them, xpnn.datasets.fashion_mnist_sample() "
                "returns a 7,000-image sample shipped with xpnn.")
    return ("Copy the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into ~/.xpnn/data/mnist or a folder named "
            "by $XPNN_DATA.")


def _load_split(images: Path, labels: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_idx(images), load_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images}: expected uint8 images of shape (N, rows, cols), found {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataError(f"{labels}: expected uint8 labels of shape (N,), found {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if y.size and int(y.max()) >= classes:
        raise DataError(f"{labels}: labels must be 0..{classes - 1}, found {int(y.max())}")
    return x[:, None, :, :], y.astype(np.int64)


def _load(name: str, root: "str | os.PathLike[str] | None", classes: Sequence[str]):
    searched = data_dirs(name, root)
    partial = []
    for folder in searched:
        files = {part: [_find(folder, stem, kind) for stem, kind in zip(stems, ("idx3", "idx1"))]
                 for part, stems in _PARTS.items()}
        found = [f for pair in files.values() for f in pair if f is not None]
        if len(found) == 4:
            train, test = (_load_split(*files[part], len(classes)) for part in ("train", "test"))
            if train[0].shape[1:] != test[0].shape[1:]:
                size = "x".join(map(str, train[0].shape[2:]))
                raise DataError(f"{files['train'][0]} holds {size} images but {files['test'][0]} holds "
                                f"{'x'.join(map(str, test[0].shape[2:]))} images; train and test images must "
                                f"have one size")
            return train, test
        if found:
            partial.append(f"{folder} has only {', '.join(f.name for f in found)}")
    lines = "\n  ".join(str(p) for p in searched)
    also = f"\nIncomplete: {'; '.join(partial)}." if partial else ""
    raise FileNotFoundError(
        f"{name}: the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) were not found in any of:\n  {lines}{also}\n"
        f"{_how_to_get(name)} Nothing is downloaded.")


def fashion_mnist(root: "str | os.PathLike[str] | None" = None):
    """Fashion-MNIST (60,000 train / 10,000 test, classes :data:`FASHION_MNIST_CLASSES`) from local files."""
    return _load("fashion-mnist", root, FASHION_MNIST_CLASSES)


def mnist(root: "str | os.PathLike[str] | None" = None):
    """MNIST digits (60,000 train / 10,000 test, classes ``"0"``..``"9"``) from local files."""
    return _load("mnist", root, MNIST_CLASSES)


def fashion_mnist_sample():
    """A stratified 6,000 train / 1,000 test sample of Fashion-MNIST that ships with xpnn.

    600 training and 100 test images of each class, drawn with a fixed seed from the official
    splits by ``ci/make_fashion_sample.py``. Fashion-MNIST is (c) Zalando SE, MIT licence.
    Class names: :data:`FASHION_MNIST_CLASSES`.
    """
    blob = resources.files(__package__).joinpath(SAMPLE_FILE).read_bytes()
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        return ((f["x_train"], f["y_train"].astype(np.int64)),
                (f["x_test"], f["y_test"].astype(np.int64)))
