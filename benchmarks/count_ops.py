"""Array operations (GPU kernel launches) and host reads in one training step, counted on the CPU.

    python benchmarks/count_ops.py [--only fashion fashion-bn catdog] [--optimizer adam] [--class-weight] [--by-name]

Each workload runs on :mod:`xpnn.instrumented`, an array-API namespace over NumPy that counts
every call that would launch a kernel or a copy on a GPU (views, ``empty`` and no-op casts are
free) and every read that waits for the device. On CuPy each of those operations costs a launch
of 5-20 us whatever its size, so at small batches the count, not the arithmetic, sets the step
time. Two figures per workload:

* the step's core: ``model(x, train=True)``, the loss, the backward pass and ``optimizer.step``,
  split by phase;
* a step inside ``fit``: (operations of ``fit`` over 3 batches - over 1 batch) / 2, so it also
  counts the batch transfer, scaling and metric sums, but not the once-per-epoch work.

Host reads are counted the same way: a step of ``fit`` must make none (the metrics are read only
every ``xpnn.train.loop.SYNC_SECONDS``, set to infinity here so the figure is about the step).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import xpnn  # noqa: E402
from xpnn import backend, instrumented, optim, precision, zoo  # noqa: E402
from xpnn.train import loop  # noqa: E402

# name: (title, builder, input shape (C, H, W), classes, batch)
WORKLOADS = {
    "fashion": ("Fashion CNN (zoo.fashion_cnn), 1x28x28", lambda: zoo.fashion_cnn(), (1, 28, 28), 10, 64),
    "fashion-bn": ("Fashion CNN + BatchNorm, 1x28x28", lambda: zoo.fashion_cnn(batch_norm=True), (1, 28, 28), 10, 64),
    "catdog": ("cat/dog CNN (zoo.catdog_cnn), 3x64x64", lambda: zoo.catdog_cnn(64), (3, 64, 64), 2, 64),
    "mlp": ("tutorial MLP [12288, 20, 7, 5, 1]", lambda: zoo.tutorial_mlp(12288), (3, 64, 64), 2, 64),
}
OPTIMIZERS = {"adam": lambda: optim.Adam(lr=1e-3), "sgd": lambda: optim.SGD(lr=0.01),
              "momentum": lambda: optim.SGD(lr=0.01, momentum=0.9), "adamw": lambda: optim.AdamW(lr=1e-3),
              "rmsprop": lambda: optim.RMSprop(lr=1e-3),
              "adam-global-clipnorm": lambda: optim.Adam(lr=1e-3, global_clipnorm=1.0),
              "adam-clipnorm": lambda: optim.Adam(lr=1e-3, clipnorm=1.0),
              "adam-clipvalue": lambda: optim.Adam(lr=1e-3, clipvalue=1.0),
              "adam-cosine-warmup": lambda: optim.Adam(optim.CosineDecay(1e-3, 10, warmup_epochs=1))}


def data(shape: tuple[int, ...], classes: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n)


def count_core(name: str, optimizer: str) -> dict:
    """Operations of one step's phases (after two warm-up steps, so optimizer state exists)."""
    title, build, shape, classes, batch = WORKLOADS[name]
    xp = instrumented.make()
    device = backend.Device.from_namespace(xp, xp.devices[0])
    with backend.use_device(device):
        xpnn.seed(0)
        model = build()
        loss = zoo.loss_for(model)
        opt = OPTIMIZERS[optimizer]()
        if precision.dtype_policy().loss_scaling:
            opt = optim.LossScaleOptimizer(opt)
        x_host, y_host = data(shape, classes, batch)
        x = xpnn.to_device(x_host, dtype="float32") * (1 / 255)
        y = xpnn.to_device(y_host if classes > 2 else y_host.astype(np.float32))
        params = model.parameters()
        phases: dict[str, dict] = {}
        for step in range(3):
            xp.reset()
            out, backprop = model(x, train=True, input_grad=False)
            phases["forward"] = dict(xp.ops)
            xp.reset()
            _, dloss = loss(out, y)
            grad = opt.scale_loss(dloss())
            phases["loss"] = dict(xp.ops)
            xp.reset()
            backprop(grad)
            phases["backward"] = dict(xp.ops)
            xp.reset()
            opt.step(params)
            for p in params:
                p.grad = None
            phases["optimizer"] = dict(xp.ops)
    return {"title": title, "batch": batch, "phases": phases}


def count_fit(name: str, optimizer: str, class_weight: bool = False) -> tuple[dict, dict]:
    """Per-step operations and host reads of ``fit``: the difference of 3 and 1 batches, halved
    (``class_weight``: with ``class_weight="balanced"``, so each batch carries sample weights)."""
    title, build, shape, classes, batch = WORKLOADS[name]
    results = []
    saved = loop.SYNC_SECONDS
    loop.SYNC_SECONDS = math.inf
    try:
        for batches in (1, 3):
            xp = instrumented.make()
            device = backend.Device.from_namespace(xp, xp.devices[0])
            with backend.use_device(device):
                xpnn.seed(0)
                model = build()
                x_host, y_host = data(shape, classes, batch * batches)
                xp.reset()
                model.fit(x_host, y_host, loss=zoo.loss_for(model), optimizer=OPTIMIZERS[optimizer](), epochs=1,
                          batch_size=batch, shuffle=False, verbose=0, scale="unit",
                          class_weight="balanced" if class_weight else None)
            results.append((dict(xp.ops), dict(xp.host_reads)))
    finally:
        loop.SYNC_SECONDS = saved
    (ops1, reads1), (ops3, reads3) = results

    def per_step(one: dict, three: dict) -> dict:
        keys = set(one) | set(three)
        return {k: (three.get(k, 0) - one.get(k, 0)) / 2 for k in keys if three.get(k, 0) != one.get(k, 0)}

    return per_step(ops1, ops3), per_step(reads1, reads3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), default=["fashion", "fashion-bn", "catdog"])
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--class-weight", action="store_true",
                        help="fit with class_weight='balanced' (the loss weighs each sample)")
    parser.add_argument("--by-name", action="store_true", help="also list the operations of a fit step by name")
    parser.add_argument("--precision", choices=precision.POLICIES, default="float32",
                        help="the dtype policy the steps run under (xpnn.set_dtype_policy)")
    args = parser.parse_args()
    precision.set_dtype_policy(args.precision)
    print(f"xpnn {xpnn.__version__}: array operations per training step, {args.optimizer}, {args.precision}")
    print(f"{'workload':<42} {'batch':>5} {'forward':>7} {'loss':>5} {'backward':>8} {'optim':>6} {'core':>5} "
          f"{'fit step':>8} {'host reads':>10}")
    for name in args.only:
        core = count_core(name, args.optimizer)
        totals = {phase: sum(ops.values()) for phase, ops in core["phases"].items()}
        fit_ops, fit_reads = count_fit(name, args.optimizer, args.class_weight)
        print(f"{core['title']:<42} {core['batch']:>5} {totals['forward']:>7} {totals['loss']:>5} "
              f"{totals['backward']:>8} {totals['optimizer']:>6} {sum(totals.values()):>5} "
              f"{sum(fit_ops.values()):>8g} {sum(fit_reads.values()):>10g}", flush=True)
        if args.by_name:
            for op, count in sorted(fit_ops.items(), key=lambda item: -item[1]):
                print(f"    {op:<24} {count:g}")
            for read, count in sorted(fit_reads.items()):
                print(f"    host read {read:<14} {count:g}")


if __name__ == "__main__":
    main()
