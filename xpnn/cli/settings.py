"""Training settings: their defaults, what each must be when read back from a file, and the
settings of a resumed run (the saved ones; only --epochs may change)."""
from __future__ import annotations

import argparse
import math
from typing import Any

from .. import zoo
from .dataset import SAMPLE, data_spec
from .errors import CLIError


#: training settings: the defaults, and (all but epochs) what a resumed run must keep
DEFAULTS: dict[str, Any] = {"data": SAMPLE, "model": "cnn", "image_size": None, "color": None, "epochs": 3,
                            "batch_size": 64, "optimizer": "adam", "lr": None, "seed": 0, "augment": False,
                            "val_split": 0.1, "limit": None, "init_from": None, "freeze": False}


def is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what each training setting must be when read back from a checkpoint
SETTING_CHECKS: dict[str, tuple[str, Any]] = {
    "data": ("a data set name or folder", lambda v: isinstance(v, str) and v != ""),
    "model": (f"one of {', '.join(zoo.MODELS)}", lambda v: v in zoo.MODELS),
    "image_size": ("null or a positive integer", lambda v: v is None or is_int(v, 1)),
    "color": ("null, 'rgb' or 'gray'", lambda v: v in (None, "rgb", "gray")),
    "epochs": ("a positive integer", lambda v: is_int(v, 1)),
    "batch_size": ("a positive integer", lambda v: is_int(v, 1)),
    "optimizer": ("an optimizer name", lambda v: v in ("sgd", "momentum", "adam", "adamw", "rmsprop")),
    "lr": ("null or a positive number", lambda v: v is None or (is_number(v) and 0 < v < math.inf)),
    "seed": ("an integer", lambda v: is_int(v, -2**63)),
    "augment": ("true or false", lambda v: isinstance(v, bool)),
    "val_split": ("a fraction in [0, 1)", lambda v: is_number(v) and 0 <= v < 1),
    "limit": ("null or a positive integer", lambda v: v is None or is_int(v, 1)),
}


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the checkpoint's when resuming (only --epochs may change), else args + defaults."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if "data" in given:
        given["data"] = data_spec(given["data"])
    if saved is None:
        return {**DEFAULTS, **given}
    for key, value in given.items():
        if key != "epochs" and key in saved and value != saved[key]:
            raise CLIError(f"--{key.replace('_', '-')} {value} differs from the run being resumed ({saved[key]}); a "
                           f"resumed run keeps its settings (only --epochs may change): leave it out, or start a "
                           f"new run with --out")
    return {**saved, **({"epochs": given["epochs"]} if "epochs" in given else {})}
