"""End to end on image files: a two-class PNG folder through ImageFolder and fit; the example
scripts, the accuracy benchmark and the CNN benchmark's breakdown run as subprocesses with tiny
settings."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xpnn
from xpnn import optim, zoo
from xpnn.data import ImageFolder, train_test_split
from xpnn.datasets import FASHION_MNIST_CLASSES, fashion_mnist_sample

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import _common  # noqa: E402

ACCURACY = re.compile(r"test accuracy: (\d+\.\d+)%")


def test_two_class_png_folder_trains_through_imagefolder(tmp_path):
    """Sneaker vs Ankle boot from the shipped sample as PNG files: read back exactly, then the
    tutorials' [784, 20, 7, 5, 1] MLP reaches at least 93% on the held-out 20% (280 images)."""
    classes = {"ankle_boot": "Ankle boot", "sneaker": "Sneaker"}
    _common.write_sample_folder(tmp_path, classes, lambda pixels, rng: Image.fromarray(pixels, "L"))
    folder = ImageFolder(tmp_path, size=28, color="gray")
    assert folder.classes == ["ankle_boot", "sneaker"]
    assert folder.x.shape == (1400, 1, 28, 28) and folder.x.dtype == np.uint8
    (x_train, y_train), (x_test, y_test) = fashion_mnist_sample()
    x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    boots = x[y == FASHION_MNIST_CLASSES.index("Ankle boot")]
    np.testing.assert_array_equal(folder.x[folder.y == 0], boots)  # PNG is lossless; files sort in order

    (x_fit, y_fit), (x_held, y_held) = train_test_split(folder.x, folder.y, test_size=0.2, seed=0)
    xpnn.seed(0)
    model = zoo.tutorial_mlp(784, classes=2)
    history = model.fit(x_fit, y_fit, loss=zoo.loss_for(model), optimizer=optim.SGD(lr=0.0075, momentum=0.9),
                        epochs=20, batch_size=32, seed=0, scale="unit", verbose=0)
    result = model.evaluate(x_held, y_held, scale="unit")
    assert history["loss"][-1] < history["loss"][0]
    assert len(y_held) == 280 and result["accuracy"] >= 0.93, result


def _run(script: Path, *args: str, timeout: float = 120) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.parametrize("script, args", [
    ("cat_mlp.py", []),
    ("mnist_cnn.py", ["--model", "tutorial"]),
    ("mnist_cnn.py", ["--model", "cnn", "--augment", "crop+flip"]),
    ("mnist_cnn.py", ["--model", "cnn-bn", "--augment", "flip"]),
    ("catdog_cnn.py", []),
], ids=["cat_mlp", "mnist_tutorial", "mnist_cnn", "mnist_cnn_bn", "catdog_cnn"])
def test_example_runs_and_prints_accuracy(script, args):
    out = _run(EXAMPLES / script, *args, "--epochs", "1", "--limit", "256", "--verbose", "0")
    match = ACCURACY.search(out)
    assert match, out
    assert 0.0 <= float(match.group(1)) <= 100.0
    assert "time per epoch:" in out


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("model", ["mlp", "cnn-bn"])
def test_accuracy_benchmark_runs_both_libraries(model):
    try:
        xpnn.datasets.fashion_mnist()
    except FileNotFoundError:
        pytest.skip("the full Fashion-MNIST files are not installed")
    out = _run(ROOT / "benchmarks" / "fashion_accuracy.py", "--model", model, "--epochs", "1", "--limit", "256")
    for lib in ("xpnn", "torch"):
        assert re.search(rf"- {lib}: final test accuracy \d+\.\d+%", out), out


def test_cnn_benchmark_breakdown_lists_every_layer_in_the_order_it_runs():
    out = _run(ROOT / "benchmarks" / "bench_cnn.py", "--breakdown", "--only", "mnist", "--repeats", "1")
    assert re.search(r"tutorial MNIST CNN: xpnn step \d+\.\d ms.*matmuls alone at the step's shapes \d+\.\d ms", out)
    rows = re.findall(r"^  (\d+): (.+?)\s+(\d+\.\d\d)\s+(\d+\.\d\d)$", out, re.M)
    assert [(index, label.strip()) for index, label, _, _ in rows] == [
        ("0", "Conv2D 1->8 3x3 valid"), ("1", "MaxPool2D 2x2"), ("2", "Flatten"), ("3", "Linear 1352->10")], out
    assert "sum of layers" in out
