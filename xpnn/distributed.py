"""Data-parallel training across processes on MPI (mpi4py), with NCCL for CuPy gradients.

Launch one process per GPU (or per CPU socket) with the MPI launcher and call :func:`init`
before building the model::

    mpirun -np 2 python train.py          # train.py: xpnn.distributed.init(device="auto"); model.fit(...)

:func:`init` reads rank, size and local rank from the launcher's environment (Open MPI,
MPICH/Intel MPI, Slurm); without one it runs as a single process and never imports mpi4py.
With more than one process, :func:`xpnn.train.fit` then takes the :class:`DataParallel`
strategy from :func:`active`: every rank starts from rank 0's parameters, takes its slice of
each global batch of the shared (seed, epoch) shuffle, and averages gradients (weighted by the
local sample counts, so the result is single-process training with the same global batch) with
one all-reduce per bucket of flattened gradients. Gradients of CuPy arrays go through NCCL
(``cupy.cuda.nccl``) on the device; everything else, and CuPy when NCCL is missing, through MPI
on host buffers. Metrics are summed over ranks, BatchNorm running statistics averaged at each
epoch end, and only rank 0 prints, plots and writes checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from array_api_compat import array_namespace, is_cupy_namespace
from array_api_compat import device as native_device

from . import backend

__all__ = ["init", "shutdown", "active", "rank", "world_size", "local_rank", "is_main", "barrier",
           "DataParallel", "DistributedError", "detect", "shard_bounds"]

#: The default size of a gradient bucket (bytes): one all-reduce per bucket.
BUCKET_BYTES = 25 * 1024 * 1024

#: (rank, size, local rank) variables of each launcher, tried in order.
LAUNCHER_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH, Intel MPI (Hydra)
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),  # srun
)


class DistributedError(RuntimeError):
    """Ranks disagree (model, data) or the requested communication backend is unusable."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, as the launcher's environment describes it."""

    rank: int
    size: int
    local_rank: int
    source: str


def detect(environ: "dict[str, str] | None" = None) -> Launch | None:
    """The launcher's (rank, size, local rank) from ``environ`` (default ``os.environ``), or None."""
    env = os.environ if environ is None else environ
    for rank_var, size_var, local_var in LAUNCHER_VARIABLES:
        if rank_var in env and size_var in env:
            try:
                rank_, size_ = int(env[rank_var]), int(env[size_var])
                local = int(env.get(local_var, -1))
            except ValueError:
                continue
            return Launch(rank_, size_, local, rank_var.split("_")[0].lower())
    return None


def shard_bounds(n: int, rank_: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank_``'s contiguous slice of ``n`` items; the first ``n % size`` ranks get one more."""
    base, extra = divmod(n, size)
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (rank_ < extra)


# --------------------------------------------------------------------------- communicators


class _MpiComm:
    """MPI on host buffers: control messages, metrics, and gradients staged through NumPy."""

    name = "mpi"

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def allreduce_(self, buffer: Any) -> Any:
        """Sum ``buffer`` (a 1-d array of any namespace) over ranks; returns the result on its device."""
        if isinstance(buffer, np.ndarray):
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)
            return buffer
        host = backend.to_numpy(buffer)
        if not (host.flags.writeable and host.flags.c_contiguous):
            host = np.array(host)
        self.comm.Allreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)
        return backend.to_device(host, backend.device_of(buffer))

    def sum_host(self, values: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(values, dtype=np.float64)
        self.comm.Allreduce(self.mpi.IN_PLACE, out, op=self.mpi.SUM)
        return out

    def bcast_array(self, array: np.ndarray) -> None:
        self.comm.Bcast(array, root=0)

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def host_name(self) -> str:
        return self.mpi.Get_processor_name()


class _NcclComm:
    """NCCL all-reduce of CuPy buffers in place, on the current stream of the rank's GPU."""

    name = "nccl"

    def __init__(self, nccl: Any, mpi: _MpiComm, device: backend.Device,
                 stream: "Callable[[], Any] | None" = None) -> None:
        self.nccl, self.device = nccl, device
        uid = mpi.bcast(nccl.get_unique_id() if mpi.rank == 0 else None)
        with device.native:
            self.comm = nccl.NcclCommunicator(mpi.size, uid, mpi.rank)
        self.types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        self._stream = stream or _current_cupy_stream

    def allreduce_(self, buffer: Any) -> Any:
        with self.device.native:
            self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                                self.types[backend.dtype_name(buffer.dtype)], self.nccl.NCCL_SUM, self._stream().ptr)
        return buffer

    def synchronize(self) -> None:
        with self.device.native:
            self._stream().synchronize()


def _current_cupy_stream() -> Any:
    import cupy
    return cupy.cuda.get_current_stream()


def _load_nccl() -> Any:
    """CuPy's NCCL binding; ImportError when CuPy or its NCCL library is missing."""
    from cupy.cuda import nccl
    if not getattr(nccl, "available", True):
        raise ImportError("CuPy was installed without NCCL (pip install nvidia-nccl-cu12)")
    return nccl


def select_gradient_comm(mpi: _MpiComm, device: backend.Device, choice: str | None = None) -> "_MpiComm | _NcclComm":
    """NCCL for CuPy devices when every rank can use it, else MPI with host staging (with a warning).

    ``choice``: ``"auto"`` (default, or ``XPNN_DIST_BACKEND``), ``"nccl"`` (fail instead of
    falling back) or ``"mpi"``. The decision is taken together, so all ranks use the same one.
    """
    choice = (choice or os.environ.get("XPNN_DIST_BACKEND") or "auto").strip().lower()
    if choice not in ("auto", "nccl", "mpi"):
        raise ValueError(f"distributed backend must be 'auto', 'nccl' or 'mpi', got {choice!r}")
    if choice == "mpi":
        return mpi
    if not is_cupy_namespace(device.xp):
        if choice == "nccl":
            raise DistributedError(f"backend 'nccl' needs a CuPy GPU device, but this rank's device is {device}")
        return mpi
    nccl, reason = None, None
    try:
        nccl = _load_nccl()
    except Exception as exc:  # ImportError, or a CUDA/NCCL library that fails to load
        reason = f"{type(exc).__name__}: {exc}"
    infos = mpi.allgather((reason, mpi.host_name(), device.name, backend.gpu_identity(device)))
    problems = [f"rank {r}: {why}" for r, (why, _, _, _) in enumerate(infos) if why]
    seen: dict[tuple[str, str], int] = {}
    for r, (_, host, name, identity) in enumerate(infos):
        # one GPU per rank (CUDA_VISIBLE_DEVICES, --gpus-per-task) is gpu:0 on every rank: compare the hardware
        if (host, identity) in seen:
            problems.append(f"ranks {seen[host, identity]} and {r} share one GPU on {host} ({name}, {identity}); "
                            f"NCCL needs one GPU per rank")
        seen.setdefault((host, identity), r)
    if not problems:
        return _NcclComm(nccl, mpi, device)
    message = "NCCL is unusable (" + "; ".join(problems) + ")"
    if choice == "nccl":
        raise DistributedError(f"backend 'nccl' was requested but {message}")
    if mpi.rank == 0:
        warnings.warn(f"{message}: gradients are all-reduced by MPI through host memory instead", stacklevel=3)
    return mpi


# --------------------------------------------------------------------------- the strategy


@dataclass
class _Slot:
    param: Any
    lo: int
    hi: int
    shape: tuple[int, ...]


@dataclass
class _Bucket:
    size: int
    slots: list[_Slot]


class DataParallel:
    """Synchronous data parallelism: shard batches, all-reduce gradients in buckets, agree on metrics.

    ``fit`` drives it through :meth:`prepare`, :meth:`reduce_gradients`, :meth:`sync_due`,
    :meth:`reduce_metrics`, :meth:`end_epoch` and :meth:`evaluate`. ``stats`` counts steps,
    all-reduce calls, payload bytes and seconds. Those seconds include waiting for the slowest
    rank, unless ``profile=True``: then each call first synchronizes the GPU stream and waits at
    a barrier (counted as ``wait_seconds``), so only the all-reduce itself is timed.
    """

    def __init__(self, mpi: _MpiComm, grads: "_MpiComm | _NcclComm", bucket_bytes: int = BUCKET_BYTES,
                 profile: bool = False) -> None:
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes!r}")
        self.mpi, self.grads = mpi, grads
        self.rank, self.size = mpi.rank, mpi.size
        self.bucket_bytes, self.profile = int(bucket_bytes), profile
        self.stats = {"steps": 0, "allreduce_calls": 0, "allreduce_bytes": 0, "allreduce_seconds": 0.0,
                      "wait_seconds": 0.0}
        self._buckets: list[_Bucket] = []
        self._bucket_key: tuple[Any, ...] = ()
        self._global_count = 0
        self._idle_batch = False
        self._since_sync = 0
        self._sync_every = 1
        self._steps_at_sync = 0
        self._last_sync = time.perf_counter()
        self._sync_seconds = 0.25
        self._idle_step: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        """``"nccl"`` or ``"mpi"``: what gradients go through."""
        return self.grads.name

    # ---- setup ------------------------------------------------------------------------

    def prepare(self, model: Any, loader: Any, optimizer: Any) -> "ShardedLoader":
        """Check that ranks agree, copy rank 0's model to all, and wrap ``loader`` to shard its batches."""
        from .train import SYNC_SECONDS

        self.check_agreement(model, {"training samples": int(loader.x.shape[0]), "batch size": loader.batch_size,
                                     "shuffle": bool(loader.shuffle),
                                     "optimizer": getattr(optimizer, "config", dict)()})
        self.broadcast_parameters(model)
        if loader.shuffle and loader.seed is None:
            loader.seed = self.mpi.bcast(int(backend.host_rng().integers(2 ** 31)) if self.is_main else None)
        if loader.batch_size < self.size and self.is_main:
            warnings.warn(f"batch_size {loader.batch_size} is smaller than the {self.size} ranks: some ranks "
                          f"have no samples in every step", stacklevel=3)
        params = model.parameters(trainable=True)  # frozen parameters get no gradient: nothing to all-reduce

        def idle_step() -> None:
            self.reduce_gradients(params, 0)
            optimizer.step(params)
            for p in params:
                p.grad = None

        self._idle_step = idle_step
        self._sync_seconds = SYNC_SECONDS
        self._last_sync, self._steps_at_sync = time.perf_counter(), self.stats["steps"]
        return ShardedLoader(loader, self)

    def check_agreement(self, model: Any, settings: dict[str, Any]) -> None:
        """Raise :class:`DistributedError` on every rank, naming the ranks, if models or settings differ.

        Models are compared by a hash of ``model.config()``, the shapes and dtypes of its arrays
        and which parameters are frozen.
        """
        state = [[key, list(v.shape), backend.dtype_name(v.dtype)] for key, v in model.named_state().items()]
        frozen = [p.name for p in model.parameters(trainable=False)]
        text = json.dumps({"config": model.config(), "state": state, "frozen": frozen}, sort_keys=True, default=str)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        summary = ", ".join(layer._title() for layer in model.layers) + f" ({model.dtype}, {len(frozen)} frozen)"
        mine = (fingerprint, summary, json.dumps(settings, sort_keys=True, default=str))
        gathered = self.mpi.allgather(mine)
        for key, shown, what in ((0, 1, "model architectures"), (2, 2, "training settings")):
            groups: dict[str, list[int]] = {}
            for r, item in enumerate(gathered):
                groups.setdefault(item[key], []).append(r)
            if len(groups) > 1:
                detail = "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: "
                                   f"{gathered[ranks[0]][shown]}" for ranks in groups.values())
                raise DistributedError(f"{what} differ across ranks: {detail}. Every rank must build the same "
                                       f"model and load the same training data.")

    def broadcast_parameters(self, model: Any) -> None:
        """Give every rank rank 0's parameters and buffers."""
        state = model.state_dict()
        for key in sorted(state):
            self.mpi.bcast_array(state[key])
        if not self.is_main:
            model.load_state_dict(state)

    # ---- per step -----------------------------------------------------------------------

    def begin_batch(self, global_count: int) -> None:
        """Called by the sharded loader for each global batch (on every rank, idle or not)."""
        self._global_count = global_count
        self._idle_batch = global_count < self.size
        self._since_sync += 1
        self.stats["steps"] += 1

    def reduce_gradients(self, params: Sequence[Any], local_count: int, global_count: int | None = None) -> None:
        """Replace each ``param.grad`` by the sample-weighted mean over ranks, one all-reduce per bucket.

        A rank's loss is the mean over its ``local_count`` samples, so its gradient is weighted
        by ``local_count / global_count`` (the global batch, by default the one being sharded)
        before the sum. A missing gradient counts as zero. Each bucket is one concatenation of
        its gradients, one scaling and the all-reduce (three operations, whatever the number of
        parameters); the gradients become views of the reduced buffer. Runs with the
        parameters' device made current (see :func:`xpnn.backend.device_context`).
        """
        total = self._global_count if global_count is None else global_count
        if total <= 0:
            raise ValueError(f"reduce_gradients: the global sample count must be positive, got {total}")
        weight = float(local_count) / float(total)
        key = tuple(id(p) for p in params)
        if key != self._bucket_key:
            self._buckets, self._bucket_key = self._make_buckets(params), key
        for bucket in self._buckets:
            first = bucket.slots[0].param.value
            xp = array_namespace(first)
            with backend.device_context(backend.device_of(first)):
                if weight == 0.0:
                    buffer = xp.zeros((bucket.size,), dtype=first.dtype, device=native_device(first))
                else:
                    parts = [xp.reshape(slot.param.grad, (-1,)) if slot.param.grad is not None
                             else xp.zeros((slot.hi - slot.lo,), dtype=first.dtype, device=native_device(first))
                             for slot in bucket.slots]
                    buffer = xp.concat(parts) if len(parts) > 1 else xp.asarray(parts[0], copy=True)
                    if weight != 1.0:
                        buffer *= weight
                buffer = self._allreduce(buffer)
                for slot in bucket.slots:
                    slot.param.grad = xp.reshape(buffer[slot.lo:slot.hi], slot.shape)

    def _allreduce(self, buffer: Any) -> Any:
        if self.profile:
            waited = time.perf_counter()
            getattr(self.grads, "synchronize", lambda: None)()
            self.mpi.barrier()
            self.stats["wait_seconds"] += time.perf_counter() - waited
        started = time.perf_counter()
        out = self.grads.allreduce_(buffer)
        if self.profile:
            getattr(self.grads, "synchronize", lambda: None)()
        self.stats["allreduce_seconds"] += time.perf_counter() - started
        self.stats["allreduce_calls"] += 1
        self.stats["allreduce_bytes"] += int(buffer.size) * np.dtype(backend.dtype_name(buffer.dtype)).itemsize
        return out

    def _make_buckets(self, params: Sequence[Any]) -> list[_Bucket]:
        """Consecutive parameters of one dtype and device, up to ``bucket_bytes`` per flat buffer."""
        groups: list[list[Any]] = []
        size = 0
        for p in params:
            value = p.value
            nbytes = p.size * np.dtype(backend.dtype_name(value.dtype)).itemsize
            if (not groups or size + nbytes > self.bucket_bytes or value.dtype != groups[-1][0].value.dtype
                    or backend.device_of(value) != backend.device_of(groups[-1][0].value)):
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += nbytes
        buckets = []
        for group in groups:
            slots, offset = [], 0
            for p in group:
                slots.append(_Slot(p, offset, offset + p.size, p.shape))
                offset += p.size
            buckets.append(_Bucket(offset, slots))
        return buckets

    def sync_due(self) -> bool:
        """Whether to read metrics now: the same answer on every rank, about every ``SYNC_SECONDS``.

        Rank 0 turns its measured time per batch into a batch interval, shared at each sync.
        """
        if self._idle_batch or self._since_sync < self._sync_every:
            return False
        self._since_sync = 0
        return True

    def reduce_metrics(self, loss_sum: Any, correct: Any, samples: int) -> tuple[float, float, float]:
        """Sums of the meter's loss, correct predictions and samples over all ranks (one host all-reduce)."""
        interval = 0.0
        if self.is_main:
            now = time.perf_counter()
            per_batch = (now - self._last_sync) / max(self.stats["steps"] - self._steps_at_sync, 1)
            interval = float(max(1, min(10_000, round(self._sync_seconds / per_batch)))) if per_batch > 0 else 1.0
            self._last_sync = now
        values = np.array([float(backend.to_numpy(loss_sum)), float(backend.to_numpy(correct)), samples, interval])
        out = self.mpi.sum_host(values)
        self._sync_every = int(out[3])
        self._steps_at_sync = self.stats["steps"]
        return float(out[0]), float(out[1]), float(out[2])

    # ---- per epoch ----------------------------------------------------------------------

    def end_epoch(self, model: Any) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks; a frozen layer's
        stay as they are (training does not change them)."""
        found = [(layer, name, value) for _, layer in model.walk() if layer.trainable
                 for name, value in layer.buffers().items() if backend.dtype_name(value.dtype).startswith("float")]
        if not found:
            return
        host = [np.asarray(backend.to_numpy(value), dtype=np.float64).ravel() for _, _, value in found]
        total = self.mpi.sum_host(np.concatenate(host)) / self.size
        offset = 0
        for (layer, name, value), part in zip(found, host):
            averaged = total[offset:offset + part.size].reshape(tuple(value.shape))
            offset += part.size
            setattr(layer, name, backend.to_device(averaged, backend.device_of(value), dtype=value.dtype))

    def evaluate(self, model: Any, x: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        """:func:`xpnn.train.evaluate` on this rank's slice of ``(x, y)``, combined over ranks."""
        from .train import evaluate

        lo, hi = shard_bounds(int(x.shape[0]), self.rank, self.size)
        mine = evaluate(model, x[lo:hi], y[lo:hi], **kwargs) if hi > lo else {}
        gathered = [(n, logs) for n, logs in self.mpi.allgather((hi - lo, mine)) if n]
        total = sum(n for n, _ in gathered)
        return {key: sum(n * logs[key] for n, logs in gathered) / total for key in gathered[0][1]}


class ShardedLoader:
    """A DataLoader seen by one rank: each global batch of the shared shuffle, cut to this rank's slice.

    A rank whose slice of a (tail) batch is empty takes part in that step's all-reduce with a
    zero gradient and steps its optimizer, so every rank stays in lockstep.
    """

    def __init__(self, loader: Any, strategy: DataParallel) -> None:
        self.loader, self.strategy = loader, strategy

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        strategy = self.strategy
        for idx in self.loader.batch_indices():
            strategy.begin_batch(len(idx))
            lo, hi = shard_bounds(len(idx), strategy.rank, strategy.size)
            if hi > lo:
                yield self.loader.take(idx[lo:hi], train=True)
            else:
                strategy._idle_step()


# --------------------------------------------------------------------------- process state

_launch: Launch | None = None
_mpi: _MpiComm | None = None
_strategy: DataParallel | None = None
_previous_hook: Any = None


def _import_mpi(launch: Launch | None) -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        where = f" by {launch.source} with {launch.size} processes" if launch else ""
        raise DistributedError(f"this job was launched{where}, but mpi4py could not be imported ({exc}); "
                               f"install it with: pip install mpi4py (it needs an MPI library, e.g. "
                               f"apt install openmpi-bin libopenmpi-dev)") from exc
    return MPI


def _use_device(spec: str | None, local: int) -> None:
    name = _device_spec(spec, max(local, 0))
    if name is None:
        return
    try:
        backend.set_device(name)
    except backend.DeviceError as exc:
        if (spec or os.environ.get("XPNN_DEVICE", "")).strip().lower() != "auto":
            raise
        warnings.warn(f"init(device='auto'): {name} is unusable, this rank uses the CPU: {exc}", stacklevel=3)
        backend.set_device("cpu")


def _device_spec(spec: str | None, local: int) -> str | None:
    """``gpu:<local rank modulo the visible GPUs>`` for ``gpu``/``cuda``/``auto`` (``auto`` without a GPU: ``cpu``).

    Modulo, because a launcher that gives each rank its own GPU (Slurm ``--gpus-per-task=1``,
    ``CUDA_VISIBLE_DEVICES`` per rank) shows every rank one GPU, as ``gpu:0``.
    """
    spec = spec if spec is not None else os.environ.get("XPNN_DEVICE")
    if spec is None:
        return None
    text = spec.strip().lower()
    if text not in ("gpu", "cuda", "cupy", "auto"):
        return spec
    gpus = sum(name.startswith("gpu:") for name in backend.devices())
    if gpus:
        return f"gpu:{local % gpus}"
    if text != "auto":
        return "gpu"  # set_device says why there is none
    if local == 0:
        warnings.warn("init(device='auto'): no GPU visible; the ranks on this machine use the CPU", stacklevel=4)
    return "cpu"


def _install_excepthook(mpi: _MpiComm) -> None:
    """An uncaught exception on any rank prints the rank and the error, then aborts the whole job."""
    global _previous_hook
    _previous_hook = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        try:
            traceback.print_exception(kind, value, tb)
            sys.stderr.write(f"xpnn.distributed: rank {mpi.rank} failed: {kind.__name__}: {value}\n")
            sys.stderr.flush()
        finally:
            mpi.abort(1)

    sys.excepthook = hook


def init(device: str | None = None, backend_name: str | None = None, bucket_bytes: int = BUCKET_BYTES,
         always: bool = False, profile: bool = False) -> DataParallel | None:
    """Join the job the MPI launcher started; returns the strategy ``fit`` will use, or None.

    ``device``: ``"auto"``/``"gpu"`` pick ``gpu:<local rank>`` (``auto`` falls back to the CPU),
    anything else is passed to :func:`xpnn.set_device`; None keeps ``XPNN_DEVICE`` or the
    current device. ``backend_name``: ``"auto"``, ``"nccl"`` or ``"mpi"`` for gradients (see
    :func:`select_gradient_comm`). Without a launcher (or with one process) this is a plain
    single process and mpi4py is not imported; ``always=True`` uses the data-parallel path even
    then (to measure its overhead). On more than one process an uncaught exception on any rank
    aborts the job, naming the rank. ``bucket_bytes`` and ``profile``: see :class:`DataParallel`.
    """
    global _launch, _mpi, _strategy
    if _strategy is not None:
        return _strategy
    launch = detect()
    if not always and (launch is None or launch.size <= 1):
        _launch = launch or Launch(0, 1, 0, "none")
        _use_device(device, _launch.local_rank)
        return None
    MPI = _import_mpi(launch)
    mpi = _MpiComm(MPI.COMM_WORLD, MPI)
    if launch is not None and launch.local_rank >= 0:
        local = launch.local_rank
    else:
        shared = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
        local = shared.Get_rank()
        shared.Free()
    if launch is not None and mpi.size != launch.size:
        warnings.warn(f"the {launch.source} launcher says {launch.size} processes but MPI sees {mpi.size}; "
                      f"using MPI's view (is mpi4py built against the MPI that launched the job?)", stacklevel=2)
    _launch = Launch(mpi.rank, mpi.size, local, launch.source if launch else "mpi")
    _use_device(device, local)
    if mpi.size <= 1 and not always:
        return None
    if mpi.size > 1:
        _install_excepthook(mpi)
    _mpi = mpi
    _strategy = DataParallel(mpi, select_gradient_comm(mpi, backend.current_device(), backend_name),
                             bucket_bytes=bucket_bytes, profile=profile)
    return _strategy


def shutdown() -> None:
    """Stop using the data-parallel strategy (MPI itself stays up until the process exits)."""
    global _strategy, _mpi, _launch, _previous_hook
    if _previous_hook is not None:
        sys.excepthook, _previous_hook = _previous_hook, None
    _strategy, _mpi, _launch = None, None, None


def active() -> DataParallel | None:
    """The strategy :func:`init` set up (None for a single process or before init)."""
    return _strategy


def rank() -> int:
    """This process's rank (0 before :func:`init` or without a launcher)."""
    return _launch.rank if _launch is not None else 0


def world_size() -> int:
    """The number of processes (1 before :func:`init` or without a launcher)."""
    return _launch.size if _launch is not None else 1


def local_rank() -> int:
    """The rank among the processes on this machine (0 before :func:`init` or without a launcher)."""
    return max(_launch.local_rank, 0) if _launch is not None else 0


def is_main() -> bool:
    """True on rank 0: the process that prints, plots and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if _mpi is not None:
        _mpi.barrier()
