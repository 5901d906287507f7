"""Host-side data: loading files, batching, moving batches to the device; device-side augmentation."""
from .datasets import FASHION_MNIST_CLASSES, MNIST_CLASSES, fashion_mnist, fashion_mnist_sample, mnist
from .idx import load_idx, save_idx
from .images import ImageFolder, load_image
from .loader import DataLoader, channel_stats
from .split import train_test_split
from .transforms import ColorJitter, Compose, RandomCrop, RandomHorizontalFlip

__all__ = ["DataLoader", "channel_stats", "ImageFolder", "load_image", "load_idx", "save_idx", "fashion_mnist",
           "mnist", "fashion_mnist_sample", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "train_test_split",
           "Compose", "RandomHorizontalFlip", "RandomCrop", "ColorJitter"]
