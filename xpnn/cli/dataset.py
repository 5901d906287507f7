"""The data a command works on: ``--data`` (a named data set, a folder of MNIST-format IDX files
or an image folder) loaded into a Dataset of host arrays; for training, also the --limit cut,
the validation split and the augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data import datasets
from .errors import CLIError


SAMPLE = "fashion-mnist-sample"
NAMED_DATA = {SAMPLE: "the Fashion-MNIST sample shipped with xpnn", "fashion-mnist": "Fashion-MNIST",
              "mnist": "MNIST"}
DEFAULT_IMAGE_SIZE = 64
IDX_SIZE = 28
SCALE = "unit"

Split = tuple[np.ndarray, np.ndarray]


@dataclass
class Dataset:
    """Host arrays (uint8 NCHW images, int64 labels) and how the images were made."""

    train: Split
    test: Split
    classes: list[str]
    color: str
    size: tuple[int, int]
    source: str


def data_spec(spec: str) -> str:
    """A data set name as is; a path made absolute (so a resumed run finds it from anywhere)."""
    if spec in NAMED_DATA:
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise CLIError(f"--data {spec}: no such file or folder. Pass an image folder (root/<class>/<image>), a folder "
                       f"of MNIST-format IDX files, or one of: {', '.join(NAMED_DATA)}")
    if not path.is_dir():
        raise CLIError(f"--data {spec} is a file; pass a folder: an image folder (root/<class>/<image>) or a folder "
                       f"of MNIST-format IDX files")
    return str(path.resolve())


def is_idx_folder(path: Path) -> bool:
    folders = [path, *(p for p in path.iterdir() if p.is_dir())]
    return any(f.name.endswith(("-ubyte", "-ubyte.gz")) for folder in folders for f in folder.iterdir())


def _check_idx_options(spec: str, size: int | None, color: str | None) -> None:
    if size not in (None, IDX_SIZE):
        raise CLIError(f"--image-size {size}: {spec} holds {IDX_SIZE}x{IDX_SIZE} images; leave --image-size out")
    if color not in (None, "gray"):
        raise CLIError(f"--color {color}: {spec} holds gray images; leave --color out")


def _image_folder(path: Path, size: int, color: str, classes: Sequence[str] | None) -> Any:
    from ..data.images import ImageFolder
    folder = ImageFolder(path, size=size, color=color, classes=classes)
    if len(folder.classes) < 2:
        raise CLIError(f"{path} has one class folder ({folder.classes[0]!r}); a classifier needs at least two: put "
                       f"each class's images in its own subfolder, e.g. {path}/cat and {path}/dog")
    return folder


def load_data(spec: str, image_size: int | None = None, color: str | None = None, seed: int = 0,
              classes: Sequence[str] | None = None, split: bool = True) -> Dataset:
    """The data set ``spec`` names (see ``xpnn train --help``), split into train and test parts.

    An image folder with ``train/`` and ``test/`` subfolders uses them; any other image folder
    is split 80/20 (stratified, seeded), or with ``split=False`` is all test data. ``classes``
    fixes the class order of an image folder (a trained model's classes).
    """
    if spec in NAMED_DATA or is_idx_folder(Path(spec)):
        _check_idx_options(spec, image_size, color)
        if spec == SAMPLE:
            parts, names = datasets.fashion_mnist_sample(), datasets.FASHION_MNIST_CLASSES
        elif spec == "fashion-mnist" or (spec not in NAMED_DATA and "fashion" in Path(spec).name.lower()):
            parts, names = datasets.fashion_mnist(None if spec in NAMED_DATA else spec), datasets.FASHION_MNIST_CLASSES
        else:
            parts, names = datasets.mnist(None if spec in NAMED_DATA else spec), datasets.MNIST_CLASSES
        size = tuple(int(n) for n in parts[0][0].shape[2:])
        return Dataset(parts[0], parts[1], list(names), "gray", size, NAMED_DATA.get(spec, spec))
    root = Path(spec)
    size, color = image_size or DEFAULT_IMAGE_SIZE, color or "rgb"
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _image_folder(root / "train", size, color, classes)
        test = _image_folder(root / "test", size, color, train.classes)
        parts = ((train.x, train.y), (test.x, test.y))
    else:
        folder = _image_folder(root, size, color, classes)
        train = folder
        if split:
            from ..data.split import train_test_split
            parts = train_test_split(folder.x, folder.y, test_size=0.2, seed=seed)
        else:
            parts = ((folder.x[:0], folder.y[:0]), (folder.x, folder.y))
    return Dataset(parts[0], parts[1], list(train.classes), color, (size, size), f"image folder {spec}")


def training_data(settings: dict[str, Any]) -> tuple[Dataset, Split, Split | None, Split]:
    """``(data, train, validation or None, test)``: the same arrays for the same settings, every time."""
    data = load_data(settings["data"], settings["image_size"], settings["color"], settings["seed"])
    (x_train, y_train), (x_test, y_test) = data.train, data.test
    if settings["limit"]:
        x_train, y_train = x_train[:settings["limit"]], y_train[:settings["limit"]]
        x_test, y_test = x_test[:settings["limit"]], y_test[:settings["limit"]]
    if not settings["val_split"]:
        return data, (x_train, y_train), None, (x_test, y_test)
    from ..data.split import split_indices
    train_idx, val_idx = split_indices(y_train, test_size=settings["val_split"], seed=settings["seed"])
    return data, (x_train[train_idx], y_train[train_idx]), (x_train[val_idx], y_train[val_idx]), (x_test, y_test)


def train_transform(settings: dict[str, Any], data: Dataset) -> Any:
    if not settings["augment"]:
        return None
    from ..data.transforms import ColorJitter, Compose, RandomCrop, RandomHorizontalFlip
    size = data.size
    steps: list[Any] = [RandomHorizontalFlip(), RandomCrop(size, padding=max(1, size[0] // 8))]
    if data.color == "rgb":
        steps.append(ColorJitter(brightness=0.2, contrast=0.2))
    return Compose(steps)
