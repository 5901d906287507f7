"""One rank of the distributed tests; run under ``mpirun -np 2``. ``SCENARIO OUT_DIR``.

``train``: every case of :data:`CASES` with data-parallel ``fit``, each rank saving its final
state and history to ``OUT_DIR``. ``raise``: rank 1 fails while rank 0 waits in ``fit``.
``mismatch``: rank 1 builds a different model. The tests compare ``train``'s files with
:func:`run_case` in a single process.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import xpnn  # noqa: E402
from xpnn import distributed, layers, optim  # noqa: E402

#: name: (samples, validation samples, global batch, epochs); batches of 37 over 149 samples leave a
#: tail of 1 (rank 1 idle), and odd batches split 19/18.
CASES = {"cnn": (192, 0, 64, 2), "uneven": (149, 51, 37, 3), "batchnorm": (120, 0, 40, 2)}


def model_for(case: str, hidden: int = 32) -> xpnn.Sequential:
    if case == "cnn":
        return xpnn.Sequential([layers.Conv2D(1, 4, 3), layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(),
                                layers.Linear(4 * 13 * 13, 10)])
    if case == "uneven":
        return xpnn.Sequential([layers.Flatten(), layers.Linear(784, hidden), layers.ReLU(), layers.Linear(hidden, 10)])
    return xpnn.Sequential([layers.Flatten(), layers.Linear(784, 16), layers.BatchNorm1D(16), layers.ReLU(),
                            layers.Linear(16, 10)])


def run_case(case: str, seed: int = 7) -> tuple[dict[str, np.ndarray], dict]:
    """Train ``case`` (distributed if ``init`` made a strategy); the final state and history."""
    n, n_val, batch, epochs = CASES[case]
    (x, y), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    xpnn.seed(seed)
    model = model_for(case)
    opt = optim.Adam(lr=0.01) if case == "uneven" else optim.SGD(lr=0.05, momentum=0.9)
    val = (x_test[:n_val], y_test[:n_val]) if n_val else None
    history = model.fit(x[:n], y[:n], loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=batch,
                        seed=3, scale="unit", validation_data=val, verbose=0)
    return model.state_dict(), {k: v for k, v in history.to_dict().items() if k not in ("seconds",
                                                                                          "samples_per_second")}


def main() -> None:
    scenario, out = sys.argv[1], sys.argv[2]
    strategy = distributed.init(device="cpu")
    r = distributed.rank()
    if scenario == "train":
        assert strategy is not None and strategy.backend == "mpi", strategy
        for case in CASES:
            state, history = run_case(case, seed=7 + r)  # rank 1 starts elsewhere: fit broadcasts rank 0's
            np.savez(os.path.join(out, f"{case}_rank{r}.npz"), **state)
            with open(os.path.join(out, f"{case}_rank{r}.json"), "w") as f:
                json.dump(history, f)
        xpnn.History.from_dict(history).to_json(os.path.join(out, f"written_by_rank{r}.json"))
        stats = dict(strategy.stats, world_size=distributed.world_size(), local_rank=distributed.local_rank())
        with open(os.path.join(out, f"stats_rank{r}.json"), "w") as f:
            json.dump(stats, f)
    elif scenario == "raise":
        if r == 1:
            raise RuntimeError("boom on purpose")
        run_case("cnn")
    elif scenario == "mismatch":
        (x, y), _ = xpnn.datasets.fashion_mnist_sample()
        model_for("uneven", hidden=32 if r == 0 else 16).fit(x[:64], y[:64], batch_size=32, verbose=0)
    distributed.barrier()


if __name__ == "__main__":
    main()
