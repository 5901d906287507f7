"""Can the convolution's batch chunks run on both cores? A measurement, not a feature.

    python benchmarks/bench_threads.py [--repeats 7]

NumPy runs im2col, col2im and element-wise passes on one core, OpenBLAS its matmuls on all. This
times Conv2D's forward + backward (the library's own layer) at the Fashion CNN's 32->64 and the
cat/dog CNN's 32->64 shapes two ways, alternately, median wall time of ``--repeats``:

* serial: the chunks one after the other, OpenBLAS on 2 threads (what xpnn does);
* threaded: the chunks split between 2 Python threads (NumPy's copies and OpenBLAS release the
  GIL), OpenBLAS limited to 1 thread each through threadpoolctl so the cores are not oversubscribed.

The threaded variant runs the same layer on two halves of the batch at once and adds the two
weight gradients, which is what a chunk pool inside Conv2D would do (their sum is not made
thread-safe here: this measures time only). Needs threadpoolctl (pip install threadpoolctl).

On the 2-core development machine, quiet (load average 0.5), two runs of ``--repeats 9``: Fashion
40.0 ms serial, 56.5-56.8 ms threaded (0.70-0.71x); cat/dog 76.4-80.1 ms against 89.2-92.5 ms
(0.83-0.90x). Threads do not pay here, so Conv2D runs its chunks in turn.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import xpnn  # noqa: E402
from xpnn import layers  # noqa: E402

SHAPES = {"Fashion 32->64 same, 14x14, batch 128": (128, 32, 64, 14, "same"),
          "cat/dog 32->64 valid, 31x31, batch 64": (64, 32, 64, 31, 0)}


def run(conv, x):
    y, backprop = conv(x, train=True)
    return backprop(y)


def main() -> None:
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 7
    pool = ThreadPoolExecutor(2)
    for title, (n, c_in, c_out, side, pad) in SHAPES.items():
        conv = layers.Conv2D(c_in, c_out, 3, padding=pad)
        x = xpnn.to_device(np.random.default_rng(0).random((n, c_in, side, side), dtype=np.float32))
        halves = [x[: n // 2], x[n // 2:]]

        def serial():
            conv.weight.grad = conv.bias.grad = None
            run(conv, x)

        def threaded():
            conv.weight.grad = conv.bias.grad = None
            with threadpool_limits(1):
                list(pool.map(lambda part: run(conv, part), halves))

        times = {"serial": [], "threaded": []}
        for f in (serial, threaded):
            f()
        for _ in range(repeats):
            for name, f in (("serial", serial), ("threaded", threaded)):
                started = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - started)
        s, t = statistics.median(times["serial"]), statistics.median(times["threaded"])
        print(f"{title}: serial {1e3 * s:.1f} ms, threaded {1e3 * t:.1f} ms, speed-up {s / t:.2f}x", flush=True)


if __name__ == "__main__":
    main()
