"""The tutorials' L-layer MLP, full-batch gradient descent: xpnn vs PyTorch in the same process.

    python benchmarks/bench_mlp.py [--device cpu|gpu:0] [--epochs 60] [--repeats 5]

Workloads: [12288, 20, 7, 5, 1] on 209 samples (the cat classifier's 64x64x3 images) and
[49152, 20, 7, 5, 1] on 1323 samples (128x128x3), float32, BCE from logits, SGD lr 0.0075.
Both libraries train the same initial weights on the same random data; each timed run is
``epochs`` full-batch steps, and the median of ``repeats`` runs is reported.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import common  # noqa: E402
import xpnn  # noqa: E402
from xpnn import losses, optim  # noqa: E402

WORKLOADS = [("cat MLP 64x64x3", [12288, 20, 7, 5, 1], 209), ("cat MLP 128x128x3", [49152, 20, 7, 5, 1], 1323)]
LR = 0.0075


def make_data(features: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((samples, features), dtype=np.float32)
    y = (rng.random(samples) < 0.35).astype(np.float32)
    return x, y


def time_xpnn(sizes, x, y, epochs, repeats, device):
    xpnn.seed(1)
    with xpnn.use_device(device):
        model = xpnn.mlp(sizes, init="lecun")
    initial = model.state_dict()
    loss = losses.BinaryCrossEntropy(from_logits=True)
    model.fit(x, y, loss=loss, optimizer=optim.SGD(lr=LR), epochs=2, batch_size=None, verbose=0)  # warm-up
    times = []
    for _ in range(repeats):
        model.load_state_dict(initial)
        started = time.perf_counter()
        history = model.fit(x, y, loss=loss, optimizer=optim.SGD(lr=LR), epochs=epochs, batch_size=None, verbose=0)
        times.append(time.perf_counter() - started)
    return statistics.median(times), history["loss"][-1], initial


def time_torch(sizes, x, y, epochs, repeats, initial, device):
    import torch

    torch_device = "cuda" if device.startswith("gpu") else "cpu"
    mods = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = torch.nn.Linear(n_in, n_out)
        mods += [linear] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*mods).to(torch_device)
    linears = [m for m in mods if isinstance(m, torch.nn.Linear)]

    def reset():
        with torch.no_grad():
            for i, linear in enumerate(linears):
                layer = 2 * i
                linear.weight.copy_(torch.from_numpy(initial[f"{layer}.weight"].T.copy()))
                linear.bias.copy_(torch.from_numpy(initial[f"{layer}.bias"]))

    xt = torch.from_numpy(x).to(torch_device)
    yt = torch.from_numpy(y).reshape(-1, 1).to(torch_device)
    criterion = torch.nn.BCEWithLogitsLoss()

    def run(steps):
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            value = criterion(model(xt), yt)
            value.backward()
            opt.step()
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return float(value.detach())

    reset()
    run(2)
    times = []
    for _ in range(repeats):
        reset()
        started = time.perf_counter()
        last = run(epochs)
        times.append(time.perf_counter() - started)
    return statistics.median(times), last


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--epochs", type=int, default=60, help="full-batch steps per timed run")
    args = parser.parse_args()
    torch, torch_version = common.import_torch(args.threads)
    print(f"xpnn {xpnn.__version__} on {args.device}, NumPy {np.__version__}, PyTorch {torch_version}, "
          f"{args.threads} threads, {args.epochs} full-batch steps per run, median of {args.repeats} runs")
    header = f"{'workload':<20} {'samples':>7} {'xpnn samples/s':>15} {'torch samples/s':>16} {'ratio':>6}  final loss xpnn/torch"
    print(header)
    print("-" * len(header))
    for name, sizes, samples in WORKLOADS:
        x, y = make_data(sizes[0], samples)
        t_x, loss_x, initial = time_xpnn(sizes, x, y, args.epochs, args.repeats, args.device)
        rate_x = samples * args.epochs / t_x
        if torch is None:
            print(f"{name:<20} {samples:>7} {rate_x:>15,.0f} {'-':>16} {'-':>6}  {loss_x:.5f}")
            continue
        t_t, loss_t = time_torch(sizes, x, y, args.epochs, args.repeats, initial, args.device)
        rate_t = samples * args.epochs / t_t
        print(f"{name:<20} {samples:>7} {rate_x:>15,.0f} {rate_t:>16,.0f} {rate_x / rate_t:>5.2f}x  "
              f"{loss_x:.5f}/{loss_t:.5f}")


if __name__ == "__main__":
    main()
