"""Training settings: their defaults, what each must be when read back from a file, the
settings of a resumed run (the saved ones; only --epochs may change), and the one line that
describes the training recipe (schedule, warmup, weight decay, clipping ...)."""
from __future__ import annotations

import argparse
import math
from typing import Any

from .. import zoo
from ..optim import OPTIMIZERS
from ..precision import POLICIES
from .dataset import SAMPLE, data_spec
from .errors import CLIError


#: training settings: the defaults, and (all but epochs) what a resumed run must keep
DEFAULTS: dict[str, Any] = {"data": SAMPLE, "model": "cnn", "image_size": None, "color": None, "epochs": 3,
                            "batch_size": 64, "optimizer": "adam", "lr": None, "seed": 0, "augment": False,
                            "val_split": 0.1, "limit": None, "init_from": None, "freeze": False,
                            "schedule": "constant", "warmup_epochs": 0.0, "weight_decay": None, "clip_norm": None,
                            "label_smoothing": 0.0, "class_weight": None, "plateau": None, "precision": "float32"}

#: settings added after runs were first written: a checkpoint without them resumes with their defaults
LATER_SETTINGS = ("schedule", "warmup_epochs", "weight_decay", "clip_norm", "label_smoothing", "class_weight",
                  "plateau", "precision")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = POLICIES


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
    "optimizer": (f"one of {', '.join(OPTIMIZERS)}", lambda v: v in OPTIMIZERS),
    "lr": ("null or a positive number", lambda v: v is None or (is_number(v) and 0 < v < math.inf)),
    "seed": ("an integer", lambda v: is_int(v, -2**63)),
    "augment": ("true or false", lambda v: isinstance(v, bool)),
    "val_split": ("a fraction in [0, 1)", lambda v: is_number(v) and 0 <= v < 1),
    "limit": ("null or a positive integer", lambda v: v is None or is_int(v, 1)),
    "schedule": (f"one of {', '.join(SCHEDULES)}", lambda v: v in SCHEDULES),
    "warmup_epochs": ("a number >= 0", lambda v: is_number(v) and 0 <= v < math.inf),
    "weight_decay": ("null or a number >= 0", lambda v: v is None or (is_number(v) and 0 <= v < math.inf)),
    "clip_norm": ("null or a positive number", lambda v: v is None or (is_number(v) and 0 < v < math.inf)),
    "label_smoothing": ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1),
    "class_weight": ("null or 'balanced'", lambda v: v in (None, "balanced")),
    "plateau": ("null or a positive integer", lambda v: v is None or is_int(v, 1)),
    "precision": (f"one of {', '.join(PRECISIONS)}", lambda v: v in PRECISIONS),
}


def backfill_settings(meta: Any) -> None:
    """Give the saved settings of a checkpoint written before :data:`LATER_SETTINGS` existed their
    defaults, in place, so the run resumes as it was trained."""
    settings = meta.get("settings") if isinstance(meta, dict) else None
    if isinstance(settings, dict):
        for key in LATER_SETTINGS:
            settings.setdefault(key, DEFAULTS[key])


def recipe(settings: dict[str, Any]) -> str:
    """The training options that differ from the defaults, as one phrase ("" when none do)."""
    parts = []
    if settings.get("schedule", "constant") != "constant":
        parts.append(f"{settings['schedule']} schedule")
    if settings.get("warmup_epochs"):
        parts.append(f"warmup {settings['warmup_epochs']:g} epoch(s)")
    if settings.get("weight_decay") is not None:
        parts.append(f"weight decay {settings['weight_decay']:g}")
    if settings.get("clip_norm") is not None:
        parts.append(f"clip norm {settings['clip_norm']:g}")
    if settings.get("label_smoothing"):
        parts.append(f"label smoothing {settings['label_smoothing']:g}")
    if settings.get("class_weight"):
        parts.append(f"{settings['class_weight']} class weights")
    if settings.get("plateau") is not None:
        parts.append(f"lr x0.1 after {settings['plateau']} epoch(s) without improvement")
    if settings.get("precision", "float32") != "float32":
        parts.append(f"{settings['precision']} precision")
    return ", ".join(parts)


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the checkpoint's when resuming (only --epochs may change), else args + defaults."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if "data" in given:
        given["data"] = data_spec(given["data"])
    if saved is None:
        return {**DEFAULTS, **given}
    saved = {**{key: DEFAULTS[key] for key in LATER_SETTINGS}, **saved}
    for key, value in given.items():
        if key != "epochs" and key in saved and value != saved[key]:
            raise CLIError(f"--{key.replace('_', '-')} {value} differs from the run being resumed ({saved[key]}); a "
                           f"resumed run keeps its settings (only --epochs may change): leave it out, or start a "
                           f"new run with --out")
    return {**saved, **({"epochs": given["epochs"]} if "epochs" in given else {})}
