"""The training loop: ``fit``, ``evaluate``, ``predict``.

Inside a training step nothing crosses to the host: the loss and the count of correct
predictions are summed on the device, and read back only at a sync (every ``SYNC_SECONDS`` at
most, when the progress bar refreshes) and at the end of an epoch. Those reads also check the loss
for NaN/inf, naming the first bad batch. Callbacks (:mod:`.callbacks`) are the only way out
of the loop: writing checkpoints is one (:mod:`.checkpoint`), so the loop does not import the
file format. In a data-parallel job the strategy of :func:`xpnn.distributed.active` shards the
batches and all-reduces the gradients.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from array_api_compat import array_namespace

from .. import backend, distributed, precision
from ..data.loader import DataLoader
from ..losses import Loss, get_loss
from ..optim import SGD, LossScaleOptimizer, get_optimizer
from ..validation import check_integer
from .callbacks import Callback, call_each
from .history import History
from .inputs import checked_data, checked_inputs, host_array
from .monitor import Meter, check_finite_state, out_of_memory_error
from .progress import EpochLine, EpochStatistics, HistoryRecorder, ProgressBar, Validation
from .session import TrainingSession
from .weights import sample_weights

__all__ = ["fit", "evaluate", "predict", "SYNC_SECONDS"]

#: Seconds between reads of the running loss/accuracy (progress bar, NaN check) during an epoch.
SYNC_SECONDS = 0.25


# --------------------------------------------------------------------------- public loop


def _on_model_device(run: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``run(model, ...)`` with the model's device made current (:func:`xpnn.backend.native_device_context`),
    so what the loop, the loss, the transforms and the optimizer create lands on the model's GPU."""
    @functools.wraps(run)
    def on_device(model: Any, *args: Any, **kwargs: Any) -> Any:
        with backend.native_device_context(model.device):
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
    run = _set_up(model, x, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                  seed=seed, validation_data=validation_data, callbacks=callbacks, verbose=verbose, scale=scale,
                  transform=transform, initial_epoch=initial_epoch, class_weight=class_weight,
                  sample_weight=sample_weight)
    call_each(run.callbacks, "on_train_begin", {"epochs": epochs, "initial_epoch": initial_epoch})
    for epoch in range(initial_epoch, epochs):
        logs = _run_epoch(run, epoch)
        call_each(run.callbacks, "on_epoch_end", epoch, logs)
        if model.session.stop_training:
            break
    call_each(run.callbacks, "on_train_end", {"history": model.session.history})
    return model.session.history


@dataclass
class _Run:
    """What every epoch of one ``fit`` uses, set up once: the trained parameters (frozen ones get no
    gradient and no update), the batches, the data-parallel strategy (or None) and the callbacks,
    fit's own first (:mod:`.progress`, the History's recording among them), then the user's."""

    model: Any
    loss: Loss
    optimizer: Any
    params: list[Any]
    loader: Any
    strategy: Any
    sample_shape: tuple[int, ...]
    batch_size: int
    callbacks: list[Callback]


def _set_up(model: Any, x: Any, y: Any, *, loss: Any, optimizer: Any, epochs: int, batch_size: int | None,
            shuffle: bool, seed: int | None, validation_data: Any, callbacks: Sequence[Callback], verbose: int,
            scale: Any, transform: Any, initial_epoch: int, class_weight: Any, sample_weight: Any) -> _Run:
    """Check everything before any step (arguments, data, weights, validation data, the dtype
    policy), then fill the model's training session and build the loader and the callback list."""
    session = _session(model, "fit")
    loss = get_loss(loss if loss is not None else session.loss or "cross_entropy")
    optimizer = get_optimizer(optimizer) if optimizer is not None else (session.optimizer or SGD(lr=0.01))
    policy = precision.dtype_policy()
    precision.check_available(model.device.xp, policy)
    if policy.loss_scaling and not isinstance(optimizer, LossScaleOptimizer):
        optimizer = LossScaleOptimizer(optimizer)
    epochs = check_integer("fit", "epochs", epochs)
    if model.parameters() and not model.parameters(trainable=True):
        raise ValueError("nothing to train: every parameter of the model is frozen; set trainable = True on "
                         "the layers to train (model.trainable = True unfreezes everything)")
    x_data, y_data = checked_data(model, x, y, loss, ("x", "y"))
    sample_shape = tuple(int(d) for d in x_data.shape[1:])
    weights = None
    if class_weight is not None or sample_weight is not None:
        weights = sample_weights(loss, host_array(y_data, "y"), model.output_shape((1, *sample_shape)),
                                 class_weight, sample_weight)
    val = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        val = checked_data(model, *validation_data, loss, ("x_val", "y_val"))
    session.loss, session.optimizer, session.stop_training = loss, optimizer, False
    if session.input_shape is None:
        session.input_shape = sample_shape
    samples = int(x_data.shape[0])
    if batch_size is None or batch_size >= samples:
        batch_size, shuffle = samples, False  # one batch: its order does not change the gradient
    loader = DataLoader(x_data, y_data, batch_size, shuffle=shuffle, seed=seed, device=model.device,
                        dtype=model.dtype, scale=scale, transform=transform, weights=weights)
    strategy = distributed.active()
    if strategy is not None:
        loader = strategy.prepare(model, loader, optimizer, sync_seconds=SYNC_SECONDS)
        verbose = verbose if strategy.is_main else 0
    if not (initial_epoch and isinstance(session.history, History)):
        session.history = History()
    own: list[Callback] = [ProgressBar(samples, epochs)] if verbose == 1 else []
    if val is not None:
        run = _evaluate_checked if strategy is None else functools.partial(strategy.evaluate, run=_evaluate_checked)
        own.append(Validation(val, functools.partial(run, loss=loss, batch_size=max(batch_size, 256), scale=scale),
                              epochs, verbose))
    own += [EpochStatistics(optimizer, samples), HistoryRecorder(session.history)]
    if verbose == 2:
        own.append(EpochLine(epochs))
    everything = [*own, *callbacks]
    for callback in everything:
        callback.model = model
    return _Run(model, loss, optimizer, model.parameters(trainable=True), loader, strategy, sample_shape, batch_size,
                everything)


def _run_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the batches; returns the epoch's training ``loss`` (and ``accuracy``). The
    running metrics are read every ``SYNC_SECONDS`` at most (the callbacks' ``on_sync``); the
    weights are checked to be finite before any ``on_epoch_end`` sees them."""
    model, optimizer, strategy, loader = run.model, run.optimizer, run.strategy, run.loader
    batches = len(loader)
    if hasattr(optimizer, "set_epoch"):
        optimizer.set_epoch(epoch, batches)
    loader.set_epoch(epoch)
    call_each(run.callbacks, "on_epoch_begin", epoch)
    meter = Meter(run.loss, epoch, None if strategy is None else strategy.reduce_metrics)
    last_sync = time.perf_counter()
    out_of_memory = False
    try:
        for xb, yb, *weight in loader:  # weight: [the batch's sample weights] or []
            _train_step(model, run.loss, optimizer, run.params, strategy, meter, xb, yb, *weight)
            now = time.perf_counter()
            if (now - last_sync >= SYNC_SECONDS) if strategy is None else strategy.sync_due():
                running = meter.sync(batches)
                call_each(run.callbacks, "on_sync", epoch, meter.seen, running)
                last_sync = now
        logs = dict(meter.sync(batches))
        call_each(run.callbacks, "on_sync", epoch, meter.seen, logs)
    except MemoryError:  # NumPy's, or CuPy's OutOfMemoryError: said once the step's arrays are released
        out_of_memory = True
    finally:
        call_each(run.callbacks, "on_steps_end", epoch, meter.seen, meter.values)
    if out_of_memory:
        raise out_of_memory_error(model, run.sample_shape, run.batch_size, optimizer, epoch)
    if strategy is not None:
        strategy.end_epoch(model)
    check_finite_state(model, run.params, epoch)
    return logs


def _session(model: Any, caller: str) -> TrainingSession:
    """The model's training session; TypeError for a bare composition of layers, which has none."""
    session = getattr(model, "session", None)
    if not isinstance(session, TrainingSession):
        raise TypeError(f"{caller} needs an xpnn.Sequential model (layers plus a training session), got "
                        f"{type(model).__module__}.{type(model).__qualname__}; wrap layers in xpnn.Sequential([...])")
    return session


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
    optimizer.zero_grad(params)
    meter.add(value, out, yb)


@_on_model_device
def evaluate(model: Any, x: Any, y: Any, *, loss: "Loss | str | None" = None, batch_size: int = 256,
             scale: Any = None) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``(x, y)`` in eval mode; the loss
    is unweighted: ``class_weight`` and ``sample_weight`` are for training only (as Keras' ``val_loss``)."""
    session = _session(model, "evaluate")
    if loss is None and session.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=..., or fit the model first")
    loss = get_loss(loss if loss is not None else session.loss)
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
