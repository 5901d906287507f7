"""Data-parallel step time: 1 process vs 2 MPI ranks, the all-reduce's share, bytes per step.

    python benchmarks/bench_distributed.py [--model fashion|mlp] [--batch 128] [--steps 24] [--repeats 3]
    python benchmarks/bench_distributed.py --device gpu --configs plain,dp1   # on a GPU: NCCL, 1 rank

Each configuration runs in fresh processes: ``fit`` of the Fashion CNN (or an MLP) on the shipped
Fashion-MNIST sample with global batch ``--batch``, one warm-up epoch and one timed epoch of
``--steps`` steps; the step time is the timed epoch's wall time per step (rank 0), the median
over ``--repeats`` runs (taken in turn, so load from elsewhere spreads over all of them). The
data-parallel runs use ``profile=True``: before each all-reduce the ranks meet at a barrier (time
reported as "wait", which is load imbalance between ranks), then the all-reduce alone is timed.
"Payload" is the gradient bytes each rank hands to the all-reduce per step; a ring all-reduce
sends about 2 (W - 1) / W times that per rank. Configurations (``--configs``):

    plain1   1 process, 1 BLAS thread, no xpnn.distributed
    plain2   1 process, 2 BLAS threads, no xpnn.distributed
    dp1      mpirun -np 1 with the data-parallel path forced (init(always=True)), 2 threads: its overhead
    dp2      mpirun -np 2, 1 BLAS thread per rank
    dp2x2    mpirun -np 2, 2 BLAS threads per rank (oversubscribed on a 2-core machine)
    ar2      mpirun -np 2, no training: the gradient bucket's all-reduce alone, 200 times (median)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = {  # name: (ranks, BLAS threads per rank, data-parallel path)
    "plain1": (1, 1, False), "plain2": (1, 2, False), "dp1": (1, 2, True), "dp2": (2, 1, True), "dp2x2": (2, 2, True),
    "ar2": (2, 1, True),
}


def build(name: str):
    """The example's Fashion CNN (421,642 parameters), or an MLP with 1.9 M parameters and little compute."""
    import xpnn
    from xpnn import layers as L
    if name == "mlp":
        return xpnn.Sequential([L.Flatten(), L.Linear(784, 1024), L.ReLU(), L.Linear(1024, 1024), L.ReLU(),
                                L.Linear(1024, 10)])
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from distributed_cnn import fashion_cnn
    return fashion_cnn()


def worker(args: argparse.Namespace) -> None:
    """One rank: warm-up epoch, timed epoch; rank 0 prints one JSON line."""
    sys.path.insert(0, ROOT)
    import xpnn
    from xpnn import distributed, optim

    strategy = distributed.init(device=args.device, always=args.dp, profile=True) if args.dp else None
    if not args.dp:
        xpnn.set_device(args.device)
    if args.allreduce_only:
        return allreduce_only(strategy, build(args.model))
    (x, y), _ = xpnn.datasets.fashion_mnist_sample()
    n = args.batch * args.steps
    x, y = x[:n], y[:n]
    xpnn.seed(0)
    model = build(args.model)
    snapshots = []

    class Snapshot(xpnn.Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots.append((logs["seconds"], dict(strategy.stats) if strategy else {}))

    model.fit(x, y, optimizer=optim.SGD(lr=0.01, momentum=0.9), epochs=2, batch_size=args.batch, seed=0,
              scale="unit", verbose=0, callbacks=[Snapshot()])
    (_, first), (seconds, last) = snapshots
    result = {"step_ms": 1e3 * seconds / args.steps, "params": model.count_params(), "device": xpnn.get_device()}
    if strategy is not None:
        steps = last["steps"] - first["steps"]
        result.update(
            backend=strategy.backend, ranks=distributed.world_size(),
            allreduce_ms=1e3 * (last["allreduce_seconds"] - first["allreduce_seconds"]) / steps,
            wait_ms=1e3 * (last["wait_seconds"] - first["wait_seconds"]) / steps,
            calls_per_step=(last["allreduce_calls"] - first["allreduce_calls"]) / steps,
            payload_bytes=(last["allreduce_bytes"] - first["allreduce_bytes"]) / steps)
    if distributed.is_main():
        print("RESULT " + json.dumps(result), flush=True)


def allreduce_only(strategy, model) -> None:
    """The all-reduce of one step's gradient bucket, timed alone (after a barrier) 200 times."""
    from xpnn import distributed

    params = model.parameters()
    for p in params:
        p.grad = p.value * 0.5
    times = []
    for _ in range(200):
        before = strategy.stats["allreduce_seconds"]
        strategy.reduce_gradients(params, 1, 2)
        times.append(strategy.stats["allreduce_seconds"] - before)
    times.sort()
    result = {"step_ms": 0.0, "allreduce_ms": 1e3 * times[len(times) // 2], "allreduce_p90_ms": 1e3 * times[180],
              "wait_ms": 0.0, "calls_per_step": strategy.stats["allreduce_calls"] / 200,
              "payload_bytes": strategy.stats["allreduce_bytes"] / 200, "backend": strategy.backend}
    if distributed.is_main():
        print("RESULT " + json.dumps(result), flush=True)


def run_config(name: str, args: argparse.Namespace) -> dict:
    ranks, threads, dp = CONFIGS[name]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model, "--batch",
               str(args.batch), "--steps", str(args.steps), "--device", args.device] + (["--dp"] if dp else []) + \
        (["--allreduce-only"] if name == "ar2" else [])
    if dp:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise SystemExit("mpirun not found: apt install openmpi-bin libopenmpi-dev; pip install mpi4py")
        command = [mpirun, "--oversubscribe", "--allow-run-as-root", "--bind-to", "none", "-np", str(ranks)] + command
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(config=name, ranks=ranks, threads=threads, wall_s=time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["fashion", "mlp"], default="fashion")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=24, help="steps per epoch (one warm-up, one timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="plain1,plain2,dp1,dp2,dp2x2")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the median is shown")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    names = args.configs.split(",")
    print(f"load average before: {os.getloadavg()}", flush=True)
    runs = {name: [] for name in names}
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every configuration
        for name in names:
            runs[name].append(run_config(name, args))
    print(f"load average after: {os.getloadavg()}")
    middle = [sorted(found, key=lambda r: r["step_ms"] or r["allreduce_ms"]) for found in runs.values()]
    results = [found[len(found) // 2] for found in middle]
    reference = next((r for r in results if r["config"] == "plain2"), results[0])
    base = reference["step_ms"]
    print(f"{args.model} model, global batch {args.batch}, {args.steps} timed steps, device {args.device}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats} runs")
    header = ("config", "ranks x threads", "step ms", f"speed vs {reference['config']}", "all-reduce ms", "wait ms",
              "calls/step", "payload MB/step", "ring MB sent/rank")
    print(" | ".join(header))
    for r in results:
        ranks = r["ranks"]
        payload = r.get("payload_bytes")
        row = (r["config"], f"{ranks} x {r['threads']}", f"{r['step_ms']:.1f}" if r["step_ms"] else "-",
               f"{base / r['step_ms']:.2f}x" if r["step_ms"] else "-",
               f"{r['allreduce_ms']:.2f}" if "allreduce_ms" in r else "-",
               f"{r['wait_ms']:.2f}" if "wait_ms" in r else "-",
               f"{r['calls_per_step']:.0f}" if "calls_per_step" in r else "-",
               f"{payload / 1e6:.2f}" if payload else "-",
               f"{2 * (ranks - 1) / ranks * payload / 1e6:.2f}" if payload else "-")
        print(" | ".join(row))
    print("all runs (step ms, all-reduce ms):",
          json.dumps({name: [(round(r["step_ms"], 1), round(r.get("allreduce_ms", 0), 2)) for r in found]
                      for name, found in runs.items()}))


if __name__ == "__main__":
    main()
