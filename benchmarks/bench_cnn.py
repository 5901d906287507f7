"""CNN training steps: xpnn vs PyTorch side by side, float32, same initial weights and data.

    python benchmarks/bench_cnn.py [--device cpu|gpu:0] [--repeats 5] [--seconds 1] [--only NAME ...]
    python benchmarks/bench_cnn.py --breakdown [--only NAME ...]
    python benchmarks/bench_cnn.py --device gpu:0 --precision tf32|mixed_bfloat16|mixed_float16

``--precision`` runs both libraries alike: ``tf32`` is ``xpnn.set_float32_matmul_precision("high")``
and PyTorch's ``allow_tf32`` for matmuls and cuDNN; ``mixed_*`` is ``xpnn.set_dtype_policy`` and
``torch.autocast`` with that 16-bit type (``mixed_float16`` with loss scaling on both sides:
``LossScaleOptimizer`` and ``torch.amp.GradScaler``). On the CPU, TF32 does not exist and NumPy
emulates the 16-bit matmuls (float32 BLAS, rounded), so those runs check that the options work,
not speed: the speed is for a GPU.

A training step is forward + backward + plain SGD update (lr 0.01) of one random batch, with the
first layer's input gradient skipped in both libraries. For each workload one fresh process times
both libraries (torch.set_num_threads(--threads), NumPy's BLAS with as many threads) in
alternating runs of about ``--seconds`` each, after warm-up; the table shows the median over
``--repeats`` runs. Fresh processes keep one workload's memory-allocator state from changing the
next one's page-fault cost.

Columns: samples/s and ratio (torch time / xpnn time: above 1 means xpnn is faster); %peak, the
step's matmul work (2*M*N*K per multiply, forward and backward) over its time, as a fraction of
the float32 GEMM rate of a 4096^3 matmul on the same device (NumPy's BLAS on the CPU); sys ms,
kernel time per step, mostly page faults (memory a step frees goes back to the OS and is faulted
in and zeroed again by the next); MiB, the rise of the peak resident set over three steps in a
fresh process (on a GPU, the library's peak device allocation).

Measured on the 2-core development machine (NumPy 2.4.6 with OpenBLAS, PyTorch 2.13.0+cpu with
oneDNN), three quiet runs of the default settings; ratio = torch time / xpnn time:

    tutorial MNIST CNN   xpnn 51,300-64,200 samples/s  torch 35,500-44,700  ratio 1.44-1.56x
    Fashion CNN          xpnn  2,990-3,180 samples/s   torch  4,660-5,290   ratio 0.60-0.67x
    cat/dog CNN          xpnn    445-486 samples/s     torch    673-853     ratio 0.52-0.71x

A later day, same script, ``--repeats 5`` (GEMM peak 229 GFLOP/s; MaxPool2D's separable 2x2 path
and the transposed weight-gradient matmul in): 25,384 / 22,756 samples/s (1.12x), 1,694 / 3,049
(0.56x), 237 / 398 (0.60x), and the Fashion CNN with BatchNorm 1,227 / 2,134 (0.57x).

The ResNet workload (``zoo.resnet``: Residual blocks with projection shortcuts, 3x64x64, batch
64) on a heavily shared day (GEMM peak 38-44 GFLOP/s): 3 / 5 samples/s (0.47x) with the cat/dog
CNN at 0.33x in the same run, then 4 / 10 (0.44x); peak memory 1,450 / 615 MiB (xpnn keeps each
convolution's im2col matrix for its backward). ``--breakdown`` skips it (it nests).

``--breakdown`` times each layer inside real steps (every array fresh, as in training) and the
step's matmuls alone at the same shapes. Right after that table: the Fashion CNN step took 82 ms
(PyTorch 50 ms), its matmuls alone 27 ms, its 32->64 convolution 18 ms forward + 26 ms backward
and the first MaxPool2D 9 + 12 ms; the cat/dog step 246 ms (PyTorch 149 ms), its matmuls alone
109 ms. So xpnn's matmuls by themselves take 54-73% of PyTorch's whole step: to match PyTorch,
the im2col gather, col2im, pooling and ReLU (55 and 137 ms here) would have to fit in the
remaining 23 and 40 ms. OpenBLAS runs these convolutions' matmuls at 100-190 GFLOP/s, so the
three im2col matmuls of the Fashion 32->64 convolution alone (about 20 ms) take longer than
PyTorch's whole forward and backward of it (15.5-17 ms, timed alone).

The machine's speed swings (its 4096^3 GEMM rate read 230 or 440 GFLOP/s minutes apart) and it
is shared, so only the alternating side-by-side ratio means much. Where xpnn loses, it is in the
32->64 and 64->128 convolutions: oneDNN's direct convolution finishes forward and backward in
about the time OpenBLAS needs for the three im2col matmuls alone, and im2col/col2im copies run
on one core. xpnn's ReLU + MaxPool2D forward and backward are as fast as PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import common  # noqa: E402
import xpnn  # noqa: E402
from xpnn import layers as L  # noqa: E402
from xpnn import losses, optim, zoo  # noqa: E402

LR = 0.01
PAUSE = 0.3  # seconds between timed runs, so the other library's idle threads have stopped spinning

# name: (input shape (C, H, W), batch, classes (1: binary), layers)
WORKLOADS = {
    "mnist": ((1, 28, 28), 64, 10, [("conv", 1, 8, 0), ("pool",), ("flatten",), ("linear", 1352, 10)]),
    "fashion": ((1, 28, 28), 128, 10, [
        ("conv", 1, 32, "same"), ("relu",), ("pool",), ("conv", 32, 64, "same"), ("relu",), ("pool",),
        ("flatten",), ("linear", 3136, 128), ("relu",), ("linear", 128, 10)]),
    "catdog": ((3, 64, 64), 64, 1, [
        ("conv", 3, 32, 0), ("relu",), ("pool",), ("conv", 32, 64, 0), ("relu",), ("pool",),
        ("conv", 64, 128, 0), ("relu",), ("pool",), ("flatten",), ("linear", 4608, 256), ("relu",),
        ("linear", 256, 1)]),
    # the Fashion CNN with BatchNorm2D after each bias-free conv (zoo.fashion_cnn(batch_norm=True))
    "fashion-bn": ((1, 28, 28), 128, 10, [
        ("conv", 1, 32, "same", False), ("bn", 32), ("relu",), ("pool",), ("conv", 32, 64, "same", False),
        ("bn", 64), ("relu",), ("pool",), ("flatten",), ("linear", 3136, 128), ("relu",), ("linear", 128, 10)]),
    # zoo.resnet's default: stem conv + BN, four stages of one basic block (32-64-128-256), Residual
    # containers with projection shortcuts, global average pooling, Dropout(0.2), Linear
    "resnet": ((3, 64, 64), 64, 2, "zoo.resnet"),
}
TITLES = {"mnist": "tutorial MNIST CNN", "fashion": "Fashion CNN", "catdog": "cat/dog CNN 3x64x64",
          "fashion-bn": "Fashion CNN + BN", "resnet": "ResNet 3x64x64"}


# --------------------------------------------------------------------------- the two models


def xpnn_model(specs: "list | str", shape: tuple, classes: int) -> xpnn.Sequential:
    if specs == "zoo.resnet":
        return zoo.resnet(shape, classes)
    made = []
    for kind, *args in specs:
        if kind == "conv":
            made.append(L.Conv2D(args[0], args[1], 3, padding=args[2], bias=args[3] if len(args) > 3 else True))
        elif kind == "bn":
            made.append(L.BatchNorm2D(args[0]))
        elif kind == "linear":
            made.append(L.Linear(*args))
        else:
            made.append({"relu": L.ReLU, "pool": lambda: L.MaxPool2D(2), "flatten": L.Flatten}[kind]())
    return xpnn.Sequential(made)


def torch_model(model: xpnn.Sequential, device: str, checkpoint: bool = False):
    """The same network in PyTorch, with ``model``'s initial weights: each xpnn layer becomes its
    torch.nn counterpart, a Residual a module adding its two branches. ``checkpoint``: the blocks
    xpnn checkpoints run under ``torch.utils.checkpoint`` (non-reentrant, PyTorch's recommendation)."""
    import torch
    import torch.utils.checkpoint

    nn = torch.nn

    class TorchResidual(nn.Module):
        def __init__(self, body, shortcut, activation) -> None:
            super().__init__()
            self.body, self.shortcut, self.activation = body, shortcut or nn.Identity(), activation or nn.Identity()

        def forward(self, x):
            return self.activation(self.body(x) + self.shortcut(x))

    class Checkpointed(nn.Module):
        def __init__(self, block) -> None:
            super().__init__()
            self.block = block

        def forward(self, x):
            if not self.training:
                return self.block(x)
            return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)

    def weight(param, transpose: bool = False):
        value = xpnn.to_numpy(param.value)
        return nn.Parameter(torch.from_numpy((value.T if transpose else value).copy()))

    def convert(layer):
        if isinstance(layer, (L.Sequential, L.Residual)) and checkpoint and layer.checkpoint:
            return Checkpointed(convert_container(layer))
        if isinstance(layer, (L.Sequential, L.Residual)):
            return convert_container(layer)
        if isinstance(layer, L.Conv2D):
            config = layer.config()
            module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                               padding=config["padding"], dilation=layer.dilation, bias=layer.bias is not None)
            module.weight = weight(layer.weight)
        elif isinstance(layer, L.Linear):
            module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            module.weight = weight(layer.weight, transpose=True)
        elif isinstance(layer, L.BatchNorm2D):
            return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        elif isinstance(layer, L.MaxPool2D):
            return nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif isinstance(layer, L.GlobalAvgPool2D):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif isinstance(layer, L.Dropout):
            return nn.Dropout(layer.p)
        else:
            return {L.ReLU: nn.ReLU, L.Flatten: nn.Flatten}[type(layer)]()
        if layer.bias is not None:
            module.bias = weight(layer.bias)
        return module

    def convert_container(layer):
        if isinstance(layer, L.Sequential):
            return nn.Sequential(*map(convert, layer.layers))
        return TorchResidual(convert(layer.body), layer.shortcut and convert(layer.shortcut),
                             layer.activation and convert(layer.activation))

    return convert(model).to(device)


def step_flops(model: xpnn.Sequential, shape: tuple, batch: int) -> float:
    """Matmul work of one training step: forward, weight gradients, and input gradients for
    every layer but the first with parameters."""
    total, first = 0.0, True

    def visit(layer, in_shape: tuple) -> None:
        nonlocal total, first
        children = layer.child_inputs(in_shape)
        for _, child, child_shape in children:
            visit(child, child_shape)
        if children or not layer.param_names:
            return
        passes = 2 if first else 3
        first = False
        out = layer.output_shape(in_shape)
        if isinstance(layer, L.Conv2D):
            total += passes * 2.0 * float(np.prod(out)) * layer.in_channels * int(np.prod(layer.kernel_size))
        elif isinstance(layer, L.Linear):
            total += passes * 2.0 * out[0] * layer.in_features * layer.out_features

    visit(model, (batch, *shape))
    return total


def make_batch(shape: tuple, batch: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, max(classes, 2), batch)
    return x, (y if classes > 1 else y.astype(np.float32))


def _synchronizer(device: str):
    if device.startswith("gpu"):
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


#: the precision both libraries run at (``--precision``), set in the child process by :func:`use_precision`
PRECISION = ["float32"]
PRECISIONS = ("float32", "tf32", "mixed_bfloat16", "mixed_float16")


def use_precision(precision: str, torch) -> None:
    """Make both libraries compute at ``precision`` (see the module docstring)."""
    PRECISION[0] = precision
    if precision == "tf32":
        xpnn.set_float32_matmul_precision("high")
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    elif precision != "float32":
        xpnn.set_dtype_policy(precision)


def xpnn_step(name: str, device: str):
    shape, batch, classes, specs = WORKLOADS[name]
    xpnn.seed(0)
    with xpnn.use_device(device):
        model = xpnn_model(specs, shape, classes)
    x_host, y_host = make_batch(shape, batch, classes)
    x, y = xpnn.to_device(x_host, device), xpnn.to_device(y_host, device)
    loss = losses.CrossEntropy() if classes > 1 else losses.BinaryCrossEntropy()
    params = model.trainable_parameters()
    sgd = optim.SGD(lr=LR)
    if xpnn.dtype_policy().loss_scaling:
        sgd = optim.LossScaleOptimizer(sgd)
    sync = _synchronizer(device)

    def step() -> None:
        for p in params:
            p.grad = None
        out, backprop = model(x, train=True, input_grad=False)
        _, loss_backprop = loss(out, y)
        backprop(sgd.scale_loss(loss_backprop()))
        sgd.step(params)
        sync()

    return step, model


def torch_step(name: str, device: str, model: xpnn.Sequential):
    import torch

    shape, batch, classes, specs = WORKLOADS[name]
    torch_device = "cuda" if device.startswith("gpu") else "cpu"
    net = torch_model(model, torch_device)
    x_host, y_host = make_batch(shape, batch, classes)
    x, y = torch.from_numpy(x_host).to(torch_device), torch.from_numpy(y_host).to(torch_device)
    criterion = torch.nn.CrossEntropyLoss() if classes > 1 else torch.nn.BCEWithLogitsLoss()
    sgd = torch.optim.SGD(net.parameters(), lr=LR)
    half = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(PRECISION[0])
    scaler = torch.amp.GradScaler(torch_device, enabled=half is torch.float16)

    def step() -> None:
        sgd.zero_grad(set_to_none=True)
        with torch.autocast(torch_device, dtype=half or torch.float32, enabled=half is not None):
            out = net(x)
            value = criterion((out if classes > 1 else out[:, 0]).float(), y)
        scaler.scale(value).backward()
        scaler.step(sgd)
        scaler.update()
        if torch_device == "cuda":
            torch.cuda.synchronize()

    return step


# --------------------------------------------------------------------------- measurements (child processes)


def time_steps(steps: list, repeats: int, seconds: float) -> list[tuple[float, float]]:
    """For each of ``steps``: median seconds per step, and kernel seconds per step, in alternating
    runs of about ``seconds`` after warm-up, so a change of machine load affects both alike."""
    counts = []
    for step in steps:
        for _ in range(3):
            step()
        started = time.perf_counter()
        step()
        counts.append(max(3, int(seconds / max(time.perf_counter() - started, 1e-6))))
    runs: list[list[float]] = [[] for _ in steps]
    kernel = [0.0 for _ in steps]
    for _ in range(repeats):
        for index, (step, count) in enumerate(zip(steps, counts)):
            time.sleep(PAUSE)
            system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            started = time.perf_counter()
            for _ in range(count):
                step()
            runs[index].append((time.perf_counter() - started) / count)
            kernel[index] += (resource.getrusage(resource.RUSAGE_SELF).ru_stime - system) / count / repeats
    return [(statistics.median(times), seconds_in_kernel) for times, seconds_in_kernel in zip(runs, kernel)]


def gemm_peak(device: str) -> float:
    """float32 GFLOP/s of a 4096^3 matmul on ``device`` (NumPy's BLAS on the CPU)."""
    xp = xpnn.backend.resolve(device).xp
    a = xpnn.to_device(np.random.default_rng(0).random((4096, 4096), dtype=np.float32), device)
    sync = _synchronizer(device)
    xp.matmul(a, a)
    sync()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        xp.matmul(a, a)
        sync()
        times.append(time.perf_counter() - started)
    return 2 * 4096 ** 3 / min(times) / 1e9


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(library: str, name: str, device: str) -> int:
    """Bytes one library's three first training steps add to the process's peak memory."""
    step, model = xpnn_step(name, device)
    if library == "torch":
        step = torch_step(name, device, model)
    if device.startswith("gpu"):
        if library == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):
                step()
            return torch.cuda.max_memory_allocated()
        import cupy

        for _ in range(3):
            step()
        return cupy.get_default_memory_pool().total_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to the current one
    base = _status_kib("VmRSS")
    for _ in range(3):
        step()
    return (_status_kib("VmHWM") - base) * 1024


def matmul_shapes(shape: tuple, batch: int, specs: list) -> list[tuple[int, int, int, bool]]:
    """Every matmul of xpnn's training step as (M, K, N, second operand transposed): per conv, the
    forward ``W @ cols``, the weight gradient ``cols @ dy.T`` and (but for the first layer) the
    column gradient ``W.T @ dy``; per Linear the same three with the batch as rows."""
    c, h, w = shape
    made = []
    for index, (kind, *args) in enumerate(specs):
        if kind == "conv":
            pad = 1 if args[2] == "same" else 0
            h, w, rows = h + 2 * pad - 2, w + 2 * pad - 2, 9 * args[0] + (len(args) < 4 or args[3])
            made += [(args[1], rows, batch * h * w, False), (rows, batch * h * w, args[1], True)]
            made += [(9 * args[0], args[1], batch * h * w, False)] if index else []
        elif kind == "pool":
            h, w = h // 2, w // 2
        elif kind == "linear":
            made += [(batch, args[0], args[1], False), (args[0], batch, args[1], False)]
            made += [(batch, args[1], args[0], True)] if index else []
    return made


def time_matmuls(shapes: list, device: str, repeats: int) -> float:
    """Seconds the step's matmuls take alone (``shapes`` from :func:`matmul_shapes`), median of runs."""
    xp = xpnn.backend.resolve(device).xp
    rng = np.random.default_rng(0)
    pairs = []
    for m, k, n, transposed in shapes:
        b = rng.random((n, k) if transposed else (k, n), dtype=np.float32)
        pairs.append((xpnn.to_device(rng.random((m, k), dtype=np.float32), device), xpnn.to_device(b, device),
                      transposed))
    sync = _synchronizer(device)

    def run() -> None:
        for a, b, transposed in pairs:
            xp.matmul(a, xp.matrix_transpose(b) if transposed else b)
        sync()

    run()
    times = []
    for _ in range(max(repeats, 3) * 3):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def layer_label(spec: tuple) -> str:
    """``("conv", 32, 64, "same")`` -> ``"Conv2D 32->64 3x3 same"``, for the breakdown's rows."""
    kind, *args = spec
    if kind == "conv":
        return f"Conv2D {args[0]}->{args[1]} 3x3 {'same' if args[2] == 'same' else 'valid'}"
    if kind == "linear":
        return f"Linear {args[0]}->{args[1]}"
    return {"bn": "BatchNorm2D", "relu": "ReLU", "pool": "MaxPool2D 2x2", "flatten": "Flatten"}[kind]


def layer_breakdown(name: str, device: str, repeats: int, torch) -> dict:
    """Where xpnn's training step spends its time: each layer's forward and backward, timed in
    place inside real steps (every array fresh, as in training), in the order the model runs
    them; the step's matmuls alone at the same shapes; and the whole step of both libraries."""
    shape, batch, classes, specs = WORKLOADS[name]
    step, model = xpnn_step(name, device)
    x_host, y_host = make_batch(shape, batch, classes)
    x, y = xpnn.to_device(x_host, device), xpnn.to_device(y_host, device)
    loss = losses.CrossEntropy() if classes > 1 else losses.BinaryCrossEntropy()
    sync = _synchronizer(device)
    order = model._order
    first = model.first_trainable()
    runs = max(repeats, 3) * 4
    forward, backward = np.zeros((runs, len(order))), np.zeros((runs, len(order)))
    for run in range(runs + 3):
        hidden, backprops = x, []
        for slot, index in enumerate(order):
            started = time.perf_counter()
            hidden, backprop = model.layers[index](hidden, train=True, input_grad=index > first)
            sync()
            if run >= 3:
                forward[run - 3, slot] = time.perf_counter() - started
            backprops.append(backprop)
        grad = loss(hidden, y)[1]()
        for slot in reversed(range(len(order))):
            started = time.perf_counter()
            grad = backprops[slot](grad) if order[slot] >= first else grad
            sync()
            if run >= 3:
                backward[run - 3, slot] = time.perf_counter() - started
    steps = [step] + ([torch_step(name, device, model)] if torch else [])
    whole = [seconds for seconds, _ in time_steps(steps, repeats, 0.5)]
    return {"layers": [f"{index}: {layer_label(specs[index])}" for index in order],
            "forward": np.median(forward, axis=0).tolist(), "backward": np.median(backward, axis=0).tolist(),
            "matmuls": time_matmuls(matmul_shapes(shape, batch, specs), device, repeats), "steps": whole}


def print_breakdown(name: str, result: dict) -> None:
    steps = result["steps"]
    torch_part = f", PyTorch step {1e3 * steps[1]:.1f} ms" if len(steps) > 1 else ""
    print(f"\n{TITLES[name]}: xpnn step {1e3 * steps[0]:.1f} ms{torch_part}; xpnn's matmuls alone at the "
          f"step's shapes {1e3 * result['matmuls']:.1f} ms")
    print(f"  {'layer (in the order it runs)':<34} {'forward ms':>10} {'backward ms':>11}")
    for layer, fwd, bwd in zip(result["layers"], result["forward"], result["backward"]):
        print(f"  {layer:<34} {1e3 * fwd:>10.2f} {1e3 * bwd:>11.2f}")
    print(f"  {'sum of layers':<34} {1e3 * sum(result['forward']):>10.2f} {1e3 * sum(result['backward']):>11.2f}")


def run_child(job: list[str], args: argparse.Namespace, torch) -> object:
    use_precision(args.precision, torch)
    kind = job[0]
    if kind == "peak":
        return gemm_peak(args.device)
    if kind == "breakdown":
        return layer_breakdown(job[1], args.device, args.repeats, torch)
    if kind == "memory":
        return peak_memory(job[1], job[2], args.device)
    step, model = xpnn_step(job[1], args.device)
    steps = [step] + ([torch_step(job[1], args.device, model)] if torch else [])
    return time_steps(steps, args.repeats, args.seconds)


def child(job: list[str], args: argparse.Namespace) -> object:
    """Run ``job`` in a fresh copy of this script and return what it printed (JSON)."""
    command = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--repeats", str(args.repeats),
               "--seconds", str(args.seconds), "--threads", str(args.threads), "--precision", args.precision,
               "--child", *job]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(job)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the table


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run")
    parser.add_argument("--only", choices=sorted(WORKLOADS), nargs="+", help="run only these workloads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the table: per-layer forward/backward times of xpnn's step, and its "
                             "matmuls alone")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="both libraries at this precision (see above; TF32 and 16-bit speed need a GPU)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch, torch_version = common.import_torch(args.threads)
    if args.child:
        print(json.dumps(run_child(args.child, args, torch)))
        return

    if args.breakdown:
        for name in args.only or list(WORKLOADS):
            if isinstance(WORKLOADS[name][3], str):
                print(f"\n{TITLES[name]}: no breakdown (it times the layers of a flat list; this network nests)")
                continue
            print_breakdown(name, child(["breakdown", name], args))
        return
    peak = child(["peak"], args)
    print(f"xpnn {xpnn.__version__} on {args.device}, NumPy {np.__version__}, PyTorch {torch_version}, "
          f"{args.threads} threads, {args.precision}; median of {args.repeats} alternating runs of ~{args.seconds:g} s; "
          f"GEMM peak {peak:.0f} GFLOP/s (4096^3 matmul)")
    columns = [("workload", 20), ("batch", 5), ("xpnn samples/s", 14), ("torch samples/s", 15), ("ratio", 6),
               ("xpnn %peak", 10), ("torch %peak", 11), ("xpnn sys ms", 11), ("torch sys ms", 12),
               ("xpnn MiB", 8), ("torch MiB", 9)]
    print(" ".join(f"{title:<{width}}" if i == 0 else f"{title:>{width}}" for i, (title, width) in enumerate(columns)))
    print("-" * (sum(width for _, width in columns) + len(columns) - 1))
    libraries = ["xpnn", "torch"] if torch else ["xpnn"]
    for name in args.only or list(WORKLOADS):
        shape, batch, classes, specs = WORKLOADS[name]
        flops = step_flops(xpnn_model(specs, shape, classes), shape, batch)
        timings = child(["time", name], args) + [None]
        memory = ["-"] * 2 if args.no_memory else \
            [f"{child(['memory', library, name], args) / 2 ** 20:.0f}" for library in libraries] + ["-"]
        (t_xpnn, sys_xpnn), torch_timing = timings[0], timings[1]
        cells = [TITLES[name], batch, f"{batch / t_xpnn:,.0f}", f"{100 * flops / t_xpnn / 1e9 / peak:.0f}%",
                 f"{1e3 * sys_xpnn:.1f}"]
        if torch_timing:
            t_torch, sys_torch = torch_timing
            cells[3:3] = [f"{batch / t_torch:,.0f}", f"{t_torch / t_xpnn:.2f}x"]
            cells[6:6] = [f"{100 * flops / t_torch / 1e9 / peak:.0f}%"]
            cells.append(f"{1e3 * sys_torch:.1f}")
        else:
            cells[3:3] = ["-", "-"]
            cells[6:6] = ["-"]
            cells.append("-")
        cells += memory[:2]
        print(" ".join(f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                       for i, (cell, (_, width)) in enumerate(zip(map(str, cells), columns))), flush=True)


if __name__ == "__main__":
    main()
