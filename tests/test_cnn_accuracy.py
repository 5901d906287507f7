"""Accuracy on real data: the shipped Fashion-MNIST sample (6,000 train / 1,000 test images).

Each test trains on the CPU for 3 epochs, a few seconds on 2 idle cores (measured accuracy with
these seeds: 0.867 and 0.871, so the bars keep a margin against BLAS rounding differences).
"""
import time

import numpy as np
import pytest

import xpnn
from xpnn import layers, optim


@pytest.fixture(scope="module")
def fashion():
    (x_train, y_train), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    return x_train, y_train, x_test, y_test


def train_and_test(model, data, optimizer, epochs):
    x_train, y_train, x_test, y_test = data
    started = time.perf_counter()
    model.fit(x_train, y_train, loss="cross_entropy", optimizer=optimizer, epochs=epochs, batch_size=64,
              seed=0, scale="unit", verbose=0)
    accuracy = model.evaluate(x_test, y_test, scale="unit")["accuracy"]
    return accuracy, time.perf_counter() - started


def test_tutorial_mnist_network_reaches_80_percent(fashion):
    """The tutorials' network: Conv 3x3 with 8 filters, MaxPool 2, Linear 13*13*8 -> 10, softmax CE."""
    with xpnn.use_device("cpu"):
        xpnn.seed(0)
        model = xpnn.Sequential([layers.Conv2D(1, 8, 3), layers.MaxPool2D(2), layers.Flatten(),
                                 layers.Linear(13 * 13 * 8, 10)])
    accuracy, seconds = train_and_test(model, fashion, optim.SGD(lr=0.05, momentum=0.9), epochs=3)
    assert accuracy >= 0.80, f"test accuracy {accuracy:.3f} after {seconds:.0f} s"


def test_fashion_cnn_reaches_85_percent(fashion):
    with xpnn.use_device("cpu"):
        xpnn.seed(0)
        model = xpnn.Sequential([
            layers.Conv2D(1, 32, 3, padding="same"), layers.ReLU(), layers.MaxPool2D(2),
            layers.Conv2D(32, 64, 3, padding="same"), layers.ReLU(), layers.MaxPool2D(2),
            layers.Flatten(), layers.Linear(3136, 128), layers.ReLU(), layers.Linear(128, 10)])
    accuracy, seconds = train_and_test(model, fashion, optim.Adam(lr=1e-3), epochs=3)
    assert accuracy >= 0.85, f"test accuracy {accuracy:.3f} after {seconds:.0f} s"
    assert np.isfinite(xpnn.to_numpy(model.layers[0].weight.value)).all()
