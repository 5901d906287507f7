"""The data-parallel strategy ``fit`` drives: every rank takes its slice of each global batch of a
shared shuffle, gradients are averaged over ranks with one all-reduce per bucket, metrics are
summed and BatchNorm running statistics averaged at each epoch's end."""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from array_api_compat import array_namespace

from .. import backend
from ..backend import native_device
from ..errors import DistributedError
from .transports import MpiComm, NcclComm

#: The default size of a gradient bucket (bytes): one all-reduce per bucket.
BUCKET_BYTES = 25 * 1024 * 1024


def shard_bounds(n: int, rank_: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank_``'s contiguous slice of ``n`` items; the first ``n % size`` ranks get one more."""
    base, extra = divmod(n, size)
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (rank_ < extra)


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

    def __init__(self, mpi: MpiComm, grads: "MpiComm | NcclComm", bucket_bytes: int = BUCKET_BYTES,
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

    def prepare(self, model: Any, loader: Any, optimizer: Any, sync_seconds: float = 0.25) -> "ShardedLoader":
        """Check that ranks agree, copy rank 0's model to all, and wrap ``loader`` to shard its batches.

        ``sync_seconds``: about how often :meth:`sync_due` says yes (``fit`` passes its ``SYNC_SECONDS``).
        """
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
            optimizer.zero_grad(params)

        self._idle_step = idle_step
        self._sync_seconds = float(sync_seconds)
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
        parameters); the gradients become views of the reduced buffer, which the optimizer then
        takes as its flat gradient without copying them again. Runs with the
        parameters' device made current (see :func:`xpnn.backend.native_device_context`).
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
            with backend.native_device_context(backend.device_of(first)):
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
                    slot.param.set_grad_in(buffer, slot.lo)

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
        """Whether to read metrics now: the same answer on every rank, about every ``sync_seconds``
        (see :meth:`prepare`).

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

    def evaluate(self, model: Any, x: Any, y: Any, *, run: Callable[..., dict[str, float]],
                 **kwargs: Any) -> dict[str, float]:
        """``run(model, x, y, **kwargs)`` on this rank's slice of ``(x, y)``, combined over ranks,
        weighted by the slices' sizes. ``fit`` passes as ``run`` its evaluation of data it has
        already checked (:func:`xpnn.train.evaluate` without the checks): the strategy sits below
        training and does not import it."""
        lo, hi = shard_bounds(int(x.shape[0]), self.rank, self.size)
        mine = run(model, x[lo:hi], y[lo:hi], **kwargs) if hi > lo else {}
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
