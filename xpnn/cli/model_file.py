"""The model file a command reads: the path checked, the metadata ``xpnn train`` writes checked
field by field (a file is untrusted input), and what the model takes: image size and color,
classes, and whether a data set fits it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files import json_text
from ..io import load
from .dataset import SCALE, Dataset
from .errors import CLIError
from .settings import SETTING_CHECKS, is_int, is_number


def check_metadata(path: "str | Path", model: Any, checkpoint: bool = False) -> dict[str, Any]:
    """The metadata ``xpnn train`` writes, checked field by field (a file is untrusted input);
    ``checkpoint=True`` also requires what resuming needs. Returns it; raises CLIError naming the file."""
    meta = model.metadata

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CLIError(f"{path}: the model file's metadata is damaged: {what}")

    need(isinstance(meta, dict), "it is not an object")
    if "input" in meta:
        spec = meta["input"]
        need(isinstance(spec, dict) and isinstance(spec.get("size"), list) and len(spec["size"]) == 2
             and all(is_int(n, 1) for n in spec["size"]) and spec.get("color") in ("rgb", "gray"),
             f"input must give size [height, width] and color 'rgb' or 'gray', got {_shown(spec)}")
        from ..data.images import image_size
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
        classes = meta["classes"]
        need(isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(classes) >= 2,
             "classes must be a list of at least two names")
        if model.input_shape:
            outputs = model.output_shapes()[-1][-1]
            need(len(classes) == (2 if outputs == 1 else outputs),
                 f"{len(classes)} class names for a model with {outputs} output{'s' if outputs != 1 else ''}")
    for key, kind, what in (("settings", dict, "an object"), ("data", dict, "an object"), ("test", dict, "an object"),
                            ("versions", dict, "an object"), ("history", dict, "an object"),
                            ("rng_state", dict, "an object"), ("interrupted", bool, "true or false"),
                            ("model", str, "a string")):
        need(key not in meta or isinstance(meta[key], kind), f"{key} must be {what}")
    need("epoch" not in meta or is_int(meta["epoch"]), "epoch must be a non-negative integer")
    need("settings" not in meta or "data" in meta, "settings come without the data they were used on")
    if "data" in meta:
        data = meta["data"]
        need(all(is_int(data.get(k)) for k in ("train", "validation", "test")) and isinstance(data.get("source"), str),
             "data must give its source and image counts")
    if "test" in meta:
        need(is_number(meta["test"].get("accuracy")) and is_int(meta["test"].get("images")),
             "test must give an accuracy and an image count")
    if checkpoint:
        for key in ("epoch", "rng_state", "settings", "history"):
            need(key in meta, f"{key} is missing, so the run cannot be resumed")
        for key, (what, ok) in SETTING_CHECKS.items():
            need(key in meta["settings"] and ok(meta["settings"][key]), f"settings.{key} must be {what}")
    elif "settings" in meta:
        settings = meta["settings"]
        need(all(ok(settings[key]) for key, (_, ok) in SETTING_CHECKS.items() if key in settings),
             "settings hold values of the wrong type")
    return meta


def _shown(value: Any) -> str:
    """``value`` for an error message: its JSON, or what it is when it has none (an array)."""
    try:
        return json_text(value, None)[:80]
    except (TypeError, ValueError):
        return f"a {type(value).__name__}"


def input_spec(model: Any) -> dict[str, Any]:
    """How images must be loaded for ``model``: from its metadata, else guessed from its input shape."""
    meta = model.metadata
    if "input" in meta:
        return meta["input"]
    if not model.input_shape or len(model.input_shape) != 3:
        raise CLIError("this model file does not say what images it takes (no input metadata and no (C, H, W) "
                       "input shape); it was not trained by `xpnn train`")
    c, h, w = model.input_shape
    return {"size": [h, w], "color": "gray" if c == 1 else "rgb", "channels": c, "scale": SCALE}


def class_names(model: Any) -> list[str]:
    meta = model.metadata
    if "classes" in meta:
        return list(meta["classes"])
    outputs = model.output_shapes()[-1][-1]
    return [str(i) for i in range(2 if outputs == 1 else outputs)]


def require_model_file(path: str) -> None:
    if Path(path).exists() and not Path(path).is_file():
        raise CLIError(f"model file {path} is not a regular file (a folder, a FIFO or a device)")
    if not Path(path).is_file():
        raise CLIError(f"model file {path} does not exist; pass the model.npz (or checkpoint.npz) that `xpnn train` "
                       f"wrote into its output folder")


def load_model(path: str, device: Any = None) -> Any:
    require_model_file(path)
    model = load(path, device)
    check_metadata(path, model)
    return model


def check_fits(model: Any, data: Dataset, x: np.ndarray) -> None:
    """The data's images and classes are the ones the model was trained on."""
    if model.input_shape and tuple(model.input_shape) != tuple(x.shape[1:]):
        raise CLIError(f"the model takes images of shape {tuple(model.input_shape)} but {data.source} gives "
                       f"{tuple(x.shape[1:])}: evaluate it on data like the data it was trained on")
    known = class_names(model)
    if list(data.classes) != known:
        raise CLIError(f"the model was trained on the classes {', '.join(known)} but {data.source} has "
                       f"{', '.join(data.classes)}")
