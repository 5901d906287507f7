"""Plumbing shared by the examples: arguments, device set-up, stand-in image folders made from the
shipped Fashion-MNIST sample, standardization and augmentation, and the accuracy/timing report."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

import xpnn
from xpnn.data import Compose, ImageFolder, RandomCrop, RandomHorizontalFlip, train_test_split
from xpnn.datasets import FASHION_MNIST_CLASSES, fashion_mnist_sample


def parser(description: str, epochs: int, batch_size: int, lr: float, data_help: str) -> argparse.ArgumentParser:
    """The options every example takes; each example adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--device", default="cpu", help='"cpu", "gpu:0", "auto", ...')
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="learning rate")
    p.add_argument("--limit", type=int, default=None, help="train on at most this many images (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="0 silent, 1 progress bar, 2 one line per epoch")
    return p


def start(args: argparse.Namespace) -> None:
    """Select the device and seed every generator; say where training runs."""
    xpnn.set_device(args.device)
    xpnn.seed(args.seed)
    print(f"device: {xpnn.get_device()}", flush=True)


def limit(x: np.ndarray, y: np.ndarray, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` samples (all when ``count`` is None)."""
    return (x, y) if count is None else (x[:count], y[:count])


def write_sample_folder(root: "str | os.PathLike[str]", classes: dict[str, str],
                        image: Callable[[np.ndarray, np.random.Generator], Image.Image], seed: int = 0,
                        per_class: int | None = None) -> Path:
    """Write the shipped Fashion-MNIST sample images (train and test) of some classes as PNG files.

    ``classes`` maps a folder name to a class of :data:`FASHION_MNIST_CLASSES`; ``image`` turns one
    28x28 uint8 array into a Pillow image; ``per_class`` keeps only the first images of each class.
    The result, ``root/<folder>/<n>.png``, is an ordinary image folder for :class:`xpnn.data.ImageFolder`.
    """
    (x_train, y_train), (x_test, y_test) = fashion_mnist_sample()
    x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder, name in classes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for n, pixels in enumerate(x[y == FASHION_MNIST_CLASSES.index(name)][:per_class]):
            image(pixels[0], rng).save(root / folder / f"{n:04d}.png")
    return root


def augmentation(stats: tuple[np.ndarray, np.ndarray], size: int, padding: int, flip: bool = True) -> Any:
    """Random ``size`` crops of images padded by ``padding`` black pixels, then a random left-right flip,
    for batches standardized with ``stats`` (so black is ``-mean / std``)."""
    mean, std = stats
    steps: list[Any] = []
    if padding:
        steps.append(RandomCrop(size, padding=padding, fill=float(-mean[0] / std[0])))
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps) if steps else None


def load_folder(path: "str | os.PathLike[str]", size: int, color: str, seed: int, cache: bool = False) -> tuple:
    """An image folder (one subfolder per class) split 80/20, stratified: ``(train, test, classes)``."""
    folder = ImageFolder(path, size=size, color=color, cache=cache)
    print(f"{folder.root}: {len(folder)} images of {', '.join(folder.classes)}; {color} {size}x{size}", flush=True)
    train, test = train_test_split(folder.x, folder.y, test_size=0.2, seed=seed)
    return train, test, folder.classes


def report(history: xpnn.History, result: dict[str, float], test_size: int) -> None:
    """Print the test accuracy and the mean training time per epoch."""
    seconds = history["seconds"]
    rate = sum(history["samples_per_second"]) / len(seconds)
    print(f"test accuracy: {100 * result['accuracy']:.2f}% on {test_size} images (loss {result['loss']:.4f})")
    print(f"time per epoch: {sum(seconds) / len(seconds):.2f} s (mean of {len(seconds)} epochs, "
          f"{rate:.0f} images/s)", flush=True)
