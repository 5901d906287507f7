"""Save and load models: an ``.npz`` of host arrays plus a JSON header; never pickle.

The header (``__xpnn__``) holds the format version, the architecture (layer types and
constructor arguments, nested: a container's config holds its children), the paths of frozen
layers, the loss, optional optimizer state and free metadata. Arrays are keyed by dotted path
(``model/3.body.0.weight``). Format 1 (xpnn 0.1 before nested models) stored a flat layer list;
it still loads. Files are written
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
from .files import atomic_write
from .layers.base import LoadReport, layer_from_spec, layer_spec
from .losses import get_loss
from .model import Sequential

__all__ = ["save", "load", "load_weights", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "xpnn-model"
#: 2: nested architecture (``{"type": "Sequential", "config": {"layers": [...]}}``) and frozen paths;
#: 1: a flat ``{"layers": [...]}`` list
FORMAT_VERSION = 2
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


def save(model: Sequential, path: "str | os.PathLike[str]", *, optimizer: Any = None,
         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally its optimizer's state) to ``path`` atomically; returns the path.

    ``metadata`` is any JSON-able dict (training settings, epoch, metrics); it comes back in
    ``model.metadata`` after :func:`load`.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    header: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "xpnn_version": __version__,
        "architecture": layer_spec(model), "input_shape": list(model.input_shape) if model.input_shape else None,
        "dtype": model.dtype, "saved_from": model.device.name,
        "frozen": [path for path, layer in model.walk() if not layer.children() and not layer.trainable],
        "loss": None if model.loss is None else {"type": type(model.loss).__name__, "config": model.loss.config()},
        "metadata": _split_arrays(metadata or {}, "meta", arrays),
    }
    if optimizer is not None:
        header["optimizer"] = {"type": type(optimizer).__name__, "config": optimizer.config(),
                               "state": _split_arrays(optimizer.state_dict(), "optim", arrays)}
    arrays[_HEADER] = np.array(json.dumps(header))
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
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer xpnn (file format {version}, xpnn "
                             f"{header.get('xpnn_version')}); this xpnn {__version__} reads format "
                             f"{FORMAT_VERSION}: upgrade with pip install -U xpnn")
    return header, arrays


def _architecture(header: dict[str, Any], path: Any) -> dict[str, Any]:
    """The file's architecture as a format-2 layer spec (a format-1 flat list becomes a Sequential)."""
    architecture = header.get("architecture")
    if header.get("format_version") == 1:
        architecture = {"type": "Sequential", "config": architecture}
    if not isinstance(architecture, dict) or architecture.get("type") != "Sequential":
        raise ModelFileError(f"{path}: the architecture must be a Sequential, got {str(architecture)[:80]}")
    return architecture


def _rebuild(architecture: dict[str, Any], device: "backend.Device | str | None", path: Any) -> Sequential:
    """A fresh model from the file's architecture, on ``device``, without touching the global RNG."""
    target = backend.resolve(device)
    try:
        with backend.use_device(target), backend.preserved_rng():
            return layer_from_spec(architecture)  # type: ignore[return-value]
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{path}: cannot rebuild the architecture: {exc}") from exc


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"type", "config"} and isinstance(value["config"], dict)


def _spec_differences(saved: Any, ours: dict[str, Any], path: str) -> list[str]:
    """Where two layer specs differ, by path: a differing type or setting ends the descent; a
    container's children are compared one by one (by index in a list, by name otherwise)."""
    where = f"layer {path}" if path else "the model"
    if not _is_spec(saved):
        return [f"{where}: the file's entry is not a layer ({str(saved)[:60]})"]
    if saved["type"] != ours["type"]:
        return [f"{where}: file has {saved['type']}({_settings(saved)}), model has {ours['type']}({_settings(ours)})"]
    diffs: list[str] = []
    mine, theirs = ours["config"], saved["config"]
    for key in [*mine, *(k for k in theirs if k not in mine)]:
        a, b = theirs.get(key), mine.get(key)
        child = f"{path}.{key}" if path else key
        if isinstance(b, list) and b and all(_is_spec(v) for v in b) and isinstance(a, list):
            if len(a) != len(b):
                diffs.append(f"{where}: the file has {len(a)} layers, the model {len(b)}")
            for i, (sa, sb) in enumerate(zip(a, b)):
                diffs += _spec_differences(sa, sb, f"{path}.{i}" if path else str(i))
        elif _is_spec(b) and _is_spec(a):
            diffs += _spec_differences(a, b, child)
        elif _is_spec(a) or _is_spec(b):
            diffs.append(f"layer {child}: file has {_brief(a)}, model has {_brief(b)}")
        elif key != "dtype" and a != b:
            return [f"{where}: file has {saved['type']}({_settings(saved)}), model has {ours['type']}({_settings(ours)})"]
    return diffs


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A leaf layer's settings for messages; a container's children are summarised, not listed."""
    return {k: v for k, v in spec["config"].items() if not (_is_spec(v) or isinstance(v, list) and v and _is_spec(v[0]))}


def _brief(value: Any) -> str:
    return f"{value['type']}(...)" if _is_spec(value) else "nothing"


def _load_arrays(model: Sequential, weights: dict[str, np.ndarray], path: Any, strict: bool) -> LoadReport:
    try:
        return model.load_state_dict(weights, strict=strict)
    except ValueError as exc:
        raise ModelFileError(f"{path}: weights do not match the architecture: {exc}") from exc


def _finish(model: Sequential, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Sequential:
    """Input shape, loss and metadata from the header."""
    if header.get("input_shape"):
        model.build(header["input_shape"])
    if header.get("loss"):
        model.loss = get_loss(header["loss"]["type"], **header["loss"]["config"])
    model.metadata = _join_arrays(header.get("metadata", {}), arrays)
    return model


def load(path: "str | os.PathLike[str]", device: "backend.Device | str | None" = None,
         model: Sequential | None = None) -> Sequential:
    """Read a model file onto ``device`` (default: the active device).

    With ``model=`` the weights are loaded into that existing model instead, after checking the
    architectures match; a mismatch raises :class:`ModelFileError` listing the paths that
    differ, and leaves the model as it was. To start a different model from the weights that
    fit, use :func:`load_weights`.
    """
    header, arrays = _read(path)
    architecture = _architecture(header, path)
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if model is None:
        model = _rebuild(architecture, device, path)
        _load_arrays(model, weights, path, strict=True)
        layers = dict(model.walk())
        for frozen in header.get("frozen", []):
            if frozen in layers:
                layers[frozen].trainable = False
    else:
        diffs = _spec_differences(architecture, layer_spec(model), "")
        if diffs:
            raise ModelFileError(f"{path} does not match the model: " + "; ".join(diffs))
        _load_arrays(model, weights, path, strict=True)
        if device is not None:
            model.to(device)
    return _finish(model, header, arrays)


def load_weights(path: "str | os.PathLike[str]", model: Sequential, strict: bool = False) -> LoadReport:
    """Load into ``model`` every array of the file at ``path`` whose dotted path and shape match
    (all of them with ``strict=True``); returns the :class:`~xpnn.layers.LoadReport`. The model's
    architecture may differ (a new head, another number of classes). Nothing matching is an
    error, and a refused load leaves the model as it was."""
    header, arrays = _read(path)
    _architecture(header, path)
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return _load_arrays(model, weights, path, strict=strict)


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
