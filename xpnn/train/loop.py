"""The training loop: ``fit``, ``evaluate``, ``predict``.

Inside a training step nothing crosses to the host: the loss and the count of correct
predictions are summed on the device, and read back only when the progress bar refreshes
(every ``SYNC_SECONDS`` at most) and at the end of an epoch. Those reads also check the loss
for NaN/inf, naming the first bad batch. Callbacks (:mod:`.callbacks`) are the only way out
of the loop: writing checkpoints is one (:mod:`.checkpoint`), so the loop does not import the
file format. In a data-parallel job the strategy of :func:`xpnn.distributed.active` shards the
batches and all-reduces the gradients.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any, Callable, Sequence

from array_api_compat import array_namespace

from .. import backend, distributed, precision
from ..data.loader import DataLoader
from ..errors import TrainingDivergedError
from ..losses import Loss, get_loss
from ..optim import SGD, LossScaleOptimizer, get_optimizer
from .callbacks import Callback
from .history import History
from .inputs import checked_data, checked_inputs, host_array
from .monitor import DIVERGED_ADVICE, Meter, check_finite_state, out_of_memory_error
from .weights import sample_weights

__all__ = ["fit", "evaluate", "predict", "SYNC_SECONDS"]

#: Seconds between reads of the running loss/accuracy (progress bar, NaN check) during an epoch.
SYNC_SECONDS = 0.25


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
        scale: Any = None, transform: Any = None, initial_epoch: int = 0, class_weight: Any = None,
        sample_weight: Any = None) -> History:
    """Train ``model`` on ``(x, y)`` with mini-batch gradient descent.

    ``x``/``y`` are host arrays (NumPy, uint8 images are fine with ``scale="unit"``) or arrays
    on any device; each batch is moved to the model's device. ``batch_size=None`` trains full
    batch. ``verbose``: 0 silent, 1 a progress bar per epoch, 2 one line per epoch. ``seed``
    fixes the shuffle order of every epoch. ``initial_epoch`` continues a run (epochs counts
    the last epoch number, as in Keras). Returns the :class:`History` (also ``model.history``).
    After ``xpnn.distributed.init()`` in a multi-process job, ``batch_size`` is the global batch,
    split over the ranks (see :mod:`xpnn.distributed`).

    ``class_weight`` (``{class: weight}``, classes not named weigh 1, or ``"balanced"``:
    ``n_samples / (n_classes * count)``) and ``sample_weight`` (one number per sample) weigh each
    sample's loss, as in Keras: the training loss is the weighted one, the validation loss is not.
    Both are checked before training starts.

    With a schedule, the learning rate moves at every update; the history logs ``lr``, the rate of
    the epoch's first update, and ``lr_last``, of its last.

    Under the ``mixed_float16`` dtype policy (:func:`xpnn.set_dtype_policy`) the optimizer is
    wrapped in a :class:`~xpnn.optim.LossScaleOptimizer` (unless it is one), which becomes
    ``model.optimizer``; a policy that cannot run on the model's device raises before training.
    """
    session = model.session
    loss = get_loss(loss if loss is not None else session.loss or "cross_entropy")
    optimizer = get_optimizer(optimizer) if optimizer is not None else (session.optimizer or SGD(lr=0.01))
    policy = precision.dtype_policy()
    precision.check_available(model.device.xp, policy)
    if policy.loss_scaling and not isinstance(optimizer, LossScaleOptimizer):
        optimizer = LossScaleOptimizer(optimizer)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if model.parameters() and not model.parameters(trainable=True):
        raise ValueError("nothing to train: every parameter of the model is frozen; set trainable = True on "
                         "the layers to train (model.trainable = True unfreezes everything)")
    x_data, y_data = checked_data(model, x, y, loss, ("x", "y"))
    weights = None
    if class_weight is not None or sample_weight is not None:
        weights = sample_weights(loss, host_array(y_data, "y"), model.output_shape((1, *x_data.shape[1:])),
                                 class_weight, sample_weight)
    val = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        val = checked_data(model, *validation_data, loss, ("x_val", "y_val"))
    session.loss, session.optimizer, session.stop_training = loss, optimizer, False
    if session.input_shape is None:
        session.input_shape = tuple(int(d) for d in x_data.shape[1:])
    samples = int(x_data.shape[0])
    if batch_size is None or batch_size >= samples:
        batch_size, shuffle = samples, False  # one batch: its order does not change the gradient
    loader = DataLoader(x_data, y_data, batch_size, shuffle=shuffle, seed=seed, device=model.device,
                        dtype=model.dtype, scale=scale, transform=transform, weights=weights)
    strategy = distributed.active()
    if strategy is not None:
        loader = strategy.prepare(model, loader, optimizer, sync_seconds=SYNC_SECONDS)
        verbose = verbose if strategy.is_main else 0
    history = session.history if initial_epoch and isinstance(session.history, History) else History()
    session.history = history
    params = model.parameters(trainable=True)  # frozen ones: no gradient, no update, state kept
    callbacks = list(callbacks)
    for callback in callbacks:
        callback.model = model
        callback.on_train_begin({"epochs": epochs, "initial_epoch": initial_epoch})
    batches = len(loader)
    for epoch in range(initial_epoch, epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        if hasattr(optimizer, "set_epoch"):
            optimizer.set_epoch(epoch, batches)
        first_lr = getattr(optimizer, "lr", None)
        loader.set_epoch(epoch)
        meter = Meter(loss, epoch, None if strategy is None else strategy.reduce_metrics)
        bar = _progress(verbose, samples, epoch, epochs)
        started = last_sync = time.perf_counter()
        out_of_memory = False
        try:
            for xb, yb, *weight in loader:  # weight: [the batch's sample weights] or []
                _train_step(model, loss, optimizer, params, strategy, meter, xb, yb, *weight)
                now = time.perf_counter()
                if (now - last_sync >= SYNC_SECONDS) if strategy is None else strategy.sync_due():
                    logs = meter.sync(batches)
                    last_sync = now
                    if bar is not None:
                        bar.update(meter.seen - bar.n)
                        bar.set_postfix_str(_format(logs), refresh=False)
            logs = dict(meter.sync(batches))
            seconds = time.perf_counter() - started
        except MemoryError:  # NumPy's, or CuPy's OutOfMemoryError: said once the step's arrays are released
            out_of_memory = True
        finally:
            if bar is not None:  # closed before validation, so its samples/s is the training rate
                bar.set_postfix_str(_format(meter.values), refresh=False)
                bar.update(meter.seen - bar.n)
                bar.close()
        if out_of_memory:
            raise out_of_memory_error(model, tuple(x_data.shape[1:]), batch_size, optimizer, epoch)
        if strategy is not None:
            strategy.end_epoch(model)
        check_finite_state(model, params, epoch)
        if val is not None:
            run = _evaluate_checked if strategy is None else functools.partial(strategy.evaluate,
                                                                               run=_evaluate_checked)
            val_logs = {f"val_{k}": v for k, v in
                        run(model, *val, loss=loss, batch_size=max(batch_size, 256), scale=scale).items()}
            logs.update(val_logs)
            if not math.isfinite(val_logs["val_loss"]):
                raise TrainingDivergedError(
                    f"the validation loss became {val_logs['val_loss']} at the end of epoch {epoch + 1}; training "
                    f"stopped. {DIVERGED_ADVICE}")
            if bar is not None:
                bar.write(f"epoch {epoch + 1}/{epochs} validation: {_format(val_logs)}", file=sys.stderr)
        logs["seconds"] = seconds
        logs["samples_per_second"] = samples / seconds if seconds > 0 else math.inf
        if first_lr is not None:
            logs["lr"] = float(first_lr)
        if getattr(optimizer, "schedule", None) is not None and optimizer.last_lr is not None:
            logs["lr_last"] = float(optimizer.last_lr)
        history.append(epoch + 1, logs)
        if verbose == 2:
            print(f"epoch {epoch + 1}/{epochs}: {_format(logs)}", flush=True)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if session.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end({"history": history})
    return history


def _train_step(model: Any, loss: Loss, optimizer: Any, params: list[Any], strategy: Any, meter: Meter,
                xb: Any, yb: Any, *weight: Any) -> None:
    """Forward, loss, backward, update, and the metric sums of one batch. A function of its own, so
    that nothing the step made (outputs, backprop closures and what they keep) is still referenced
    when the next step's forward pass starts: only one step's saved arrays are ever alive."""
    out, backprop = model(xb, train=True, input_grad=False)
    value, dloss = loss(out, yb, *weight)
    backprop(optimizer.scale_loss(dloss()))
    if strategy is not None:
        strategy.reduce_gradients(params, int(out.shape[0]))
    optimizer.step(params)
    for p in params:
        p.grad = None
    meter.add(value, out, yb)


@_on_model_device
def evaluate(model: Any, x: Any, y: Any, *, loss: "Loss | str | None" = None, batch_size: int = 256,
             scale: Any = None) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``(x, y)`` in eval mode; the loss
    is unweighted: ``class_weight`` and ``sample_weight`` are for training only (as Keras' ``val_loss``)."""
    if loss is None and model.session.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=..., or fit the model first")
    loss = get_loss(loss if loss is not None else model.session.loss)
    x_data, y_data = checked_data(model, x, y, loss, ("x", "y"))
    return _evaluate_checked(model, x_data, y_data, loss=loss, batch_size=batch_size, scale=scale)


def _evaluate_checked(model: Any, x_data: Any, y_data: Any, *, loss: Loss, batch_size: int,
                      scale: Any) -> dict[str, float]:
    """:func:`evaluate` on data :func:`checked_data` already returned (``fit``'s validation data,
    checked once before the first epoch), with the model's device current."""
    loader = DataLoader(x_data, y_data, batch_size, device=model.device, dtype=model.dtype, scale=scale)
    meter = Meter(loss, 0)
    for idx in loader.batch_indices():
        xb, yb = loader.take(idx)
        out, _ = model(xb, train=False)
        value, _ = loss(out, yb)
        meter.add(value, out, yb, track_divergence=False)
    return dict(meter.sync())


@_on_model_device
def predict(model: Any, x: Any, *, batch_size: int = 256, scale: Any = None, to_host: bool = True) -> Any:
    """Model outputs for ``x`` in eval mode, batch by batch: a NumPy array (or device array if
    ``to_host=False``), float32 under any dtype policy. Apply the output activation yourself if the
    model ends in logits."""
    x_data = checked_inputs(model, x, "x")
    model.output_shape((1, *(int(d) for d in x_data.shape[1:])))  # checks the shape; records nothing
    loader = DataLoader(x_data, None, batch_size, device=model.device, dtype=model.dtype, scale=scale)
    outputs = [precision.variable(model(loader.take(idx)[0], train=False)[0]) for idx in loader.batch_indices()]
    xp = array_namespace(outputs[0])
    out = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=0)
    return backend.to_numpy(out) if to_host else out
