"""ONNX export: export time, file size, and inference throughput of onnxruntime (CPU) against xpnn's
own ``predict`` (and PyTorch CPU for the Fashion CNN), side by side in one process.

    python benchmarks/bench_onnx.py [--repeats 5] [--seconds 0.5] [--threads 2]

Models: the zoo's Fashion CNN (``cnn``, 1x28x28, 10 classes) and every zoo model whose name
contains "resnet" (at the first of 1x28x28, 3x32x32, 3x64x64 it builds for), untrained (the
weights do not change the work). For each model and batch size (1 and 256), the libraries run
in alternating timed runs of about ``--seconds`` each, after warm-up; the table shows the median
samples/s over ``--repeats`` runs, and ratios against xpnn (above 1: faster than xpnn).

- xpnn: ``model.predict(x, batch_size=batch)``, the user's call: host batch in, host array out
  (input checks, batching, casting included); "xpnn forward" is ``model(x)`` alone on a batch
  already on the device, for how much of predict's time is the network. Ratios are against predict.
- onnxruntime: ``InferenceSession.run`` on the exported file, CPUExecutionProvider,
  ``intra_op_num_threads=--threads``, default graph optimizations.
- PyTorch: the same network and weights (benchmarks/bench_cnn.py's builder), ``eval()`` under
  ``torch.inference_mode()``, ``torch.set_num_threads(--threads)``; Fashion CNN only.

Export time is the median of three ``xpnn.export_onnx`` calls (graph build, full check, write).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

THREADS = "2"
os.environ.setdefault("OMP_NUM_THREADS", THREADS)
os.environ.setdefault("OPENBLAS_NUM_THREADS", THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import bench_cnn  # noqa: E402
import common  # noqa: E402
import xpnn  # noqa: E402
from xpnn import zoo  # noqa: E402

BATCHES = (1, 256)
RESNET_SHAPES = ((1, 28, 28), (3, 32, 32), (3, 64, 64))


def models() -> list[tuple[str, xpnn.Sequential, tuple[int, ...], list | None]]:
    """(title, model, input shape, bench_cnn layer specs for the PyTorch twin or None)."""
    xpnn.seed(0)
    specs = bench_cnn.WORKLOADS["fashion"][3]
    fashion = bench_cnn.xpnn_model(specs)
    assert fashion.config() == zoo.build("cnn", (1, 28, 28), 10).config(), "bench_cnn's Fashion CNN is not zoo's cnn"
    found = [("Fashion CNN (zoo cnn)", fashion, (1, 28, 28), specs)]
    for name in zoo.MODELS:
        if "resnet" not in name:
            continue
        for shape in RESNET_SHAPES:
            try:
                found.append((f"{name} {'x'.join(map(str, shape))}", zoo.build(name, shape, 10), shape, None))
                break
            except ValueError:
                continue
    for _, model, shape, _ in found:
        model.build(shape)
        model.loss = zoo.loss_for(model)
    return found


def throughput(run, batch: int, seconds: float) -> float:
    """Samples per second of ``run()`` over about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch / elapsed


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of each timed run")
    args = parser.parse_args()
    import onnxruntime as ort
    torch, torch_version = common.import_torch(args.threads)
    print(f"xpnn {xpnn.__version__}, numpy {np.__version__}, onnxruntime {ort.__version__}, torch {torch_version}; "
          f"{args.threads} threads each; median of {args.repeats} alternating runs of {args.seconds} s")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for title, model, shape, specs in models():
            path = Path(tmp) / "model.onnx"
            export_times = []
            for _ in range(3):
                start = time.perf_counter()
                xpnn.export_onnx(model, path)
                export_times.append(time.perf_counter() - start)
            size = path.stat().st_size
            print(f"{title}: {model.count_params():,} parameters, export {statistics.median(export_times) * 1e3:.0f} ms, "
                  f"file {size / 2**20:.2f} MiB")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            net = None
            if torch is not None and specs is not None:
                net = bench_cnn.torch_model(specs, model, "cpu").eval()
            for batch in BATCHES:
                x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
                x_device = xpnn.to_device(x, model.device)
                runs = {"xpnn": lambda: model.predict(x, batch_size=batch),
                        "xpnn forward": lambda: model(x_device)[0],
                        "onnxruntime": lambda: session.run(None, {"input": x})}
                if net is not None:
                    x_torch = torch.from_numpy(x)

                    def torch_run() -> None:
                        with torch.inference_mode():
                            net(x_torch)
                    runs["torch"] = torch_run
                ort_logits = session.run(["logits"], {"input": x})[0]
                np.testing.assert_allclose(ort_logits, model.predict(x), rtol=1e-4, atol=1e-4)
                for run in runs.values():  # warm-up
                    throughput(run, batch, min(args.seconds, 0.2))
                rates: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(args.repeats):
                    for name, run in runs.items():
                        time.sleep(bench_cnn.PAUSE)  # the last library's idle threads stop spinning
                        rates[name].append(throughput(run, batch, args.seconds))
                median = {name: statistics.median(values) for name, values in rates.items()}
                rows.append((title, batch, median))
    print()
    print("| model | batch | xpnn predict samples/s | xpnn forward samples/s | onnxruntime samples/s | ratio ort/xpnn "
          "| torch samples/s | ratio torch/xpnn |")
    print("|---|---|---|---|---|---|---|---|")
    for title, batch, median in rows:
        torch_cells = (f"{median['torch']:,.0f} | {median['torch'] / median['xpnn']:.2f}x" if "torch" in median
                       else "not run | ")
        print(f"| {title} | {batch} | {median['xpnn']:,.0f} | {median['xpnn forward']:,.0f} | {median['onnxruntime']:,.0f} | "
              f"{median['onnxruntime'] / median['xpnn']:.2f}x | {torch_cells} |")


if __name__ == "__main__":
    main()
