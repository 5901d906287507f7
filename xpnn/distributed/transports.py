"""How ranks talk: MPI on host buffers (control messages, metrics, and gradients staged through
NumPy), NCCL all-reduce of CuPy buffers on the GPU, and the choice between them that all ranks
take together."""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import numpy as np
from array_api_compat import is_cupy_namespace

from .. import backend
from ..errors import DistributedError


class MpiComm:
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


class NcclComm:
    """NCCL all-reduce of CuPy buffers in place, on the current stream of the rank's GPU."""

    name = "nccl"

    def __init__(self, nccl: Any, mpi: MpiComm, device: backend.Device,
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
        raise ImportError('CuPy was installed without NCCL (pip install "xpnn[gpu-dist]", or nvidia-nccl-cu12)')
    return nccl


def _try_nccl() -> tuple[Any, str | None]:
    """CuPy's NCCL binding and None, or None and why it cannot be loaded."""
    try:
        return _load_nccl(), None
    except Exception as exc:  # ImportError, or a CUDA/NCCL library that fails to load
        return None, f"{type(exc).__name__}: {exc}"


def nccl_unusable_reason() -> str | None:
    """Why this process could not all-reduce GPU gradients through NCCL (CuPy or its NCCL library
    missing), or None when CuPy's NCCL binding loads (``xpnn devices`` reports it)."""
    return _try_nccl()[1]


def select_gradient_comm(mpi: MpiComm, device: backend.Device, choice: str | None = None) -> "MpiComm | NcclComm":
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
    nccl, reason = _try_nccl()
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
        return NcclComm(nccl, mpi, device)
    message = "NCCL is unusable (" + "; ".join(problems) + ")"
    if choice == "nccl":
        raise DistributedError(f"backend 'nccl' was requested but {message}")
    if mpi.rank == 0:
        warnings.warn(f"{message}: gradients are all-reduced by MPI through host memory instead", stacklevel=3)
    return mpi
