"""Host-side data: loading files, batching, moving batches to the device."""
from .datasets import FASHION_MNIST_CLASSES, MNIST_CLASSES, fashion_mnist, fashion_mnist_sample, mnist
from .idx import load_idx, save_idx
from .images import ImageFolder, load_image
from .loader import DataLoader

__all__ = ["DataLoader", "ImageFolder", "load_image", "load_idx", "save_idx", "fashion_mnist", "mnist",
           "fashion_mnist_sample", "FASHION_MNIST_CLASSES", "MNIST_CLASSES"]
