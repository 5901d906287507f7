"""``xpnn.datasets``: the data sets xpnn can load (re-exported from :mod:`xpnn.data.datasets`)."""
from .data.datasets import (FASHION_MNIST_CLASSES, MNIST_CLASSES, data_dirs, fashion_mnist, fashion_mnist_sample,
                            mnist)

__all__ = ["fashion_mnist", "mnist", "fashion_mnist_sample", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "data_dirs"]
