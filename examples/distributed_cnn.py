"""The Fashion CNN trained data-parallel on the shipped Fashion-MNIST sample, one process per rank.

    OPENBLAS_NUM_THREADS=1 mpirun -np 2 python examples/distributed_cnn.py --epochs 3

Open MPI refuses to run as root and to start more ranks than cores unless told:
``mpirun --allow-run-as-root --oversubscribe -np 2 ...``. On GPUs, one rank per GPU with NCCL:
``mpirun -np 2 python examples/distributed_cnn.py --device gpu``. Run without mpirun it trains in
one process, the same model to float32 rounding: ``--batch-size`` is the global batch, split over
the ranks. Only rank 0 prints, and writes the checkpoint and the loss plot.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import xpnn  # noqa: E402
from xpnn import distributed, layers, optim  # noqa: E402


def fashion_cnn() -> xpnn.Sequential:
    return xpnn.Sequential([
        layers.Conv2D(1, 32, 3, padding="same"), layers.ReLU(), layers.MaxPool2D(2),
        layers.Conv2D(32, 64, 3, padding="same"), layers.ReLU(), layers.MaxPool2D(2),
        layers.Flatten(), layers.Linear(64 * 7 * 7, 128), layers.ReLU(), layers.Linear(128, 10)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, over all ranks")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="auto", help="auto, gpu (gpu:<local rank>) or cpu")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N samples only")
    parser.add_argument("--out", default="distributed_cnn_out")
    args = parser.parse_args()

    strategy = distributed.init(device=args.device)
    if distributed.is_main():
        how = f"{distributed.world_size()} ranks, gradients over {strategy.backend}" if strategy else "1 process"
        print(f"Fashion CNN on {xpnn.get_device()} ({how})", flush=True)
        os.makedirs(args.out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    xpnn.seed(0)
    model = fashion_cnn()
    history = model.fit(x_train, y_train, loss="cross_entropy", optimizer=optim.SGD(lr=args.lr, momentum=0.9),
                        epochs=args.epochs, batch_size=args.batch_size, seed=0, scale="unit",
                        validation_data=(x_test, y_test), verbose=1,
                        callbacks=[xpnn.ModelCheckpoint(os.path.join(args.out, "fashion_cnn.npz"),
                                                        monitor="val_accuracy", save_best_only=True)])
    history.plot(os.path.join(args.out, "loss.png"))
    if distributed.is_main():
        print(f"test accuracy {history['val_accuracy'][-1]:.4f}", flush=True)
        if strategy is not None:
            stats = strategy.stats
            print(f"{stats['steps']} steps, all-reduce {1e3 * stats['allreduce_seconds'] / stats['steps']:.2f} ms "
                  f"and {stats['allreduce_bytes'] / stats['steps'] / 1e6:.2f} MB per step", flush=True)


if __name__ == "__main__":
    main()
