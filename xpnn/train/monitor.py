"""What the loop watches: device-side sums of loss and correct predictions, read back only at a
sync, and the finite-weights check at each epoch's end. Both stop a diverged run, naming where."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from array_api_compat import array_namespace

from .. import backend
from ..errors import OutOfMemoryError, TrainingDivergedError
from ..layers.base import join_path
from ..layers.memory import memory_model
from ..losses import Loss


DIVERGED_ADVICE = ("Lower the learning rate, check the inputs are scaled, or use a loss with from_logits=True. "
                   "Checkpoints already written are intact.")


def check_finite_state(model: Any, params: Sequence[Any], epoch: int) -> None:
    """Raise :class:`TrainingDivergedError` if a trained parameter holds NaN, inf, or a value so
    large (beyond the square root of the dtype's maximum) that multiplying two such values
    overflows, or if a running statistic (BatchNorm's buffers) is NaN/inf.

    The loss of a batch is computed before its update, so the update after an epoch's last
    batch can make the weights non-finite unseen by the loss check; a network whose weights
    exploded but whose ReLUs all died still reports a finite loss; and a BatchNorm whose batch
    variance overflowed normalizes to finite outputs while its running variance is inf. This runs
    before the epoch's callbacks (checkpoints) see the model; it reads one small array from the device.
    """
    buffers = [(join_path(path, name), value) for path, layer in model.walk()
               for name, value in layer.buffers().items()]
    if not params and not buffers:
        return
    xp = array_namespace(params[0].value if params else buffers[0][1])
    limit = math.sqrt(float(np.finfo(model.dtype).max))
    flags = [xp.all(xp.abs(p.value) <= limit) for p in params]  # False for NaN too
    flags += [xp.all(xp.isfinite(value)) for _, value in buffers]
    bad = np.flatnonzero(~backend.to_numpy(xp.stack(flags)))
    bad_params = [params[i].name or f"#{i}" for i in bad if i < len(params)]
    bad_buffers = [buffers[i - len(params)][0] for i in bad if i >= len(params)]
    if bad_params:
        raise TrainingDivergedError(
            f"the weights became NaN/inf or exploded (|w| > {limit:.2g}) in epoch {epoch + 1} ({len(bad_params)} of "
            f"{len(params)} parameters, e.g. {', '.join(bad_params[:3])}); training stopped. {DIVERGED_ADVICE}")
    if bad_buffers:
        raise TrainingDivergedError(
            f"the running statistics {', '.join(bad_buffers[:3])} became NaN/inf in epoch {epoch + 1} (the batch "
            f"statistics overflowed); training stopped. {DIVERGED_ADVICE}")


def out_of_memory_error(model: Any, sample_shape: tuple[int, ...], batch_size: int, optimizer: Any,
                        epoch: int) -> OutOfMemoryError:
    """The one-line error of a step that ran out of memory: the batch size, the memory estimate, the
    device's free memory (after CuPy's pool gave back its cached blocks) and a batch size that fits."""
    device = model.device
    backend.release_cached_memory(device)
    plan = memory_model(model, sample_shape, optimizer, batch_size)
    need = plan.at(batch_size).step
    info = backend.memory_info(device)
    mib = 2 ** 20
    text = (f"out of memory on {device.name} in epoch {epoch + 1} at batch size {batch_size}: a training step needs "
            f"about {need / mib:,.0f} MiB (estimate)")
    if info is not None:
        free, total = info
        fits = plan.largest_batch(int(free * 0.9))
        advice = f"batch size {fits} fits" if fits else "not even batch size 1 fits"
        text += f" and {free / mib:,.0f} MiB of the device's {total / mib:,.0f} MiB are free; {advice}"
    return OutOfMemoryError(f"{text}. Smaller batches, checkpointed blocks (zoo.resnet(..., checkpoint=True)) or a "
                            f"lower xpnn.set_workspace_limit need less.")


class Meter:
    """Each batch's loss and count of correct predictions, kept on the device and read only on :meth:`sync`.

    A batch costs the few operations that count its correct predictions; its loss is the mean the
    loss already computed. :meth:`sync` stacks what the batches since the last sync left, reads it
    (two transfers), checks the losses for NaN/inf and adds them, weighted by the batch sizes, to
    totals kept on the host. ``reduce`` (data-parallel training) sums the totals over ranks at each
    sync; ``seen`` is the number of samples (on all ranks) the last sync counted.
    """

    def __init__(self, loss: Loss, epoch: int, reduce: Any = None) -> None:
        self.loss, self.epoch, self.reduce = loss, epoch, reduce
        self.seen = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.samples = 0
        self.pending: list[Any] = []
        self.pending_sizes: list[int] = []
        self.pending_correct: list[Any] = []
        self.track_divergence = True
        self.synced_batches = 0
        self.values = {"loss": math.nan}

    def add(self, value: Any, out: Any, target: Any, track_divergence: bool = True) -> None:
        n = int(out.shape[0])
        self.samples += n
        self.pending.append(value)
        self.pending_sizes.append(n)
        self.track_divergence = track_divergence
        if self.loss.task in ("binary", "multiclass"):
            xp = array_namespace(out)
            predicted = self.loss.predicted_classes(out)
            if target.ndim == 2 and self.loss.task == "multiclass":
                target = xp.argmax(target, axis=1)
            truth = xp.reshape(target, tuple(predicted.shape))
            self.pending_correct.append(xp.count_nonzero(predicted == xp.astype(truth, predicted.dtype, copy=False)))

    def sync(self, batches_per_epoch: int | None = None) -> dict[str, float]:
        """Read the batches' losses and correct counts to the host; raise if a loss is not finite."""
        if self.pending:
            xp = array_namespace(self.pending[0])
            losses = backend.to_numpy(xp.stack(self.pending))
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size and self.track_divergence:
                batch = self.synced_batches + int(bad[0]) + 1
                of = f" of {batches_per_epoch}" if batches_per_epoch else ""
                raise TrainingDivergedError(
                    f"the loss became {losses[bad[0]]} at epoch {self.epoch + 1}, batch {batch}{of}; training "
                    f"stopped. {DIVERGED_ADVICE}")
            self.loss_sum += float(np.dot(losses.astype(np.float64), self.pending_sizes))
            if self.pending_correct:
                self.correct += int(backend.to_numpy(xp.stack(self.pending_correct)).sum())
            self.synced_batches += len(self.pending)
            self.pending.clear()
            self.pending_sizes.clear()
            self.pending_correct.clear()
        loss_sum, correct, samples = self.loss_sum, self.correct, self.samples
        if self.reduce is not None:
            loss_sum, correct, samples = self.reduce(loss_sum, correct, samples)
        self.seen = samples
        if samples:
            self.values = {"loss": float(loss_sum) / samples}
            if self.loss.task in ("binary", "multiclass"):
                self.values["accuracy"] = float(correct) / samples
        return self.values
