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

Modules: :mod:`.launch` (where this process sits in the job, and joining it: :func:`init`),
:mod:`.transports` (MPI on host buffers, NCCL on the GPU, and choosing between them) and
:mod:`.strategy` (:class:`DataParallel`: sharding, gradient buckets, metrics, BatchNorm averaging).
"""
from ..errors import DistributedError
from .launch import LAUNCHER_VARIABLES, Launch, active, barrier, detect, init, is_main, local_rank, rank, shutdown, \
    world_size
from .strategy import BUCKET_BYTES, DataParallel, ShardedLoader, shard_bounds
from .transports import select_gradient_comm

__all__ = ["init", "shutdown", "active", "rank", "world_size", "local_rank", "is_main", "barrier",
           "DataParallel", "DistributedError", "detect", "shard_bounds", "Launch", "LAUNCHER_VARIABLES",
           "BUCKET_BYTES", "ShardedLoader", "select_gradient_comm"]
