"""Peak training memory: xpnn vs PyTorch, a fresh process per library and workload.

    python benchmarks/bench_memory.py [--device cpu|gpu:0] [--only NAME ...] [--steps 4]
    python benchmarks/bench_memory.py --precision mixed_bfloat16   # both libraries at 16-bit compute

Each child process builds the model (same initial weights in both libraries) and one random batch,
then measures what ``--steps`` training steps (forward, loss, backward, plain SGD) add to the
process's peak memory from that moment: on the CPU the rise of the peak resident set (VmHWM, reset
through /proc/self/clear_refs), on a GPU the peak of the library's allocator (CuPy's memory pool
``total_bytes`` against ``torch.cuda.max_memory_allocated``). The ``estimate`` column is xpnn's own
figure, :func:`xpnn.layers.memory_estimate` (what ``model.summary(batch_size=N)`` and ``xpnn info
--batch-size N`` print): its ``step`` part (gradients, optimizer state, what backward keeps and the
largest transient: what a step adds to a model and batch that exist), against xpnn's measured peak.

Workloads: the Fashion and cat/dog CNNs of ``bench_cnn.py``, ``zoo.resnet((3, 64, 64), 2)`` at
batch 64, the ResNet-18 layout (widths 64-128-256-512, two blocks a stage) at 128 px and batch 16,
and that ResNet-18 with checkpointed blocks (``zoo.resnet(..., checkpoint=True)``; the ratio is
against PyTorch's plain network, and a second row compares with PyTorch checkpointing the same
blocks through ``torch.utils.checkpoint``).

The children run with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=131072``) so that every
large array of either library is its own mapping and the resident set follows the live arrays; with
glibc's default (``--default-malloc``) freed blocks are kept or reused unpredictably and one workload's
figure moves by a third from run to run, for both libraries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_cnn  # noqa: E402
import common  # noqa: E402
import xpnn  # noqa: E402
from xpnn import losses, optim, zoo  # noqa: E402

RESNET18 = {"widths": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)}

# name: (title, input shape (C, H, W), batch, classes (1: one logit), builder)
WORKLOADS = {
    "fashion": ("Fashion CNN", (1, 28, 28), 128, 10,
                lambda: bench_cnn.xpnn_model(bench_cnn.WORKLOADS["fashion"][3], (1, 28, 28), 10)),
    "catdog": ("cat/dog CNN 3x64x64", (3, 64, 64), 64, 1,
               lambda: bench_cnn.xpnn_model(bench_cnn.WORKLOADS["catdog"][3], (3, 64, 64), 1)),
    "resnet": ("zoo.resnet 3x64x64", (3, 64, 64), 64, 2, lambda: zoo.resnet((3, 64, 64), 2)),
    "resnet18": ("ResNet-18 layout 3x128x128", (3, 128, 128), 16, 2,
                 lambda: zoo.resnet((3, 128, 128), 2, **RESNET18)),
    "resnet18-checkpoint": ("ResNet-18 layout, checkpointed", (3, 128, 128), 16, 2,
                            lambda: zoo.resnet((3, 128, 128), 2, checkpoint=True, **RESNET18)),
}


def _steps(name: str, library: str, device: str):
    """The model (for the estimate) and a function running one training step of ``library``."""
    title, shape, batch, classes, build = WORKLOADS[name]
    xpnn.seed(0)
    with xpnn.use_device(device):
        model = build()
    x_host, y_host = bench_cnn.make_batch(shape, batch, classes)
    if library.startswith("torch"):
        import torch

        torch_device = "cuda" if device.startswith("gpu") else "cpu"
        net = bench_cnn.torch_model(model, torch_device, checkpoint=library == "torch-checkpointed")
        x, y = torch.from_numpy(x_host).to(torch_device), torch.from_numpy(y_host).to(torch_device)
        criterion = torch.nn.CrossEntropyLoss() if classes > 1 else torch.nn.BCEWithLogitsLoss()
        sgd = torch.optim.SGD(net.parameters(), lr=bench_cnn.LR)

        half = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(xpnn.dtype_policy().name)

        def torch_step() -> None:
            sgd.zero_grad(set_to_none=True)
            with torch.autocast(torch_device, dtype=half or torch.float32, enabled=half is not None):
                out = net(x)
            criterion((out if classes > 1 else out[:, 0]).float(), y).backward()
            sgd.step()

        return model, torch_step
    x, y = xpnn.to_device(x_host, device), xpnn.to_device(y_host, device)
    loss = losses.CrossEntropy() if classes > 1 else losses.BinaryCrossEntropy()
    params = model.trainable_parameters()
    sgd = optim.SGD(lr=bench_cnn.LR)

    def xpnn_step() -> None:
        for p in params:
            p.grad = None
        out, backprop = model(x, train=True, input_grad=False)
        _, loss_backprop = loss(out, y)
        backprop(loss_backprop())
        sgd.step(params)

    return model, xpnn_step


def measure(name: str, library: str, device: str, steps: int) -> dict:
    """Bytes ``steps`` training steps add to the peak, and (xpnn) the estimate, in this process."""
    model, step = _steps(name, library, device)
    batch = WORKLOADS[name][2]
    estimate = xpnn.layers.memory_estimate(model, batch, WORKLOADS[name][1]).step if library == "xpnn" else None
    if device.startswith("gpu"):
        if library.startswith("torch"):
            import torch

            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            return {"peak": torch.cuda.max_memory_allocated() - base, "estimate": estimate}
        import cupy

        pool = cupy.get_default_memory_pool()
        cupy.cuda.Device().synchronize()
        base = pool.used_bytes()
        for _ in range(steps):
            step()
        cupy.cuda.Device().synchronize()
        return {"peak": pool.total_bytes() - base, "estimate": estimate}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to the current one
    base = bench_cnn._status_kib("VmRSS")
    for _ in range(steps):
        step()
    return {"peak": (bench_cnn._status_kib("VmHWM") - base) * 1024, "estimate": estimate}


def child(name: str, library: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--steps", str(args.steps),
               "--threads", str(args.threads), "--precision", args.precision, "--child", name, library]
    env = dict(os.environ)
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{name} {library} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--only", choices=sorted(WORKLOADS), nargs="+", help="run only these workloads")
    parser.add_argument("--steps", type=int, default=4, help="training steps measured")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    parser.add_argument("--precision", choices=xpnn.precision.POLICIES, default="float32",
                        help="the dtype policy of xpnn's steps, and torch.autocast at the same 16-bit type")
    parser.add_argument("--child", nargs=2, help=argparse_suppress())
    args = parser.parse_args()
    torch, torch_version = common.import_torch(args.threads)
    xpnn.set_dtype_policy(args.precision)
    if args.child:
        print(json.dumps(measure(*args.child, args.device, args.steps)))
        return
    print(f"xpnn {xpnn.__version__} on {args.device}, NumPy {np.__version__}, PyTorch {torch_version}, {args.precision}, "
          f"plain SGD; peak memory added by {args.steps} training steps, a fresh process per library and workload")
    header = f"{'workload':<32} {'batch':>5} {'xpnn MiB':>9} {'torch MiB':>9} {'ratio':>6} {'estimate MiB':>12} " \
             f"{'est/peak':>8}"
    print(header)
    print("-" * len(header))
    mib = 2 ** 20
    for name in args.only or list(WORKLOADS):
        title, _, batch, _, _ = WORKLOADS[name]
        mine = child(name, "xpnn", args)
        theirs = child(name, "torch", args)["peak"] if torch else None
        ratio = f"{mine['peak'] / theirs:.2f}x" if theirs else "-"
        torch_cell = f"{theirs / mib:,.0f}" if theirs else "-"
        estimate, share = (f"{mine['estimate'] / mib:,.0f}", f"{mine['estimate'] / mine['peak']:.2f}") \
            if mine["estimate"] else ("-", "-")
        print(f"{title:<32} {batch:>5} {mine['peak'] / mib:>9,.0f} {torch_cell:>9} {ratio:>6} {estimate:>12} "
              f"{share:>8}", flush=True)
        if torch and name.endswith("-checkpoint"):
            both = child(name, "torch-checkpointed", args)["peak"]
            print(f"{'  vs torch.utils.checkpoint':<32} {batch:>5} {mine['peak'] / mib:>9,.0f} {both / mib:>9,.0f} "
                  f"{mine['peak'] / both:>5.2f}x", flush=True)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
