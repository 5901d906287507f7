"""What one training step of a model takes in memory, for a batch size: :func:`memory_estimate`.

Not a formula per layer: the model's architecture is rebuilt on the host (zero weights, nothing
drawn) and training steps are run on it under ``tracemalloc``, which sees every NumPy allocation.
With every layer that chunks its batch (a convolution's columns, a max-pool's gradient routing)
taking the same number of images at a time, what backward keeps and the peak of each stretch of
the step (each layer's forward and backward) grow linearly with the batch, so two batches of a
few chunks give them at any batch size, and the step's peak is the largest of those lines (where
it lies moves as the batch grows). A third run, with larger chunks, gives what each image more in
a chunk costs, for the chunk the workspace limit (:mod:`.workspace`) allows on the device the
model is on. The same layer code runs on every device, so the host's allocations are the GPU's,
up to its allocator's rounding.
"""
from __future__ import annotations

import contextlib
import tracemalloc
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .. import backend, init, precision
from ..validation import check_integer
from .base import Layer, layer_from_spec, layer_spec
from .conv import Conv2D
from .workspace import batch_chunk, images_at_a_time

__all__ = ["MemoryEstimate", "memory_estimate", "memory_model", "MemoryModel"]

MIB = 2 ** 20
#: the most images whose columns a dry run builds at once
DRY_BATCH = 8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step of ``batch_size`` samples needs: the model's ``parameters`` (and
    buffers), the ``gradients``, the ``optimizer_state``, what backward keeps (``saved``, at the end
    of the forward pass) and the largest scratch above that (``transient``: columns, dx, ...)."""

    batch_size: int
    parameters: int
    gradients: int
    optimizer_state: int
    saved: int
    transient: int

    @property
    def step(self) -> int:
        """What a training step adds to a model and batch that already exist."""
        return self.gradients + self.optimizer_state + self.saved + self.transient

    @property
    def total(self) -> int:
        return self.parameters + self.step

    def describe(self) -> str:
        """One line, in MiB."""
        return (f"training memory at batch size {self.batch_size}: {self.total / MIB:,.1f} MiB (parameters "
                f"{self.parameters / MIB:,.1f}, gradients {self.gradients / MIB:,.1f}, optimizer state "
                f"{self.optimizer_state / MIB:,.1f}, kept for backward {self.saved / MIB:,.1f}, largest transient "
                f"{self.transient / MIB:,.1f})")


@dataclass(frozen=True)
class MemoryModel:
    """The dry run's measurements, from which :meth:`at` gives the estimate for any batch size."""

    parameters: int
    gradients: int
    optimizer_state: int
    batches: tuple[int, int]  # the dry run's two batch sizes
    saved: tuple[int, int]  # what backward keeps, at those
    peaks: tuple[tuple[int, ...], tuple[int, ...]]  # each stretch's peak above the start, gradients included
    column_bytes: int  # one sample's columns in the convolution with the largest
    chunk: int  # images whose columns the dry run built at a time
    chunk_bytes: float  # what each image more in a chunk of columns adds to the peak
    device: backend.Device

    def at(self, batch_size: int) -> MemoryEstimate:
        def linear(pair: tuple[int, int]) -> int:
            (low, high), (first, second) = self.batches, pair
            return max(0, first + (batch_size - low) * (second - first) // (high - low))

        saved = linear(self.saved)
        chunk = batch_chunk(batch_size, self.column_bytes, self.device.xp) if self.column_bytes else 1
        peak = max(linear(pair) for pair in zip(*self.peaks)) + int(max(0, chunk - self.chunk) * self.chunk_bytes)
        transient = max(0, peak - saved - self.gradients)
        return MemoryEstimate(batch_size, self.parameters, self.gradients, self.optimizer_state, saved, transient)

    def largest_batch(self, free_bytes: int, limit: int = 1 << 20) -> int:
        """The largest batch size whose step fits in ``free_bytes`` (0 if not even one sample)."""
        low, high = 0, limit
        while low < high:
            mid = (low + high + 1) // 2
            if self.at(mid).step <= free_bytes:
                low = mid
            else:
                high = mid - 1
        return low


def memory_model(model: Layer, sample_shape: Sequence[int], optimizer: Any = None, batch_size: int = 64) \
        -> MemoryModel:
    """Run the dry run for ``model`` on samples of ``sample_shape`` (no batch axis) trained with
    ``optimizer`` (its per-parameter state arrays, ``Optimizer.state_slots``; None: plain SGD), for
    batches near ``batch_size`` (the convolutions' chunks are those of that batch size)."""
    twin = _host_twin(model)
    arrays = list(model.named_state().values())
    device = backend.device_of(arrays[0]) if arrays else backend.current_device()
    dtype_bytes = precision.itemsize(arrays[0].dtype) if arrays else 4
    trainable = sum(p.size for p in model.parameters(trainable=True)) * dtype_bytes
    stored = sum(int(a.size) for a in arrays) * dtype_bytes
    slots = int(getattr(optimizer, "state_slots", 0) or 0)
    on_numpy = device.name == "cpu"
    flat_copy = 0 if on_numpy else trainable  # off NumPy the optimizer gathers the gradients into one buffer
    sample = tuple(int(d) for d in sample_shape)
    compute_bytes = precision.itemsize(precision.compute_dtype(device.xp)) if arrays else dtype_bytes
    columns = max((layer.column_bytes(shape, compute_bytes) for layer, shape in _layer_inputs(model, (1, *sample))
                   if isinstance(layer, Conv2D)), default=0)
    target = batch_chunk(batch_size, columns, device.xp) if columns else 1
    chunk = max(1, min(target, DRY_BATCH))
    small = max(4, 2 * chunk)  # a few chunks: the first image or chunk has costs of its own
    large = 2 * small
    points = [_dry_step(twin, (batch, *sample), chunk) for batch in (small, large)]
    if len(points[0][1]) != len(points[1][1]):  # a model whose layers run differently by batch size
        points = [(saved, [max(peaks)]) for saved, peaks in points]
    chunk_bytes = 0.0
    if target > chunk:
        chunked = max(_dry_step(twin, (large, *sample), large)[1])
        chunk_bytes = max(0.0, (chunked - max(points[1][1])) / (large - chunk))
    return MemoryModel(parameters=stored, gradients=trainable, optimizer_state=slots * trainable + flat_copy,
                       batches=(small, large), saved=(points[0][0], points[1][0]),
                       peaks=(tuple(points[0][1]), tuple(points[1][1])), column_bytes=columns, chunk=chunk,
                       chunk_bytes=chunk_bytes, device=device)


def memory_estimate(model: Layer, batch_size: int, sample_shape: Sequence[int], optimizer: Any = None) \
        -> MemoryEstimate:
    """The training memory of ``model`` at ``batch_size`` (see :class:`MemoryEstimate`)."""
    batch_size = check_integer("memory_estimate", "batch_size", batch_size)
    return memory_model(model, sample_shape, optimizer, batch_size).at(batch_size)


def _host_twin(model: Layer) -> Layer:
    """The same architecture on the host, with zero weights (nothing drawn) and the same frozen layers."""
    stored = sum(int(a.size) for a in model.named_state().values()) * 8 + MIB
    with backend.use_device("cpu"), init.placeholders(stored):
        twin = layer_from_spec(layer_spec(model))
    for (_, mine), (_, theirs) in zip(model.walk(), twin.walk()):
        theirs._trainable = mine._trainable
        for name in mine.param_names:
            getattr(theirs, name).trainable = getattr(mine, name).trainable
    return twin


def _dry_step(twin: Layer, shape: tuple[int, ...], chunk: int) -> tuple[int, list[int]]:
    """Bytes alive after the forward pass and the peak of each stretch of the step (up to each
    layer's forward and backward), above the start, at ``shape``; every layer that chunks its batch
    (convolutions' columns, max-pool's routing) takes ``chunk`` images at a time. Stretches, not one
    peak: the step's peak is the largest of lines in the batch size, and where it lies moves as the
    batch grows."""
    xp = backend.resolve("cpu").xp
    dtype = twin.parameters()[0].value.dtype if twin.parameters() else xp.float32
    x = xp.zeros(shape, dtype=dtype) + 0.5
    leaves = [layer for _, layer in twin.walk() if not layer.children()]
    # dropout draws from the host generator: the user's stream (a resumed run's) must not move
    with backend.preserved_rng(), _traced() as traced, images_at_a_time(chunk):
        base = traced()[0]
        peaks: list[int] = []

        def mark() -> None:
            peaks.append(traced()[1] - base)
            tracemalloc.reset_peak()

        def watched(forward: Any) -> Any:
            def run(x: Any, *, train: bool, input_grad: bool) -> Any:
                mark()
                y, backprop = forward(x, train=train, input_grad=input_grad)
                mark()

                def watched_backprop(dy: Any) -> Any:
                    mark()
                    dx = backprop(dy)
                    mark()
                    return dx

                return y, watched_backprop
            return run

        for layer in leaves:
            layer.forward = watched(layer.forward)
        try:
            out, backprop = twin(x, train=True, input_grad=False)
            saved = traced()[0] - base
            backprop(xp.ones_like(out))
            mark()
        finally:
            for layer in leaves:
                del layer.forward
    twin.zero_grad()
    return saved, peaks


@contextlib.contextmanager
def _traced() -> Iterator[Any]:
    """``tracemalloc`` on (left on if it already was), its peak reset; yields its reader."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield tracemalloc.get_traced_memory
    finally:
        if started:
            tracemalloc.stop()


def _layer_inputs(layer: Layer, shape: tuple[int, ...]) -> Iterator[tuple[Layer, tuple[int, ...]]]:
    """Every layer inside ``layer`` with the input shape it gets when ``layer`` gets ``shape``."""
    yield layer, shape
    for _, child, child_shape in layer.child_inputs(shape):
        yield from _layer_inputs(child, child_shape)
