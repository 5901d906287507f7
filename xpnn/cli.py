"""The ``xpnn`` command: ``train``, ``evaluate``, ``predict``, ``devices``, ``info``, ``export``.

Exit codes: 0 success; 1 training diverged (NaN/inf loss); 2 an error the user can fix (a
missing path, unusable data, a model file that does not fit, a GPU that is not there), printed
as one ``xpnn: error: ...`` line (``--debug`` shows the traceback); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__, backend, metrics, zoo
from .data import datasets
from .errors import TrainingDivergedError
from .files import atomic_write, json_text, write_json
from .io import load, load_checkpoint, load_weights, save
from .train import Callback, History, predict

__all__ = ["main", "build_parser", "CLIError"]

SAMPLE = "fashion-mnist-sample"
NAMED_DATA = {SAMPLE: "the Fashion-MNIST sample shipped with xpnn", "fashion-mnist": "Fashion-MNIST",
              "mnist": "MNIST"}
MODEL_FILE, CHECKPOINT_FILE = "model.npz", "checkpoint.npz"
DEFAULT_IMAGE_SIZE = 64
IDX_SIZE = 28
SCALE = "unit"
#: training settings: the defaults, and (all but epochs) what a resumed run must keep
DEFAULTS: dict[str, Any] = {"data": SAMPLE, "model": "cnn", "image_size": None, "color": None, "epochs": 3,
                            "batch_size": 64, "optimizer": "adam", "lr": None, "seed": 0, "augment": False,
                            "val_split": 0.1, "limit": None, "init_from": None, "freeze": False}


Split = tuple[np.ndarray, np.ndarray]


class CLIError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with 2."""


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Host arrays (uint8 NCHW images, int64 labels) and how the images were made."""

    train: Split
    test: Split
    classes: list[str]
    color: str
    size: tuple[int, int]
    source: str


def _data_spec(spec: str) -> str:
    """A data set name as is; a path made absolute (so a resumed run finds it from anywhere)."""
    if spec in NAMED_DATA:
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise CLIError(f"--data {spec}: no such file or folder. Pass an image folder (root/<class>/<image>), a folder "
                       f"of MNIST-format IDX files, or one of: {', '.join(NAMED_DATA)}")
    if not path.is_dir():
        raise CLIError(f"--data {spec} is a file; pass a folder: an image folder (root/<class>/<image>) or a folder "
                       f"of MNIST-format IDX files")
    return str(path.resolve())


def _is_idx_folder(path: Path) -> bool:
    folders = [path, *(p for p in path.iterdir() if p.is_dir())]
    return any(f.name.endswith(("-ubyte", "-ubyte.gz")) for folder in folders for f in folder.iterdir())


def _check_idx_options(spec: str, size: int | None, color: str | None) -> None:
    if size not in (None, IDX_SIZE):
        raise CLIError(f"--image-size {size}: {spec} holds {IDX_SIZE}x{IDX_SIZE} images; leave --image-size out")
    if color not in (None, "gray"):
        raise CLIError(f"--color {color}: {spec} holds gray images; leave --color out")


def _image_folder(path: Path, size: int, color: str, classes: Sequence[str] | None) -> Any:
    from .data.images import ImageFolder
    folder = ImageFolder(path, size=size, color=color, classes=classes)
    if len(folder.classes) < 2:
        raise CLIError(f"{path} has one class folder ({folder.classes[0]!r}); a classifier needs at least two: put "
                       f"each class's images in its own subfolder, e.g. {path}/cat and {path}/dog")
    return folder


def load_data(spec: str, image_size: int | None = None, color: str | None = None, seed: int = 0,
              classes: Sequence[str] | None = None, split: bool = True) -> Dataset:
    """The data set ``spec`` names (see ``xpnn train --help``), split into train and test parts.

    An image folder with ``train/`` and ``test/`` subfolders uses them; any other image folder
    is split 80/20 (stratified, seeded), or with ``split=False`` is all test data. ``classes``
    fixes the class order of an image folder (a trained model's classes).
    """
    if spec in NAMED_DATA or _is_idx_folder(Path(spec)):
        _check_idx_options(spec, image_size, color)
        if spec == SAMPLE:
            parts, names = datasets.fashion_mnist_sample(), datasets.FASHION_MNIST_CLASSES
        elif spec == "fashion-mnist" or (spec not in NAMED_DATA and "fashion" in Path(spec).name.lower()):
            parts, names = datasets.fashion_mnist(None if spec in NAMED_DATA else spec), datasets.FASHION_MNIST_CLASSES
        else:
            parts, names = datasets.mnist(None if spec in NAMED_DATA else spec), datasets.MNIST_CLASSES
        size = tuple(int(n) for n in parts[0][0].shape[2:])
        return Dataset(parts[0], parts[1], list(names), "gray", size, NAMED_DATA.get(spec, spec))
    root = Path(spec)
    size, color = image_size or DEFAULT_IMAGE_SIZE, color or "rgb"
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _image_folder(root / "train", size, color, classes)
        test = _image_folder(root / "test", size, color, train.classes)
        parts = ((train.x, train.y), (test.x, test.y))
    else:
        folder = _image_folder(root, size, color, classes)
        train = folder
        if split:
            from .data.split import train_test_split
            parts = train_test_split(folder.x, folder.y, test_size=0.2, seed=seed)
        else:
            parts = ((folder.x[:0], folder.y[:0]), (folder.x, folder.y))
    return Dataset(parts[0], parts[1], list(train.classes), color, (size, size), f"image folder {spec}")


# --------------------------------------------------------------------------- small helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, backend.DeviceError):
        text += " On the command line: --device cpu, or --device auto to use a GPU only when there is one."
    return text or type(exc).__name__


def _select_device(spec: str | None) -> tuple[backend.Device, str]:
    """Activate ``spec`` (default: $XPNN_DEVICE, else "auto"); returns it and why auto chose the CPU."""
    spec = spec or os.environ.get("XPNN_DEVICE") or "auto"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = backend.set_device(spec)
    note = ""
    if spec.strip().lower() == "auto":
        note = "auto: " + ("no GPU found" if caught else "GPU found")
    return device, note


def _versions() -> dict[str, str]:
    out = {"xpnn": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for name, module in (("array-api-compat", "array_api_compat"), ("cupy", "cupy")):
        if importlib.util.find_spec(module) is not None:
            try:
                out[name] = importlib.metadata.version(name if name != "cupy" else _cupy_distribution())
            except importlib.metadata.PackageNotFoundError:
                out[name] = getattr(importlib.import_module(module), "__version__", "unknown")
    return out


def _cupy_distribution() -> str:
    names = [d.metadata["Name"] for d in importlib.metadata.distributions()
             if (d.metadata["Name"] or "").lower().startswith("cupy")]
    return names[0] if names else "cupy"


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what each training setting must be when read back from a checkpoint
_SETTING_CHECKS: dict[str, tuple[str, Any]] = {
    "data": ("a data set name or folder", lambda v: isinstance(v, str) and v != ""),
    "model": (f"one of {', '.join(zoo.MODELS)}", lambda v: v in zoo.MODELS),
    "image_size": ("null or a positive integer", lambda v: v is None or _is_int(v, 1)),
    "color": ("null, 'rgb' or 'gray'", lambda v: v in (None, "rgb", "gray")),
    "epochs": ("a positive integer", lambda v: _is_int(v, 1)),
    "batch_size": ("a positive integer", lambda v: _is_int(v, 1)),
    "optimizer": ("an optimizer name", lambda v: v in ("sgd", "momentum", "adam", "adamw", "rmsprop")),
    "lr": ("null or a positive number", lambda v: v is None or (_is_number(v) and 0 < v < math.inf)),
    "seed": ("an integer", lambda v: _is_int(v, -2**63)),
    "augment": ("true or false", lambda v: isinstance(v, bool)),
    "val_split": ("a fraction in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "limit": ("null or a positive integer", lambda v: v is None or _is_int(v, 1)),
}


def _check_metadata(path: "str | Path", model: Any, checkpoint: bool = False) -> dict[str, Any]:
    """The metadata ``xpnn train`` writes, checked field by field (a file is untrusted input);
    ``checkpoint=True`` also requires what resuming needs. Returns it; raises CLIError naming the file."""
    meta = getattr(model, "metadata", None) or {}

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CLIError(f"{path}: the model file's metadata is damaged: {what}")

    need(isinstance(meta, dict), "it is not an object")
    if "input" in meta:
        spec = meta["input"]
        need(isinstance(spec, dict) and isinstance(spec.get("size"), list) and len(spec["size"]) == 2
             and all(_is_int(n, 1) for n in spec["size"]) and spec.get("color") in ("rgb", "gray"),
             f"input must give size [height, width] and color 'rgb' or 'gray', got {json_text(spec, None)[:80]}")
        from .data.images import image_size
        try:
            image_size(spec["size"])
        except ValueError as exc:
            need(False, f"input: {exc}")
        channels = 3 if spec["color"] == "rgb" else 1
        expected = (channels, *spec["size"])
        need(model.input_shape is None or tuple(model.input_shape) == expected,
             f"input says {spec['color']} {spec['size'][0]}x{spec['size'][1]} images, the model takes "
             f"{tuple(model.input_shape or ())}")
    if "classes" in meta:
        need(isinstance(meta["classes"], list) and all(isinstance(c, str) for c in meta["classes"])
             and len(meta["classes"]) >= 2, "classes must be a list of at least two names")
    for key, kind, what in (("settings", dict, "an object"), ("data", dict, "an object"), ("test", dict, "an object"),
                            ("versions", dict, "an object"), ("history", dict, "an object"),
                            ("rng_state", dict, "an object"), ("interrupted", bool, "true or false"),
                            ("model", str, "a string")):
        need(key not in meta or isinstance(meta[key], kind), f"{key} must be {what}")
    need("epoch" not in meta or _is_int(meta["epoch"]), "epoch must be a non-negative integer")
    need("settings" not in meta or "data" in meta, "settings come without the data they were used on")
    if "data" in meta:
        data = meta["data"]
        need(all(_is_int(data.get(k)) for k in ("train", "validation", "test")) and isinstance(data.get("source"), str),
             "data must give its source and image counts")
    if "test" in meta:
        need(_is_number(meta["test"].get("accuracy")) and _is_int(meta["test"].get("images")),
             "test must give an accuracy and an image count")
    if checkpoint:
        for key in ("epoch", "rng_state", "settings", "history"):
            need(key in meta, f"{key} is missing, so the run cannot be resumed")
        for key, (what, ok) in _SETTING_CHECKS.items():
            need(key in meta["settings"] and ok(meta["settings"][key]), f"settings.{key} must be {what}")
    elif "settings" in meta:
        settings = meta["settings"]
        need(all(ok(settings[key]) for key, (_, ok) in _SETTING_CHECKS.items() if key in settings),
             "settings hold values of the wrong type")
    return meta


def _input_spec(model: Any) -> dict[str, Any]:
    """How images must be loaded for ``model``: from its metadata, else guessed from its input shape."""
    meta = getattr(model, "metadata", None) or {}
    if "input" in meta:
        return meta["input"]
    if not model.input_shape or len(model.input_shape) != 3:
        raise CLIError("this model file does not say what images it takes (no input metadata and no (C, H, W) "
                       "input shape); it was not trained by `xpnn train`")
    c, h, w = model.input_shape
    return {"size": [h, w], "color": "gray" if c == 1 else "rgb", "channels": c, "scale": SCALE}


def _classes(model: Any) -> list[str]:
    meta = getattr(model, "metadata", None) or {}
    if "classes" in meta:
        return list(meta["classes"])
    outputs = model.output_shapes()[-1][-1]
    return [str(i) for i in range(2 if outputs == 1 else outputs)]


def _require_model_file(path: str) -> None:
    if Path(path).exists() and not Path(path).is_file():
        raise CLIError(f"model file {path} is not a regular file (a folder, a FIFO or a device)")
    if not Path(path).is_file():
        raise CLIError(f"model file {path} does not exist; pass the model.npz (or checkpoint.npz) that `xpnn train` "
                       f"wrote into its output folder")


def _load_model(path: str, device: Any = None) -> Any:
    _require_model_file(path)
    model = load(path, device)
    _check_metadata(path, model)
    return model


def _scores(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    return metrics.probabilities(predict(model, x, batch_size=batch_size, scale=SCALE))


def _check_fits(model: Any, data: Dataset, x: np.ndarray) -> None:
    """The data's images and classes are the ones the model was trained on."""
    if model.input_shape and tuple(model.input_shape) != tuple(x.shape[1:]):
        raise CLIError(f"the model takes images of shape {tuple(model.input_shape)} but {data.source} gives "
                       f"{tuple(x.shape[1:])}: evaluate it on data like the data it was trained on")
    known = _classes(model)
    if list(data.classes) != known:
        raise CLIError(f"the model was trained on the classes {', '.join(known)} but {data.source} has "
                       f"{', '.join(data.classes)}")


# --------------------------------------------------------------------------- train


class _Checkpoint(Callback):
    """After every epoch: model, optimizer state, host RNG state, epoch and history, atomically."""

    def __init__(self, path: Path, optimizer: Any, metadata: dict[str, Any], out: Path) -> None:
        self.path, self.optimizer, self.metadata, self.out = path, optimizer, metadata, out
        self.saved_epoch = int(metadata.get("epoch", 0))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        save(self.model, self.path, optimizer=self.optimizer,
             metadata={**self.metadata, "epoch": epoch + 1, "history": self.model.history.to_dict(),
                       "rng_state": backend.rng_state()})
        self.saved_epoch = epoch + 1
        _write_history(self.model.history, self.out)


def _write_history(history: History, out: Path) -> None:
    history.to_csv(str(out / "history.csv"))
    history.to_json(str(out / "history.json"))


def _plot_history(history: History, out: Path) -> None:
    if not len(history):
        return
    _report("loss.png", lambda: history.plot(str(out / "loss.png"), "loss", title="loss (cross-entropy)"))
    if "accuracy" in history.history:
        _report("accuracy.png", lambda: history.plot(str(out / "accuracy.png"), "accuracy", title="accuracy"))


def _report(what: str, write: Any) -> None:
    """Draw or write one report file; a failure is a warning, never the loss of a finished run."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - plots and reports must not lose the run they describe
        warnings.warn(f"could not write {what}: {type(exc).__name__}: {exc}")


def _settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the checkpoint's when resuming (only --epochs may change), else args + defaults."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if "data" in given:
        given["data"] = _data_spec(given["data"])
    if saved is None:
        return {**DEFAULTS, **given}
    for key, value in given.items():
        if key != "epochs" and key in saved and value != saved[key]:
            raise CLIError(f"--{key.replace('_', '-')} {value} differs from the run being resumed ({saved[key]}); a "
                           f"resumed run keeps its settings (only --epochs may change): leave it out, or start a "
                           f"new run with --out")
    return {**saved, **({"epochs": given["epochs"]} if "epochs" in given else {})}


def _transform(settings: dict[str, Any], data: Dataset) -> Any:
    if not settings["augment"]:
        return None
    from .data.transforms import ColorJitter, Compose, RandomCrop, RandomHorizontalFlip
    size = data.size
    steps: list[Any] = [RandomHorizontalFlip(), RandomCrop(size, padding=max(1, size[0] // 8))]
    if data.color == "rgb":
        steps.append(ColorJitter(brightness=0.2, contrast=0.2))
    return Compose(steps)


def _new_out_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = Path("runs") / stamp, 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{stamp}-{n}"
    return out


def _output_folder(args: argparse.Namespace) -> Path:
    """The run folder: the one resumed (which must hold a checkpoint), --out, or a new runs/<time>."""
    if args.resume:
        resume = Path(args.resume)
        if args.out and Path(args.out).resolve() != resume.resolve():
            raise CLIError("--out and --resume name different folders; a resumed run writes into the folder it resumes")
        if not (resume / CHECKPOINT_FILE).is_file():
            raise CLIError(f"--resume {resume}: there is no {CHECKPOINT_FILE} in that folder; pass the output folder "
                           f"of an earlier `xpnn train` run")
        return resume
    out = Path(args.out) if args.out else _new_out_dir()
    if (out / CHECKPOINT_FILE).exists():
        raise CLIError(f"--out {out} already holds a run; continue it with `xpnn train --resume {out}`, or choose "
                       f"another --out")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; pass a new or empty folder")
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CLIError(f"--out {out} is not empty and holds no xpnn run (it has {shown}); a run never writes over "
                       f"files it did not make: pass a new or empty folder")
    return out


def _training_data(settings: dict[str, Any]) -> tuple[Dataset, Split, Split | None, Split]:
    """``(data, train, validation or None, test)``: the same arrays for the same settings, every time."""
    data = load_data(settings["data"], settings["image_size"], settings["color"], settings["seed"])
    (x_train, y_train), (x_test, y_test) = data.train, data.test
    if settings["limit"]:
        x_train, y_train = x_train[:settings["limit"]], y_train[:settings["limit"]]
        x_test, y_test = x_test[:settings["limit"]], y_test[:settings["limit"]]
    if not settings["val_split"]:
        return data, (x_train, y_train), None, (x_test, y_test)
    from .data.split import split_indices
    train_idx, val_idx = split_indices(y_train, test_size=settings["val_split"], seed=settings["seed"])
    return data, (x_train[train_idx], y_train[train_idx]), (x_train[val_idx], y_train[val_idx]), (x_test, y_test)


def _init_from(model: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Start ``model`` from every weight of ``--init-from`` whose path and shape match; with
    ``--freeze``, freeze each layer that was loaded whole. Prints and returns what it did."""
    source = settings["init_from"]
    if source is None:
        if settings["freeze"]:
            raise CLIError("--freeze needs --init-from MODEL.npz: it freezes the weights loaded from that file")
        return None
    _require_model_file(source)
    try:
        report = load_weights(source, model, strict=False)
    except ValueError as exc:
        raise CLIError(f"--init-from {source}: {_one_line(exc)}; it shares no layer (same path and shape) with "
                       f"the {settings['model']!r} model built for this data, so there is nothing to start from") from exc
    loaded = set(report.loaded)
    whole = [path for path, layer in model.walk() if not layer.children() and layer.state()
             and all((f"{path}.{name}" if path else name) in loaded for name in layer.state())]
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


def cmd_train(args: argparse.Namespace) -> int:
    started = time.time()
    out = _output_folder(args)
    device, note = _select_device(args.device)
    if args.resume:
        model, optimizer, _ = load_checkpoint(out / CHECKPOINT_FILE, device)
        meta = _check_metadata(out / CHECKPOINT_FILE, model, checkpoint=True)
        settings = _settings(args, meta.get("settings"))
        initial_epoch = int(meta["epoch"])
        if initial_epoch >= settings["epochs"]:
            raise CLIError(f"the run in {out} has already trained {initial_epoch} epoch(s); pass --epochs N with "
                           f"N > {initial_epoch} to train further")
    else:
        settings, initial_epoch = _settings(args, None), 0
    backend.seed(settings["seed"])
    data, (x_train, y_train), validation, (x_test, y_test) = _training_data(settings)
    if args.resume:
        _check_fits(model, data, x_train)
        try:
            backend.set_rng_state(meta["rng_state"])
            model.history = History.from_dict(meta["history"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CLIError(f"{out / CHECKPOINT_FILE}: the saved random-generator state or history is damaged "
                           f"({type(exc).__name__}: {exc})") from exc
    else:
        from .optim import get_optimizer
        model = zoo.build(settings["model"], x_train.shape[1:], len(data.classes))
        model.loss = zoo.loss_for(model)
        init = _init_from(model, settings)
        optimizer = get_optimizer(settings["optimizer"], **({} if settings["lr"] is None else {"lr": settings["lr"]}))
        settings["lr"] = optimizer.lr
        out.mkdir(parents=True, exist_ok=True)
    metadata = {"model": settings["model"], "classes": data.classes, "settings": settings,
                "input": {"size": list(data.size), "color": data.color, "channels": int(x_train.shape[1]),
                          "scale": SCALE},
                "data": {"source": data.source, "train": len(x_train),
                         "validation": 0 if validation is None else len(validation[0]), "test": len(x_test)},
                "versions": _versions(), "init_from": meta.get("init_from") if args.resume else init}
    checkpoint = _Checkpoint(out / CHECKPOINT_FILE, optimizer, {**metadata, "epoch": initial_epoch}, out)
    if not args.resume:
        checkpoint.model, model.history = model, History()
        checkpoint.on_epoch_end(-1, {})
    run = _run_record(out, args, settings, metadata, device, started)
    frozen = model.count_params(trainable=False)
    print(f"xpnn {__version__}: training {settings['model']} ({model.count_params():,} parameters"
          f"{f', {frozen:,} frozen' if frozen else ''}) on {device.name}"
          f"{f' ({note})' if note else ''}", flush=True)
    print(f"data: {data.source}: {len(x_train):,} train / {metadata['data']['validation']:,} validation / "
          f"{len(x_test):,} test images, {'x'.join(map(str, x_train.shape[1:]))}, {len(data.classes)} classes",
          flush=True)
    resuming = f" (resuming after epoch {initial_epoch})" if initial_epoch else ""
    print(f"{settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''}{resuming}, "
          f"batch {settings['batch_size']}, {settings['optimizer']} lr {settings['lr']:g}, seed {settings['seed']}"
          f"{', augmented' if settings['augment'] else ''}; output in {out}", flush=True)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # fit reports a NaN/inf loss itself
            model.fit(x_train, y_train, optimizer=optimizer, epochs=settings["epochs"],
                      batch_size=settings["batch_size"], seed=settings["seed"], validation_data=validation,
                      callbacks=[checkpoint], verbose=2 if args.quiet else 1, scale=SCALE,
                      transform=_transform(settings, data), initial_epoch=initial_epoch)
    except KeyboardInterrupt:
        done = checkpoint.saved_epoch
        try:
            save(model, out / MODEL_FILE, metadata={**metadata, "epoch": done, "interrupted": True})
            saved = f"saved the current weights to {out / MODEL_FILE}"
        except ValueError:  # the weights are not finite: nothing is saved from them
            saved = "the current weights are not finite and were not saved"
        _finish(out, model.history, run, "interrupted", started)
        print(f"\nxpnn: interrupted in epoch {done + 1}; {saved}. "
              f"{out / CHECKPOINT_FILE} holds the {_checkpoint_point(done)}: continue with "
              f"`xpnn train --resume {out}`", file=sys.stderr, flush=True)
        return 130
    except TrainingDivergedError as exc:
        return _diverged(exc, out, model.history, run, started, checkpoint.saved_epoch)
    return _report_test(model, data, x_test, y_test, settings, metadata, out, run, started, checkpoint.saved_epoch)


def _diverged(exc: Exception, out: Path, history: History, run: dict[str, Any], started: float,
              saved_epoch: int) -> int:
    """End a run whose loss or weights became NaN/inf: run.json says "diverged", exit code 1."""
    _finish(out, history, run, "diverged", started)
    print(f"xpnn: error: {_one_line(exc)} The last good checkpoint, {out / CHECKPOINT_FILE} "
          f"({_checkpoint_point(saved_epoch)}), is kept.", file=sys.stderr, flush=True)
    return 1


def _checkpoint_point(epoch: int) -> str:
    return f"end of epoch {epoch}" if epoch else "initial weights"


def _report_test(model: Any, data: Dataset, x_test: np.ndarray, y_test: np.ndarray, settings: dict[str, Any],
                 metadata: dict[str, Any], out: Path, run: dict[str, Any], started: float, saved_epoch: int) -> int:
    probs = _scores(model, x_test, max(settings["batch_size"], 256))
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
    _finish(out, model.history, run, "completed", started)
    _write_confusion(cm, data.classes, out, f"test confusion matrix ({len(y_test)} images)")
    print(metrics.classification_report(cm, data.classes))
    print(f"wrote {out}: {MODEL_FILE}, {CHECKPOINT_FILE}, history.csv/json, loss.png, accuracy.png, "
          f"confusion_matrix.png/txt, run.json")
    print(f"test accuracy: {accuracy:.4f} ({len(y_test)} images)  test loss: {loss:.4f}  "
          f"time: {time.time() - started:.1f} s", flush=True)
    return 0


def _write_confusion(cm: np.ndarray, classes: Sequence[str], out: Path, title: str) -> None:
    def write_text() -> None:
        text = f"{metrics.format_confusion_matrix(cm, classes)}\n\n{metrics.classification_report(cm, classes)}\n"
        with atomic_write(out / "confusion_matrix.txt", "w") as f:
            f.write(text)

    _report("confusion_matrix.txt", write_text)
    _report("confusion_matrix.png",
            lambda: metrics.plot_confusion_matrix(cm, str(out / "confusion_matrix.png"), classes, title=title))


def _run_record(out: Path, args: argparse.Namespace, settings: dict[str, Any], metadata: dict[str, Any],
                device: backend.Device, started: float) -> dict[str, Any]:
    path = out / "run.json"
    previous: Any = {}
    if args.resume and path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (ValueError, RecursionError) as exc:
            raise CLIError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}); move it aside "
                           f"to resume (a new one is written)") from exc
        if not isinstance(previous, dict) or not isinstance(previous.get("commands", []), list):
            raise CLIError(f"{path} is not a run record (expected an object with a list of commands); move it "
                           f"aside to resume (a new one is written)")
    command = shlex.join(["xpnn", *args.argv])
    return {"command": command, "commands": [*previous.get("commands", []), command], "argv": sys.argv,
            "cwd": os.getcwd(), "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "device": device.name, "versions": metadata["versions"], "settings": settings,
            "model": {"name": settings["model"], "file": MODEL_FILE, "checkpoint": CHECKPOINT_FILE},
            "init_from": metadata.get("init_from"),
            "data": {**metadata["data"], "classes": metadata["classes"], "input": metadata["input"]}}


def _finish(out: Path, history: History, run: dict[str, Any], status: str, started: float) -> None:
    """History and run.json first (the record of the run), then the plots (which may fail alone)."""
    _write_history(history, out)
    run.update(status=status, epochs_completed=history.epochs[-1] if len(history) else 0,
               finished=datetime.now().isoformat(timespec="seconds"), seconds=round(time.time() - started, 2))
    write_json(out / "run.json", run)
    _plot_history(history, out)


# --------------------------------------------------------------------------- evaluate / predict / info / devices


def cmd_evaluate(args: argparse.Namespace) -> int:
    device, _ = _select_device(args.device)
    model = _load_model(args.model, device)
    meta = model.metadata or {}
    trained_on = (meta.get("settings") or {}).get("data")
    if args.data is None and trained_on is None:
        raise CLIError("pass --data: this model file does not say what data it was trained on")
    spec = _data_spec(args.data) if args.data is not None else trained_on
    spec_input = _input_spec(model)
    named = spec in NAMED_DATA or _is_idx_folder(Path(spec))
    data = load_data(spec, None if named else spec_input["size"][0], None if named else spec_input["color"],
                     (meta.get("settings") or {}).get("seed", 0), classes=None if named else _classes(model),
                     split=spec == trained_on)
    x, y = data.test
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    _check_fits(model, data, x)
    probs = _scores(model, x, args.batch_size)
    cm = metrics.confusion_matrix(y, probs.argmax(axis=1), len(data.classes))
    precision, recall, support = metrics.precision_recall(cm)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_confusion(cm, data.classes, out, f"confusion matrix ({len(y)} images)")
    if args.json:
        print(json_text({"model": args.model, "data": data.source, "images": len(y), "accuracy": metrics.accuracy(cm),
                          "classes": data.classes, "precision": precision.tolist(), "recall": recall.tolist(),
                          "support": support.tolist(), "confusion_matrix": cm.tolist()}, indent=1))
        return 0
    print(f"{args.model} on {data.source} ({len(y)} images)")
    print(metrics.format_confusion_matrix(cm, data.classes))
    print()
    print(metrics.classification_report(cm, data.classes))
    print(f"accuracy: {metrics.accuracy(cm):.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.images import load_image
    device, _ = _select_device(args.device)
    model = _load_model(args.model, device)
    spec, classes = _input_spec(model), _classes(model)
    for image in args.images:
        if not Path(image).exists():
            raise CLIError(f"image {image} does not exist")
        if not Path(image).is_file():
            raise CLIError(f"image {image} is not a regular file (a folder, a FIFO or a device)")
    x = np.stack([load_image(image, size=tuple(spec["size"]), color=spec["color"]) for image in args.images])
    probs = _scores(model, x, args.batch_size)
    k = min(args.top_k, len(classes))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = [{"image": image, "predictions": [{"class": classes[j], "index": int(j), "probability": float(p[j])}
                                                for j in row]}
               for image, p, row in zip(args.images, probs, top)]
    if args.json:
        print(json_text(results, indent=1))
        return 0
    width = max(len(image) for image in args.images)
    for result in results:
        guesses = "  ".join(f"{g['class']} {g['probability']:.3f}" for g in result["predictions"])
        print(f"{result['image']:<{width}}  {guesses}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    _require_model_file(args.model)
    model, optimizer, _ = load_checkpoint(args.model, "cpu")
    meta = _check_metadata(args.model, model)
    if args.json:
        print(json_text({"file": args.model, "architecture": model.config(), "parameters": model.count_params(),
                          "input_shape": model.input_shape, "loss": model.loss.describe() if model.loss else None,
                          "optimizer": None if optimizer is None else {"type": type(optimizer).__name__,
                                                                       "config": optimizer.config()},
                          "metadata": {k: v for k, v in meta.items() if k != "rng_state"}}, indent=1))
        return 0
    print(f"{args.model}")
    if model.input_shape:
        model.summary()
    else:
        print(model)
    print(f"loss: {model.loss.describe() if model.loss else 'not saved'}")
    if optimizer is not None:
        config = ", ".join(f"{k}={v}" for k, v in optimizer.config().items())
        print(f"optimizer state: {type(optimizer).__name__}({config}) (a checkpoint: `xpnn train --resume "
              f"{Path(args.model).parent}` continues it)")
    if meta.get("classes"):
        print(f"classes ({len(meta['classes'])}): {', '.join(meta['classes'])}")
    if meta.get("input"):
        spec = meta["input"]
        print(f"input: {spec['color']} images, {spec['size'][0]}x{spec['size'][1]}, scaled to [0, 1]")
    settings = meta.get("settings") or {}
    if settings:
        print(f"trained: {meta.get('epoch', '?')} of {settings.get('epochs')} epoch(s) on {meta['data']['source']} "
              f"({meta['data']['train']:,} train / {meta['data']['validation']:,} validation images), "
              f"{settings.get('optimizer')} lr {settings.get('lr')}, batch {settings.get('batch_size')}, "
              f"seed {settings.get('seed')}{', augmented' if settings.get('augment') else ''}"
              f"{' (interrupted)' if meta.get('interrupted') else ''}")
    if meta.get("test"):
        print(f"test accuracy: {meta['test']['accuracy']:.4f} on {meta['test']['images']} images")
    if meta.get("versions"):
        print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx
    _require_model_file(args.model)
    out = Path(args.onnx)
    if out.exists() and not args.force:
        raise CLIError(f"{out} exists; pass --force to replace it")
    model = load(args.model, "cpu")
    try:
        preprocessing = _input_spec(model)
    except CLIError:  # not an image model: the file says what it can
        preprocessing = None
    try:
        export_onnx(model, out, args.opset, classes=_classes(model), preprocessing=preprocessing)
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {out} ({out.stat().st_size:,} bytes, ONNX opset {args.opset})")
    return 0


def _gpus() -> list[dict[str, Any]]:
    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy
        found = []
        for i in range(int(cupy.cuda.runtime.getDeviceCount())):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            with cupy.cuda.Device(i):
                free, total = cupy.cuda.runtime.memGetInfo()
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            try:  # the availability check: an element-wise kernel and a matmul
                backend.resolve(f"gpu:{i}")
                usable = "ok"
            except backend.DeviceError as exc:
                usable = str(exc)
            found.append({"device": f"gpu:{i}", "name": name, "memory_total_gib": round(total / 2**30, 1),
                          "memory_free_gib": round(free / 2**30, 1), "usable": usable})
        return found
    except Exception:
        return []


def cmd_devices(args: argparse.Namespace) -> int:
    versions = _versions()
    gpus = _gpus()
    reason = ""
    try:
        backend.resolve("gpu:0")
        auto = "gpu:0"
    except backend.DeviceError as exc:
        auto, reason = "cpu", str(exc).split(". ")[0]
    if args.json:
        print(json_text({"versions": versions, "devices": backend.devices(), "gpus": gpus, "auto": auto,
                          "auto_reason": reason}, indent=1))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "cupy" not in versions:
        print(f"CuPy: not installed (for NVIDIA GPUs: {backend.GPU_INSTALL_HINT})")
    print("devices:")
    print("  cpu     NumPy")
    for gpu in gpus:
        print(f"  {gpu['device']:<7} {gpu['name']}, {gpu['memory_total_gib']} GiB ({gpu['memory_free_gib']} GiB free): "
              f"{'kernel and matmul ran' if gpu['usable'] == 'ok' else 'UNUSABLE: ' + gpu['usable']}")
    print(f"--device auto picks: {auto}" + (f" ({reason})" if reason else ""))
    return 0


# --------------------------------------------------------------------------- parser and main


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default=None,
                        help="cpu, gpu:N or auto (a GPU if there is one); default $XPNN_DEVICE, else auto")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="xpnn", description="Train, evaluate and run xpnn image classifiers.",
                                     epilog="Exit codes: 0 ok, 1 training diverged, 2 usage or input error, "
                                            "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"xpnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", parents=[common], help="train a network and write a run folder",
                           description="Train an image classifier. With no arguments: the 2-conv Fashion CNN on "
                                       "the Fashion-MNIST sample shipped with xpnn.")
    train.add_argument("--data", help=f"an image folder (root/<class>/<image>, optionally root/train and root/test), "
                                      f"a folder of MNIST-format IDX files, or {', '.join(NAMED_DATA)} "
                                      f"(default {SAMPLE})")
    train.add_argument("--model", choices=list(zoo.MODELS), help="network (default cnn)")
    train.add_argument("--image-size", type=_positive, metavar="SIZE", help=f"image folders: resize to SIZE x SIZE "
                                                      f"(default {DEFAULT_IMAGE_SIZE})")
    train.add_argument("--color", choices=["rgb", "gray"], help="image folders: color mode (default rgb)")
    train.add_argument("--epochs", type=_positive, metavar="N", help=f"total epochs (default {DEFAULTS['epochs']})")
    train.add_argument("--batch-size", type=_positive, metavar="N", help=f"default {DEFAULTS['batch_size']}")
    train.add_argument("--lr", type=float, help="learning rate (default: the optimizer's, 0.001 for adam)")
    train.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw", "rmsprop"],
                       help="default adam")
    train.add_argument("--seed", type=int, help="seed for weights, shuffling and splits (default 0)")
    train.add_argument("--augment", action="store_true", default=None,
                       help="random flips and crops (and brightness/contrast for color images)")
    train.add_argument("--val-split", type=_fraction, metavar="F",
                       help="fraction of the training images held out for validation curves (default 0.1; 0 for none)")
    train.add_argument("--limit", type=_positive, metavar="N",
                       help="use only the first N training and N test images (quick trials)")
    train.add_argument("--out", metavar="DIR", help="output folder (default runs/<date>-<time>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    train.add_argument("--init-from", metavar="MODEL.npz",
                       help="start from every weight of MODEL.npz whose path and shape match the new model (fine-tuning: "
                            "a new head for another number of classes stays freshly initialised)")
    train.add_argument("--freeze", action="store_true", default=None,
                       help="with --init-from: train only what was not loaded (the loaded layers stay frozen)")
    train.add_argument("--quiet", action="store_true", help="one log line per epoch instead of a progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", parents=[common], help="accuracy, precision/recall, confusion matrix",
                              description="Evaluate a model file on a data set (default: the test part of the data "
                                          "it was trained on).")
    evaluate.add_argument("model", help="a model.npz or checkpoint.npz")
    evaluate.add_argument("--data", help="as for train; an image folder without train/test subfolders is used whole")
    evaluate.add_argument("--batch-size", type=_positive, default=256)
    evaluate.add_argument("--limit", type=_positive, help="use only the first N images")
    evaluate.add_argument("--out", help="also write confusion_matrix.png/txt into this folder")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    pred = sub.add_parser("predict", parents=[common], help="classify image files",
                          description="Classify image files, loaded at the size and color the model was trained on.")
    pred.add_argument("model", help="a model.npz or checkpoint.npz")
    pred.add_argument("images", nargs="+", metavar="IMAGE")
    pred.add_argument("--top-k", type=_positive, default=1, help="show the K most likely classes (default 1)")
    pred.add_argument("--batch-size", type=_positive, default=256)
    pred.add_argument("--json", action="store_true", help="print JSON")
    pred.set_defaults(func=cmd_predict)

    devices = sub.add_parser("devices", parents=[common], help="array libraries, GPUs and what auto picks")
    devices.add_argument("--json", action="store_true", help="print JSON")
    devices.set_defaults(func=cmd_devices)

    info = sub.add_parser("info", parents=[common], help="architecture and training metadata of a model file")
    info.add_argument("model", help="a model.npz or checkpoint.npz")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", parents=[common], help="write a model file as ONNX (for onnxruntime and others)",
                            description="Export a model file's inference graph to ONNX, checked before it is written; "
                                        "classes and preprocessing go into its metadata. Needs: pip install "
                                        "\"xpnn[onnx]\".")
    export.add_argument("model", help="a model.npz or checkpoint.npz")
    export.add_argument("onnx", metavar="MODEL.onnx", help="the file to write")
    export.add_argument("--opset", type=_positive, default=17, metavar="N", help="ONNX opset (default 17)")
    export.add_argument("--force", action="store_true", help="replace MODEL.onnx if it exists")
    export.set_defaults(func=cmd_export)
    return parser


def _format_warning(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
    return f"xpnn: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xpnn`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(debug=False)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        warnings.formatwarning = _format_warning
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\nxpnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, OSError, backend.DeviceError) as exc:
        if args.debug:
            raise
        print(f"xpnn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
