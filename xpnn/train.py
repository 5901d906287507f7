"""The training loop: ``fit``, ``evaluate``, ``predict``, History and callbacks.

Inside a training step nothing crosses to the host: the loss and the count of correct
predictions are summed on the device, and read back only when the progress bar refreshes
(at most a few times a second) and at the end of an epoch. Those reads also check the loss
for NaN/inf, naming the first bad batch.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
from array_api_compat import array_namespace

from . import backend, distributed
from .data.loader import DataLoader
from .errors import TrainingDivergedError
from .files import atomic_write, write_json
from .losses import Loss, get_loss
from .validation import check_inputs, check_lengths, check_targets

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "ModelCheckpoint"]

SYNC_SECONDS = 0.25


class History:
    """Per-epoch metrics: ``history.history["loss"]``, ``["val_accuracy"]``, ... and ``epochs``."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [math.nan] * (len(self.epochs) - 1)).append(float(value))
        for key, values in self.history.items():
            if len(values) < len(self.epochs):
                values.append(math.nan)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epochs), **self.history}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        """The inverse of :meth:`to_dict` (``null`` read back as NaN); ValueError if ``data`` is not
        one list per metric, each as long as the list of epochs."""
        epochs = data.get("epoch", [])
        if not isinstance(epochs, list) or any(
                not isinstance(values, list) or len(values) != len(epochs)
                or not all(v is None or isinstance(v, (int, float)) for v in values) for values in data.values()):
            raise ValueError("a history must hold one list of numbers per metric, each as long as its list of epochs")
        history = cls()
        history.epochs = [int(e) for e in data.get("epoch", [])]
        history.history = {k: [math.nan if v is None else float(v) for v in vals]
                           for k, vals in data.items() if k != "epoch"}
        return history

    def to_json(self, path: str) -> None:
        """Write the history as strict JSON (a NaN becomes ``null``), atomically."""
        if not distributed.is_main():
            return
        write_json(path, self.to_dict())

    def to_csv(self, path: str) -> None:
        """Write one row per epoch, atomically."""
        if not distributed.is_main():
            return
        keys = list(self.history)
        with atomic_write(path, "w") as f:
            f.write(",".join(["epoch", *keys]) + "\n")
            for row, epoch in enumerate(self.epochs):
                f.write(",".join([str(epoch)] + [repr(self.history[k][row]) for k in keys]) + "\n")

    def plot(self, path: str, metric: str = "loss", title: str | None = None) -> None:
        """Save a PNG of ``metric`` and ``val_<metric>`` per epoch (train vs validation)."""
        if not distributed.is_main():
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in self.history:
                ax.plot(self.epochs, self.history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(title or metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        try:
            with atomic_write(path) as f:
                fig.savefig(f, format="png")
        finally:
            plt.close(fig)


class Callback:
    """Hooks into :func:`fit`. ``self.model`` is set at the start; set ``model.stop_training = True`` to stop."""

    model: Any = None

    def on_train_begin(self, logs: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, Any]) -> None: ...


def _better(mode: str, value: float, best: float, min_delta: float) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True) -> None:
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = _mode_for(monitor, mode)
        self.restore_best = restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, np.ndarray] | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_state, self.best_epoch, self.stopped_epoch = 0, None, None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the epoch logs only have "
                           f"{sorted(logs)}; pass validation_data or monitor 'loss'")
        value = logs[self.monitor]
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best and self.best_state is not None and self.stopped_epoch is not None:
            self.model.load_state_dict(self.best_state)


class ModelCheckpoint(Callback):
    """Save the model (atomically, see :func:`xpnn.save`) after each epoch, or only on improvement."""

    def __init__(self, path: str, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto") -> None:
        self.path, self.monitor, self.save_best_only = str(path), monitor, save_best_only
        self.mode = _mode_for(monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        from .io import save
        if not distributed.is_main():
            return
        if self.save_best_only:
            value = logs.get(self.monitor, math.nan)
            if math.isnan(value) or not _better(self.mode, value, self.best, 0.0):
                return
            self.best = value
        save(self.model, self.path, metadata={"epoch": epoch + 1, "logs": logs})


# --------------------------------------------------------------------------- helpers


def _host(array: Any, name: str) -> np.ndarray:
    """A NumPy view/copy of user data (lists, NumPy arrays, or arrays on any device)."""
    if isinstance(array, np.ndarray):
        return array
    try:
        return backend.to_numpy(array)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(array).__name__}") from exc


def _on_models_device(model: Any, array: Any) -> bool:
    """Whether ``array`` is a (non-NumPy) array already on the model's device."""
    return not isinstance(array, np.ndarray) and backend.is_array(array) and backend.device_of(array) == model.device


def _inputs(model: Any, array: Any, name: str) -> Any:
    """User inputs checked (:func:`check_inputs`): an array already on the model's device as it is,
    so it never goes to the host and back (one flag is read for the NaN/inf check), else on the host."""
    if not _on_models_device(model, array):
        host = _host(array, name)
        check_inputs(host, name, model.dtype)
        return host
    xp = array_namespace(array)
    suspect = array.ndim == 0 or int(array.shape[0]) == 0 or xp.isdtype(array.dtype, "complex floating")
    if not suspect and xp.isdtype(array.dtype, "real floating"):  # NaN, inf or beyond the model's dtype
        suspect = not bool(xp.all(xp.abs(array) <= float(np.finfo(model.dtype).max)))
    if suspect:
        check_inputs(backend.to_numpy(array), name, model.dtype)  # the host copy only to word the error
    return array


def _prepare(model: Any, x: Any, y: Any, loss: Loss, names: tuple[str, str]) -> tuple[Any, Any]:
    """``x``/``y`` checked against the model and the loss (before any step runs): host arrays, or
    the arrays themselves where they are on the model's device (the labels are read once to check)."""
    x_data = _inputs(model, x, names[0])
    y_data = y if _on_models_device(model, y) else _host(y, names[1])
    y_host = _host(y_data, names[1])
    check_lengths(range(int(x_data.shape[0])), y_host, *names)  # only the lengths are compared
    out_shape = model.build(tuple(x_data.shape[1:]), batch_size=int(x_data.shape[0]))
    check_targets(loss, y_host, out_shape, names[1], model.dtype)
    return x_data, y_data


_DIVERGED_ADVICE = ("Lower the learning rate, check the inputs are scaled, or use a loss with from_logits=True. "
                    "Checkpoints already written are intact.")


def _check_finite_state(model: Any, params: Sequence[Any], epoch: int) -> None:
    """Raise :class:`TrainingDivergedError` if a trained parameter holds NaN, inf, or a value so
    large (beyond the square root of the dtype's maximum) that multiplying two such values
    overflows, or if a running statistic (BatchNorm's buffers) is NaN/inf.

    The loss of a batch is computed before its update, so the update after an epoch's last
    batch can make the weights non-finite unseen by the loss check; a network whose weights
    exploded but whose ReLUs all died still reports a finite loss; and a BatchNorm whose batch
    variance overflowed normalizes to finite outputs while its running variance is inf. This runs
    before the epoch's callbacks (checkpoints) see the model; it reads one small array from the device.
    """
    buffers = [(f"{path}.{name}" if path else name, value) for path, layer in model.walk()
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
            f"{len(params)} parameters, e.g. {', '.join(bad_params[:3])}); training stopped. {_DIVERGED_ADVICE}")
    if bad_buffers:
        raise TrainingDivergedError(
            f"the running statistics {', '.join(bad_buffers[:3])} became NaN/inf in epoch {epoch + 1} (the batch "
            f"statistics overflowed); training stopped. {_DIVERGED_ADVICE}")


class _Meter:
    """Device-side sums of loss and correct predictions, read back only on :meth:`sync`.

    ``reduce`` (data-parallel training) sums them over ranks at each sync; ``seen`` is the
    number of samples (on all ranks) the last sync counted.
    """

    def __init__(self, loss: Loss, epoch: int, reduce: Any = None) -> None:
        self.loss, self.epoch, self.reduce = loss, epoch, reduce
        self.seen = 0
        self.loss_sum: Any = 0.0
        self.correct: Any = 0
        self.samples = 0
        self.pending: list[Any] = []
        self.synced_batches = 0
        self.values = {"loss": math.nan}

    def add(self, value: Any, out: Any, target: Any, track_divergence: bool = True) -> None:
        n = int(out.shape[0])
        self.samples += n
        self.loss_sum = self.loss_sum + value * float(n)
        if track_divergence:
            self.pending.append(value)
        if self.loss.task in ("binary", "multiclass"):
            xp = array_namespace(out)
            predicted = self.loss.predicted_classes(out)
            if target.ndim == 2 and self.loss.task == "multiclass":
                target = xp.argmax(target, axis=1)
            truth = xp.reshape(target, tuple(predicted.shape))
            self.correct = self.correct + xp.sum(xp.astype(predicted == xp.astype(truth, predicted.dtype, copy=False),
                                                           xp.int64))

    def sync(self, batches_per_epoch: int | None = None) -> dict[str, float]:
        """Read the sums to the host (one transfer); raise if any pending batch loss is not finite."""
        if self.pending:
            xp = array_namespace(self.pending[0])
            losses = backend.to_numpy(xp.stack(self.pending))
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                batch = self.synced_batches + int(bad[0]) + 1
                of = f" of {batches_per_epoch}" if batches_per_epoch else ""
                raise TrainingDivergedError(
                    f"the loss became {losses[bad[0]]} at epoch {self.epoch + 1}, batch {batch}{of}; training "
                    f"stopped. {_DIVERGED_ADVICE}")
            self.synced_batches += len(self.pending)
            self.pending.clear()
        loss_sum, correct, samples = self.loss_sum, self.correct, self.samples
        if self.reduce is not None:
            loss_sum, correct, samples = self.reduce(loss_sum, correct, samples)
        self.seen = samples
        if samples:
            self.values = {"loss": float(backend.to_numpy(loss_sum)) / samples}
            if self.loss.task in ("binary", "multiclass"):
                self.values["accuracy"] = float(backend.to_numpy(correct)) / samples
        return self.values


def _progress(verbose: int, total: int, epoch: int, epochs: int) -> Any:
    if verbose != 1:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit=" samples", unit_scale=True,
                leave=True, dynamic_ncols=True)


def _format(logs: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in logs.items())


# --------------------------------------------------------------------------- public loop


def _on_model_device(run: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``run(model, ...)`` with the model's device made current (:func:`xpnn.backend.device_context`),
    so what the loop, the loss, the transforms and the optimizer create lands on the model's GPU."""
    @functools.wraps(run)
    def on_device(model: Any, *args: Any, **kwargs: Any) -> Any:
        with backend.device_context(model.device):
            return run(model, *args, **kwargs)
    return on_device


@_on_model_device
def fit(model: Any, x: Any, y: Any, *, loss: "Loss | str | None" = None, optimizer: Any = None, epochs: int = 1,
        batch_size: int | None = 32, shuffle: bool = True, seed: int | None = None,
        validation_data: tuple[Any, Any] | None = None, callbacks: Sequence[Callback] = (), verbose: int = 1,
        scale: Any = None, transform: Any = None, initial_epoch: int = 0) -> History:
    """Train ``model`` on ``(x, y)`` with mini-batch gradient descent.

    ``x``/``y`` are host arrays (NumPy, uint8 images are fine with ``scale="unit"``) or arrays
    on any device; each batch is moved to the model's device. ``batch_size=None`` trains full
    batch. ``verbose``: 0 silent, 1 a progress bar per epoch, 2 one line per epoch. ``seed``
    fixes the shuffle order of every epoch. ``initial_epoch`` continues a run (epochs counts
    the last epoch number, as in Keras). Returns the :class:`History` (also ``model.history``).
    After ``xpnn.distributed.init()`` in a multi-process job, ``batch_size`` is the global batch,
    split over the ranks (see :mod:`xpnn.distributed`).
    """
    from .optim import SGD, get_optimizer

    loss = get_loss(loss if loss is not None else model.loss or "cross_entropy")
    optimizer = get_optimizer(optimizer) if optimizer is not None else (model.optimizer or SGD(lr=0.01))
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if model.parameters() and not model.parameters(trainable=True):
        raise ValueError("nothing to train: every parameter of the model is frozen; set trainable = True on "
                         "the layers to train (model.trainable = True unfreezes everything)")
    x_data, y_data = _prepare(model, x, y, loss, ("x", "y"))
    val = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        val = _prepare(model, *validation_data, loss, ("x_val", "y_val"))
    model.loss, model.optimizer = loss, optimizer
    model.stop_training = False
    samples = int(x_data.shape[0])
    if batch_size is None or batch_size >= samples:
        batch_size, shuffle = samples, False  # one batch: its order does not change the gradient
    loader = DataLoader(x_data, y_data, batch_size, shuffle=shuffle, seed=seed, device=model.device,
                        dtype=model.dtype, scale=scale, transform=transform)
    strategy = distributed.active()
    if strategy is not None:
        loader = strategy.prepare(model, loader, optimizer)
        verbose = verbose if strategy.is_main else 0
    history = model.history if initial_epoch and isinstance(model.history, History) else History()
    model.history = history
    params = model.parameters(trainable=True)  # frozen ones: no gradient, no update, state kept
    callbacks = list(callbacks)
    for callback in callbacks:
        callback.model = model
        callback.on_train_begin({"epochs": epochs})
    batches = len(loader)
    for epoch in range(initial_epoch, epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        if hasattr(optimizer, "set_epoch"):
            optimizer.set_epoch(epoch)
        loader.set_epoch(epoch)
        meter = _Meter(loss, epoch, None if strategy is None else strategy.reduce_metrics)
        bar = _progress(verbose, samples, epoch, epochs)
        started = last_sync = time.perf_counter()
        try:
            for xb, yb in loader:
                out, backprop = model(xb, train=True, input_grad=False)
                value, dloss = loss(out, yb)
                backprop(dloss())
                if strategy is not None:
                    strategy.reduce_gradients(params, int(out.shape[0]))
                optimizer.step(params)
                for p in params:
                    p.grad = None
                meter.add(value, out, yb)
                now = time.perf_counter()
                if (now - last_sync >= SYNC_SECONDS) if strategy is None else strategy.sync_due():
                    logs = meter.sync(batches)
                    last_sync = now
                    if bar is not None:
                        bar.update(meter.seen - bar.n)
                        bar.set_postfix_str(_format(logs), refresh=False)
            logs = dict(meter.sync(batches))
            seconds = time.perf_counter() - started
        finally:
            if bar is not None:  # closed before validation, so its samples/s is the training rate
                bar.set_postfix_str(_format(meter.values), refresh=False)
                bar.update(meter.seen - bar.n)
                bar.close()
        if strategy is not None:
            strategy.end_epoch(model)
        _check_finite_state(model, params, epoch)
        if val is not None:
            run = evaluate if strategy is None else strategy.evaluate
            val_logs = {f"val_{k}": v for k, v in
                        run(model, *val, loss=loss, batch_size=max(batch_size, 256), scale=scale).items()}
            logs.update(val_logs)
            if not math.isfinite(val_logs["val_loss"]):
                raise TrainingDivergedError(
                    f"the validation loss became {val_logs['val_loss']} at the end of epoch {epoch + 1}; training "
                    f"stopped. {_DIVERGED_ADVICE}")
            if bar is not None:
                bar.write(f"epoch {epoch + 1}/{epochs} validation: {_format(val_logs)}", file=sys.stderr)
        logs["seconds"] = seconds
        logs["samples_per_second"] = samples / seconds if seconds > 0 else math.inf
        if hasattr(optimizer, "lr"):
            logs["lr"] = float(optimizer.lr)
        history.append(epoch + 1, logs)
        if verbose == 2:
            print(f"epoch {epoch + 1}/{epochs}: {_format(logs)}", flush=True)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end({"history": history})
    return history


@_on_model_device
def evaluate(model: Any, x: Any, y: Any, *, loss: "Loss | str | None" = None, batch_size: int = 256,
             scale: Any = None) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``(x, y)`` in eval mode."""
    if loss is None and model.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=..., or fit the model first")
    loss = get_loss(loss if loss is not None else model.loss)
    x_data, y_data = _prepare(model, x, y, loss, ("x", "y"))
    loader = DataLoader(x_data, y_data, batch_size, device=model.device, dtype=model.dtype, scale=scale)
    meter = _Meter(loss, 0)
    for idx in loader.batch_indices():
        xb, yb = loader.take(idx)
        out, _ = model(xb, train=False)
        value, _ = loss(out, yb)
        meter.add(value, out, yb, track_divergence=False)
    return dict(meter.sync())


@_on_model_device
def predict(model: Any, x: Any, *, batch_size: int = 256, scale: Any = None, to_host: bool = True) -> Any:
    """Model outputs for ``x`` in eval mode, batch by batch: a NumPy array (or device array if
    ``to_host=False``). Apply the output activation yourself if the model ends in logits."""
    x_data = _inputs(model, x, "x")
    model.build(tuple(x_data.shape[1:]))
    loader = DataLoader(x_data, None, batch_size, device=model.device, dtype=model.dtype, scale=scale)
    outputs = [model(loader.take(idx)[0], train=False)[0] for idx in loader.batch_indices()]
    xp = array_namespace(outputs[0])
    out = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=0)
    return backend.to_numpy(out) if to_host else out
