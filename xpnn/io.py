"""Save and load models: an ``.npz`` of host arrays plus a JSON header; never pickle.

The header (``__xpnn__``) holds the format version, the architecture (layer types and
constructor arguments), the loss, optional optimizer state and free metadata. Files are written
to a temporary file and renamed, so a crash never leaves half a model; loading uses
``allow_pickle=False``, so opening a file never runs code. Arrays are stored on the host, so a
model saved on a GPU loads on a CPU and the other way round.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, backend
from .errors import ModelFileError
from .files import atomic_write, json_text
from .losses import get_loss
from .model import Sequential

__all__ = ["save", "load", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "xpnn-model"
FORMAT_VERSION = 1
_HEADER = "__xpnn__"


def _split_arrays(tree: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-able copy of ``tree`` with every array moved into ``arrays`` (replaced by a reference)."""
    if isinstance(tree, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, (str, int, float, bool)) or tree is None:
        return tree
    arrays[prefix] = np.asarray(backend.to_numpy(tree))
    return {"__array__": prefix}


def _join_arrays(tree: Any, arrays: Any) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return np.array(arrays[tree["__array__"]])
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def _refuse_nonfinite(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError if a weight or optimizer array holds NaN/inf: such a file is never written."""
    bad = [name for name, a in arrays.items() if name.startswith(("model/", "optim/"))
           and a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"not saving {path}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold NaN/inf "
                         f"values; a model file is only written from finite weights")


def save(model: Sequential, path: "str | os.PathLike[str]", *, optimizer: Any = None,
         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally its optimizer's state) to ``path`` atomically; returns the path.

    Weights or optimizer state holding NaN/inf raise ValueError and write nothing, so a file
    on disk always holds finite weights.

    ``metadata`` is any JSON-able dict (training settings, epoch, metrics); it comes back in
    ``model.metadata`` after :func:`load`.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    header: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "xpnn_version": __version__,
        "architecture": model.config(), "input_shape": list(model.input_shape) if model.input_shape else None,
        "dtype": model.dtype, "saved_from": model.device.name,
        "loss": None if model.loss is None else {"type": type(model.loss).__name__, "config": model.loss.config()},
        "metadata": _split_arrays(metadata or {}, "meta", arrays),
    }
    if optimizer is not None:
        header["optimizer"] = {"type": type(optimizer).__name__, "config": optimizer.config(),
                               "state": _split_arrays(optimizer.state_dict(), "optim", arrays)}
    _refuse_nonfinite(path, arrays)
    arrays[_HEADER] = np.array(json_text(header, indent=None))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def _read(path: "str | os.PathLike[str]") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFileError(f"{path} is not a readable xpnn model file ({type(exc).__name__}: {exc})") from exc
    if _HEADER not in arrays:
        raise ModelFileError(f"{path} is an .npz file but not an xpnn model (it has no {_HEADER} header)")
    try:
        header = json.loads(str(arrays.pop(_HEADER)))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the model header is corrupt ({exc})") from exc
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unknown format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer xpnn (file format {version}, xpnn "
                             f"{header.get('xpnn_version')}); this xpnn {__version__} reads format "
                             f"{FORMAT_VERSION}: upgrade with pip install -U xpnn")
    return header, arrays


def _architecture_differences(saved: dict[str, Any], model: Sequential) -> list[str]:
    ours = model.config()["layers"]
    theirs = saved["layers"]
    diffs = []
    if len(ours) != len(theirs):
        diffs.append(f"the file has {len(theirs)} layers, the model {len(ours)}")
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a["type"] != b["type"] or {k: v for k, v in a["config"].items() if k != "dtype"} != \
                {k: v for k, v in b["config"].items() if k != "dtype"}:
            diffs.append(f"layer {i}: file has {a['type']}({a['config']}), model has {b['type']}({b['config']})")
    return diffs


def load(path: "str | os.PathLike[str]", device: "backend.Device | str | None" = None,
         model: Sequential | None = None) -> Sequential:
    """Read a model file onto ``device`` (default: the active device).

    With ``model=`` the weights are loaded into that existing model instead, after checking the
    architectures match; a mismatch raises :class:`ModelFileError` listing what differs.
    """
    header, arrays = _read(path)
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if model is None:
        target = backend.resolve(device)
        try:
            with backend.use_device(target), backend.preserved_rng():
                model = Sequential.from_config(header["architecture"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFileError(f"{path}: cannot rebuild the architecture: {exc}") from exc
    else:
        diffs = _architecture_differences(header["architecture"], model)
        if diffs:
            raise ModelFileError(f"{path} does not match the model: " + "; ".join(diffs))
        if device is not None:
            model.to(device)
    try:
        model.load_state_dict(weights)
    except ValueError as exc:
        raise ModelFileError(f"{path}: weights do not match the architecture: {exc}") from exc
    if header.get("input_shape"):
        model.build(header["input_shape"])
    if header.get("loss"):
        model.loss = get_loss(header["loss"]["type"], **header["loss"]["config"])
    model.metadata = _join_arrays(header.get("metadata", {}), arrays)
    return model


def load_checkpoint(path: "str | os.PathLike[str]", device: "backend.Device | str | None" = None
                    ) -> tuple[Sequential, Any, dict[str, Any]]:
    """``(model, optimizer or None, metadata)`` from a file written by ``save(..., optimizer=...)``,
    with the optimizer's state (moments, step count) restored for an exact resume."""
    from .optim import get_optimizer

    model = load(path, device)
    header, arrays = _read(path)
    optimizer = None
    if header.get("optimizer"):
        spec = header["optimizer"]
        optimizer = get_optimizer(spec["type"], **spec["config"])
        optimizer.load_state_dict(_join_arrays(spec["state"], arrays), model.parameters())
    return model, optimizer, model.metadata
