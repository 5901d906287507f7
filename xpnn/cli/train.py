"""``xpnn train``: build a model (or resume a run from its checkpoint), fit it with a checkpoint
after every epoch, then test it and write model.npz; Ctrl-C keeps the weights (exit code 130)
and a run whose loss or weights become NaN/inf ends with exit code 1."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, backend, metrics, precision, zoo
from ..errors import OutOfMemoryError, TrainingDivergedError
from ..io import load_checkpoint, load_weights, save
from ..layers.base import join_path
from ..layers.memory import memory_estimate
from ..train import History
from .dataset import SCALE, Dataset, train_transform, training_data
from .environment import library_versions, select_device
from .errors import CLIError, one_line
from .model_file import check_fits, check_metadata, require_model_file
from .reporting import model_scores, write_confusion
from .run_folder import (CHECKPOINT_FILE, MODEL_FILE, RunCheckpoint, finish_run, output_folder, previous_record,
                         run_record)
from .settings import backfill_settings, recipe, resolve_settings


def _init_from(model: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Start ``model`` from every weight of ``--init-from`` whose path and shape match; with
    ``--freeze``, freeze each layer that was loaded whole. Prints and returns what it did."""
    source = settings["init_from"]
    if source is None:
        if settings["freeze"]:
            raise CLIError("--freeze needs --init-from MODEL.npz: it freezes the weights loaded from that file")
        return None
    require_model_file(source)
    try:
        report = load_weights(source, model, strict=False)
    except ValueError as exc:  # a ModelFileError naming the file and what is wrong with it
        raise CLIError(f"--init-from {one_line(exc)}") from exc
    loaded = set(report.loaded)
    whole = [path for path, layer in model.walk() if not layer.children() and layer.state()
             and all(join_path(path, name) in loaded for name in layer.state())]
    if settings["freeze"]:
        layers = dict(model.walk())
        for path in whole:
            layers[path].trainable = False
        if not model.parameters(trainable=True):
            raise CLIError(f"--freeze: every layer of the new model was loaded from {source}, so nothing is left to "
                           f"train; leave out --freeze to fine-tune all of it")
    left = [*report.missing, *(f"{name} (saved {saved}, model {mine})" for name, saved, mine in report.mismatched)]
    print(f"init from {source}: loaded {len(report.loaded)} arrays ({len(whole)} layers: {', '.join(whole)})"
          f"{'; frozen' if settings['freeze'] else ''}", flush=True)
    print(f"left as initialised: {', '.join(left) if left else 'nothing'}"
          f"{f'; not used from the file: {len(report.unexpected)} arrays' if report.unexpected else ''}", flush=True)
    return {"file": str(Path(source).resolve()), "loaded": report.loaded, "left": left,
            "unused": report.unexpected, "frozen": whole if settings["freeze"] else []}


def _optimizer(settings: dict[str, Any]) -> Any:
    """The optimizer of a new run: --optimizer with --lr, --weight-decay, --clip-norm (global) and the
    --schedule with its --warmup-epochs. Sets settings["lr"] to the rate used (the optimizer's own
    when --lr is not given)."""
    from ..optim import Constant, CosineDecay, StepDecay, get_optimizer
    given = {key: settings[name] for key, name in (("lr", "lr"), ("weight_decay", "weight_decay"),
                                                    ("global_clipnorm", "clip_norm")) if settings[name] is not None}
    optimizer = get_optimizer(settings["optimizer"], **given)
    lr, epochs, warmup = optimizer.lr, settings["epochs"], settings["warmup_epochs"]
    if warmup and warmup >= epochs:
        raise CLIError(f"--warmup-epochs {warmup:g} must be less than --epochs {epochs}: the warmup would be all "
                       f"of the training")
    if settings["schedule"] == "cosine":
        optimizer.lr = CosineDecay(lr, epochs, warmup_epochs=warmup)
    elif settings["schedule"] == "step":
        optimizer.lr = StepDecay(lr, step_size=max(1, epochs // 3), gamma=0.1, warmup_epochs=warmup)
    elif warmup:
        optimizer.lr = Constant(lr, warmup_epochs=warmup)
    if precision.DTypePolicy(settings["precision"]).loss_scaling:  # wrapped here, so checkpoints hold its state
        from ..optim import LossScaleOptimizer
        optimizer = LossScaleOptimizer(optimizer)
    settings["lr"] = lr
    return optimizer


def _plateau(settings: dict[str, Any], validation: Any) -> Any:
    """--plateau's ReduceLROnPlateau (None without it); a resumed run loads its counters from the checkpoint."""
    if settings["plateau"] is None:
        return None
    from ..train import ReduceLROnPlateau
    return ReduceLROnPlateau(monitor="loss" if validation is None else "val_loss", patience=settings["plateau"])


def cmd_train(args: argparse.Namespace) -> int:
    with precision.set_dtype_policy(precision.dtype_policy()):  # the run's --precision, undone at its end
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    started = time.time()
    out = output_folder(args)
    device, note = select_device(args.device)
    if args.resume:
        model, optimizer, _ = load_checkpoint(out / CHECKPOINT_FILE, device)
        backfill_settings(model.metadata)
        meta = check_metadata(out / CHECKPOINT_FILE, model, checkpoint=True)
        settings = resolve_settings(args, meta.get("settings"))
        initial_epoch = int(meta["epoch"])
        if initial_epoch >= settings["epochs"] and previous_record(out).get("status") == "completed":
            raise CLIError(f"the run in {out} has already trained {initial_epoch} epoch(s); pass --epochs N with "
                           f"N > {initial_epoch} to train further")
    else:
        settings, initial_epoch = resolve_settings(args, None), 0
    precision.set_dtype_policy(settings["precision"])
    precision.check_available(device.xp)
    backend.seed(settings["seed"])
    data, (x_train, y_train), validation, (x_test, y_test) = training_data(settings)
    if args.resume:
        check_fits(model, data, x_train)
    else:
        from ..losses import get_loss
        model = zoo.build(settings["model"], x_train.shape[1:], len(data.classes))
        model.loss = zoo.loss_for(model)
        if settings["label_smoothing"]:
            model.loss = get_loss(type(model.loss).__name__,
                                  **{**model.loss.config(), "label_smoothing": settings["label_smoothing"]})
        init = _init_from(model, settings)
        optimizer = _optimizer(settings)
    sample_weight = None
    if settings["class_weight"] is not None:
        from ..train.weights import sample_weights
        sample_weight = sample_weights(model.loss, y_train, (1, len(data.classes)), settings["class_weight"])
    plateau = _plateau(settings, validation)
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
    metadata = {"model": settings["model"], "classes": data.classes, "settings": settings,
                "input": {"size": list(data.size), "color": data.color, "channels": int(x_train.shape[1]),
                          "scale": SCALE},
                "data": {"source": data.source, "train": len(x_train),
                         "validation": 0 if validation is None else len(validation[0]), "test": len(x_test)},
                "versions": library_versions(), "init_from": meta.get("init_from") if args.resume else init}
    checkpoint = RunCheckpoint(out, metadata, initial_epoch, callbacks={} if plateau is None else {"plateau": plateau})
    if args.resume:
        try:
            checkpoint.restore(model, optimizer, meta)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CLIError(f"{out / CHECKPOINT_FILE}: the saved training state (random-generator state, history or "
                           f"--plateau counters) is damaged ({type(exc).__name__}: {exc})") from exc
    else:  # the initial weights, so that a run stopped before its first epoch ends can resume
        model.optimizer, model.history = optimizer, History()
        checkpoint.write(0, {}, model)
    run = run_record(out, args, settings, metadata, device, started)
    frozen = model.count_params(trainable=False)
    print(f"xpnn {__version__}: training {settings['model']} ({model.count_params():,} parameters"
          f"{f', {frozen:,} frozen' if frozen else ''}) on {device.name}"
          f"{f' ({note})' if note else ''}", flush=True)
    print(f"data: {data.source}: {len(x_train):,} train / {metadata['data']['validation']:,} validation / "
          f"{len(x_test):,} test images, {'x'.join(map(str, x_train.shape[1:]))}, {len(data.classes)} classes",
          flush=True)
    print(_memory_line(model, x_train.shape[1:], settings["batch_size"], optimizer, device), flush=True)
    resuming = f" (resuming after epoch {initial_epoch})" if initial_epoch else ""
    print(f"{settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''}{resuming}, "
          f"batch {settings['batch_size']}, {settings['optimizer']} lr {settings['lr']:g}, seed {settings['seed']}"
          f"{', augmented' if settings['augment'] else ''}{f', {recipe(settings)}' if recipe(settings) else ''}; "
          f"output in {out}", flush=True)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # fit reports a NaN/inf loss itself
            model.fit(x_train, y_train, optimizer=optimizer, epochs=settings["epochs"],
                      batch_size=settings["batch_size"], seed=settings["seed"], validation_data=validation,
                      callbacks=[cb for cb in (plateau, checkpoint) if cb is not None], verbose=2 if args.quiet else 1,
                      scale=SCALE, transform=train_transform(settings, data), initial_epoch=initial_epoch,
                      sample_weight=sample_weight)
        return _report_test(model, data, x_test, y_test, settings, metadata, out, run, started,
                            checkpoint.saved_epoch)
    except KeyboardInterrupt:
        return _interrupted(model, metadata, out, run, started, checkpoint.saved_epoch, settings["epochs"])
    except TrainingDivergedError as exc:
        return _diverged(exc, out, model.history, run, started, checkpoint.saved_epoch)
    except OutOfMemoryError as exc:
        return _diverged(exc, out, model.history, run, started, checkpoint.saved_epoch, "out of memory")


def _interrupted(model: Any, metadata: dict[str, Any], out: Path, run: dict[str, Any], started: float, done: int,
                 epochs: int) -> int:
    """End a run stopped by Ctrl-C, in an epoch or in the test pass after the last one: the
    weights go to model.npz (marked interrupted), run.json says "interrupted", exit code 130."""
    if "test" in run:  # the test pass was over and model.npz written: only the reports were cut short
        saved = f"{out / MODEL_FILE} holds the tested weights"
    else:
        try:
            save(model, out / MODEL_FILE, metadata={**metadata, "epoch": done, "interrupted": True})
            saved = f"saved the {'trained' if done >= epochs else 'current'} weights to {out / MODEL_FILE}"
        except ValueError:  # the weights are not finite: nothing is saved from them
            saved = "the current weights are not finite and were not saved"
    finish_run(out, model.history, run, "interrupted", started)
    if done >= epochs:
        where = f"while testing after epoch {done}; {saved}. `xpnn train --resume {out}` runs the test"
    else:
        where = (f"in epoch {done + 1}; {saved}. {out / CHECKPOINT_FILE} holds the {_checkpoint_point(done)}: "
                 f"continue with `xpnn train --resume {out}`")
    print(f"\nxpnn: interrupted {where}", file=sys.stderr, flush=True)
    return 130


def _diverged(exc: Exception, out: Path, history: History, run: dict[str, Any], started: float,
              saved_epoch: int, status: str = "diverged") -> int:
    """End a run whose loss or weights became NaN/inf (or that ran out of memory: ``status``):
    run.json says so, the last checkpoint stays, exit code 1."""
    finish_run(out, history, run, status, started)
    print(f"xpnn: error: {one_line(exc)} The last good checkpoint, {out / CHECKPOINT_FILE} "
          f"({_checkpoint_point(saved_epoch)}), is kept.", file=sys.stderr, flush=True)
    return 1


def _memory_line(model: Any, sample_shape: tuple[int, ...], batch_size: int, optimizer: Any, device: Any) -> str:
    """The training memory estimate of a step (xpnn.layers.memory_estimate) beside the device's free memory."""
    estimate = memory_estimate(model, batch_size, sample_shape, optimizer)
    info = backend.memory_info(device)
    free = f"; {device.name} has {info[0] / 2 ** 20:,.0f} MiB of {info[1] / 2 ** 20:,.0f} MiB free" if info else ""
    return f"memory: {estimate.describe()}{free}"


def _checkpoint_point(epoch: int) -> str:
    return f"end of epoch {epoch}" if epoch else "initial weights"


def _report_test(model: Any, data: Dataset, x_test: np.ndarray, y_test: np.ndarray, settings: dict[str, Any],
                 metadata: dict[str, Any], out: Path, run: dict[str, Any], started: float, saved_epoch: int) -> int:
    probs = model_scores(model, x_test, max(settings["batch_size"], 256))
    with np.errstate(invalid="ignore"):
        loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y_test)), y_test], 1e-300))))
    if not (math.isfinite(loss) and np.isfinite(probs).all()):
        exc = TrainingDivergedError(f"the model's outputs on the test images are NaN/inf (test loss {loss}); "
                                    f"no {MODEL_FILE} is written from these weights.")
        return _diverged(exc, out, model.history, run, started, saved_epoch)
    cm = metrics.confusion_matrix(y_test, probs.argmax(axis=1), len(data.classes))
    accuracy = metrics.accuracy(cm)
    test = {"accuracy": accuracy, "loss": loss, "images": len(y_test)}
    save(model, out / MODEL_FILE, metadata={**metadata, "epoch": model.history.epochs[-1], "test": test})
    run["test"] = test
    finish_run(out, model.history, run, "completed", started)
    write_confusion(cm, data.classes, out, f"test confusion matrix ({len(y_test)} images)")
    print(metrics.classification_report(cm, data.classes))
    print(f"wrote {out}: {MODEL_FILE}, {CHECKPOINT_FILE}, history.csv/json, loss.png, accuracy.png, "
          f"confusion_matrix.png/txt, run.json")
    print(f"test accuracy: {accuracy:.4f} ({len(y_test)} images)  test loss: {loss:.4f}  "
          f"time: {time.time() - started:.1f} s", flush=True)
    return 0
