"""``xpnn info``: the architecture, optimizer state and training metadata of a model file."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..files import json_text
from ..io import load_checkpoint
from .errors import CLIError
from .model_file import check_metadata, require_model_file
from .settings import recipe


def cmd_info(args: argparse.Namespace) -> int:
    require_model_file(args.model)
    model, optimizer, _ = load_checkpoint(args.model, "cpu")
    meta = check_metadata(args.model, model)
    if args.json:
        print(json_text({"file": args.model, "architecture": model.config(), "parameters": model.count_params(),
                          "input_shape": model.input_shape, "loss": model.loss.describe() if model.loss else None,
                          "optimizer": None if optimizer is None else {"type": type(optimizer).__name__,
                                                                       "config": optimizer.config()},
                          "metadata": _described({k: v for k, v in meta.items() if k != "rng_state"})}, indent=1))
        return 0
    print(f"{args.model}")
    if model.input_shape:
        model.summary(batch_size=args.batch_size, optimizer=optimizer)
    else:
        print(model)
        if args.batch_size:
            raise CLIError(f"{args.model} does not record the shape of the model's input, so its training memory "
                           f"cannot be estimated")
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
              f"{f', {recipe(settings)}' if recipe(settings) else ''}"
              f"{' (interrupted)' if meta.get('interrupted') else ''}")
    if meta.get("test"):
        print(f"test accuracy: {meta['test']['accuracy']:.4f} on {meta['test']['images']} images")
    if meta.get("versions"):
        print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    return 0


def _described(tree: Any) -> Any:
    """``tree`` with each array (a checkpoint's EarlyStopping keeps the best weights) as its dtype and shape."""
    if isinstance(tree, dict):
        return {k: _described(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_described(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return f"array {tree.dtype} {tuple(tree.shape)}"
    return tree
