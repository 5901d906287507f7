"""Where this process sits in the job, and joining it.

:func:`detect` reads rank, size and local rank from the launcher's environment (Open MPI,
MPICH/Intel MPI, Slurm); :func:`init` joins the job (importing mpi4py only when there is more
than one process), picks the rank's device and sets up the :class:`~.strategy.DataParallel`
strategy that :func:`active` hands to ``fit``. ``rank``/``is_main``/... answer for the process.
"""
from __future__ import annotations

import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

from .. import backend
from ..errors import DistributedError
from .strategy import BUCKET_BYTES, DataParallel
from .transports import MpiComm, select_gradient_comm

#: (rank, size, local rank) variables of each launcher, tried in order.
LAUNCHER_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH, Intel MPI (Hydra)
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),  # srun
)


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


_launch: Launch | None = None
_mpi: MpiComm | None = None
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


def _install_excepthook(mpi: MpiComm) -> None:
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
    mpi = MpiComm(MPI.COMM_WORLD, MPI)
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
