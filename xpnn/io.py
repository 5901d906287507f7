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
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, backend, precision
from .errors import DataError, ModelFileError
from .init import placeholders
from .files import atomic_write, json_text
from .layers.base import LoadReport, join_path, layer_spec
from .losses import get_loss
from .model import Sequential
from .optim import get_optimizer

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


def _refuse_nonfinite(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError if a weight or optimizer array holds NaN/inf: such a file is never written."""
    bad = [name for name, a in arrays.items() if name.startswith(("model/", "optim/"))
           and a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"not saving {path}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold NaN/inf "
                         f"values; a model file is only written from finite weights")


def _refuse_too_deep(path: Path, header: dict[str, Any]) -> None:
    """Raise ValueError if the header nests deeper than :func:`load` reads: what is written can be read."""
    deep = [key for key, value in header.items() if 1 + _depth(value) > _MAX_DEPTH]
    if deep:
        raise ValueError(f"not saving {path}: its {deep[0]} is nested more than {_MAX_DEPTH} levels deep, more "
                         f"than a model file may hold")


def save(model: Sequential, path: "str | os.PathLike[str]", *, optimizer: Any = None,
         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally its optimizer's state) to ``path`` atomically; returns the path.

    Weights or optimizer state holding NaN/inf raise ValueError and write nothing, so a file
    on disk always holds finite weights; so does an architecture or metadata nested more than
    100 levels deep (about 30 nested containers), which :func:`load` would refuse.

    ``metadata`` is any JSON-able dict (training settings, epoch, metrics); it comes back in
    ``model.metadata`` after :func:`load`.
    """
    if not isinstance(model, Sequential):
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(f"save needs an xpnn.Sequential model, got {kind}; wrap layers in xpnn.Sequential([...])")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    header: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "xpnn_version": __version__,
        "architecture": layer_spec(model), "input_shape": list(model.input_shape) if model.input_shape else None,
        "frozen": [path for path, layer in model.walk() if not layer.children() and not layer.trainable],
        "dtype": model.dtype, "dtype_policy": precision.dtype_policy().name, "saved_from": model.device.name,
        "loss": None if model.loss is None else {"type": type(model.loss).__name__, "config": model.loss.config()},
        "metadata": _split_arrays(metadata or {}, "meta", arrays),
    }
    if optimizer is not None:
        header["optimizer"] = {"type": type(optimizer).__name__, "config": optimizer.config(),
                               "state": _split_arrays(optimizer.state_dict(), "optim", arrays)}
    _refuse_nonfinite(path, arrays)
    _refuse_too_deep(path, header)
    arrays[_HEADER] = np.array(json_text(header, indent=None))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


_MAX_HEADER_BYTES = 16 * 2**20
_MAX_DEPTH = 100
#: the most a deflate stream can expand (zlib's documented bound is 1032:1), plus room for headers
_DEFLATE_MAX_RATIO = 1032
_ZIP_SLACK = 4096
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError, RuntimeError,
                NotImplementedError)


class _Archive:
    """An open model file: its checked JSON header, and its arrays read one at a time on demand.

    Before an array's data is read, its ``.npy`` header (dtype, shape) is checked against the
    bytes the zip member really holds (and the member's size against what its compressed bytes
    can expand to), so no size a file declares is allocated on trust, and members nobody asks
    for are never read. Every problem raises :class:`ModelFileError` naming the file.
    """

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"model file {str(self.path)!r} does not exist")
        if not self.path.is_file():  # a folder, a FIFO (opening it would block), a device
            raise ModelFileError(f"{self.path} is not a regular file, so not a model file")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ModelFileError(f"{self.path} is not a readable xpnn model file ({type(exc).__name__}: {exc})"
                                 ) from exc
        self.members = {info.filename[:-len(".npy")]: info for info in self.zip.infolist()
                        if info.filename.endswith(".npy")}
        try:
            self._refuse_duplicates()
            if _HEADER not in self.members:
                raise self.error(f"is an .npz file but not an xpnn model (it has no {_HEADER} header)")
            self.header = self._parse_header(self.read(_HEADER, max_bytes=_MAX_HEADER_BYTES))
        except BaseException:
            self.close()
            raise

    def _refuse_duplicates(self) -> None:
        """Zip readers disagree on which of two members with one name counts (Python takes the
        last, others the first), so another tool could see other weights: such a file is refused."""
        seen: set[str] = set()
        for info in self.zip.infolist():
            if info.filename in seen:
                raise self.error(f"is damaged: it holds two members named {info.filename!r}, and zip readers "
                                 f"disagree on which one counts")
            seen.add(info.filename)

    def error(self, text: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {text}" if not text.startswith("is ") else f"{self.path} {text}")

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- arrays

    def declared(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of member ``name`` from its .npy header, checked against its real size."""
        info = self.members.get(name)
        if info is None:
            raise self.error(f"the array {name!r} is missing from the file")
        if info.compress_type == zipfile.ZIP_STORED:
            plausible = info.file_size == info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            plausible = info.file_size <= info.compress_size * _DEFLATE_MAX_RATIO + _ZIP_SLACK
        else:
            raise self.error(f"the array {name!r} uses zip compression method {info.compress_type}; xpnn reads "
                             f"stored or deflated members only")
        if not plausible:
            raise self.error(f"the array {name!r} claims {info.file_size:,} bytes, more than its "
                             f"{info.compress_size:,} stored bytes can hold; the file is damaged")
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
                offset = f.tell()
        except _READ_ERRORS as exc:
            raise self.error(f"the array {name!r} is damaged ({type(exc).__name__}: {exc})") from exc
        if dtype.hasobject:
            raise self.error(f"the array {name!r} holds Python objects ({dtype}); xpnn never unpickles files")
        count = 1
        for n in shape:
            count *= int(n)
        if count * dtype.itemsize != info.file_size - offset:
            raise self.error(f"the array {name!r} declares shape {tuple(shape)} {dtype} = {count * dtype.itemsize:,} "
                             f"bytes but holds {info.file_size - offset:,} bytes; the file is damaged")
        return tuple(shape), dtype

    def read(self, name: str, max_bytes: int | None = None) -> np.ndarray:
        """Member ``name`` as a NumPy array, after :meth:`declared` has checked its size."""
        shape, dtype = self.declared(name)
        size = dtype.itemsize * int(np.prod(shape, dtype=object))
        if max_bytes is not None and size > max_bytes:
            raise self.error(f"the array {name!r} is {size:,} bytes, more than the {max_bytes:,} allowed for it")
        try:
            with self.zip.open(self.members[name]) as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
                if f.read(1):  # reaching the end is also what makes zipfile check the CRC
                    raise ValueError("more data than the array header declares")
        except _READ_ERRORS as exc:
            raise self.error(f"the array {name!r} is damaged ({type(exc).__name__}: {exc})") from exc
        if name.startswith(("model/", "optim/")) and array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise self.error(f"the array {name!r} holds NaN/inf values; xpnn never writes such weights, so the "
                             f"file is damaged")
        return array

    def weight_bytes(self) -> int:
        """Bytes stored for the model's weights: the most rebuilding its architecture may allocate."""
        return sum(info.file_size for name, info in self.members.items() if name.startswith("model/"))

    def weights(self, model: Sequential) -> dict[str, np.ndarray]:
        """The arrays ``model``'s state names, each checked against the model's shape before reading."""
        expected = {key: tuple(value.shape) for key, value in model.named_state().items()}
        stored = {name[len("model/"):] for name in self.members if name.startswith("model/")}
        missing, extra = sorted(set(expected) - stored), sorted(stored - set(expected))
        if missing or extra:
            raise self.error(f"weights do not match the architecture: missing {missing}, unexpected {extra}")
        for key, shape in expected.items():
            declared, dtype = self.declared(f"model/{key}")
            if declared != shape or dtype.kind not in "fiu":
                raise self.error(f"weights do not match the architecture: {key} is {declared} {dtype} in the file, "
                                 f"the architecture needs {shape}")
        return {key: self.read(f"model/{key}") for key in expected}

    def matching_weights(self, model: Sequential) -> dict[str, Any]:
        """Every weight in the file: those whose name and declared shape fit ``model`` are read;
        the others are zero-byte stand-ins with the declared shape (for the load report), never read."""
        expected = {key: tuple(value.shape) for key, value in model.named_state().items()}
        out: dict[str, Any] = {}
        for name in self.members:
            if name.startswith("model/"):
                key = name[len("model/"):]
                shape, dtype = self.declared(name)
                if dtype.kind not in "fiu":  # a stand-in of the right shape would load as zeros
                    raise self.error(f"weights do not match the architecture: {key} holds {dtype} values, not "
                                     f"numbers")
                out[key] = self.read(name) if expected.get(key) == shape else np.broadcast_to(np.zeros((), dtype), shape)
        return out

    def join(self, tree: Any) -> Any:
        """``tree`` with each ``{"__array__": name}`` reference replaced by that array."""
        if isinstance(tree, dict):
            if set(tree) == {"__array__"}:
                if not isinstance(tree["__array__"], str):
                    raise self.error(f"an array reference must be a member name, got {tree['__array__']!r}")
                return self.read(tree["__array__"])
            return {k: self.join(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [self.join(v) for v in tree]
        return tree

    # ---------------------------------------------------------------- header

    def _parse_header(self, raw: np.ndarray) -> dict[str, Any]:
        if raw.dtype.kind != "U" or raw.shape != ():
            raise self.error(f"the model header must be one string, got a {raw.dtype} array of shape {raw.shape}")
        try:
            header = json.loads(str(raw))
        except (ValueError, RecursionError) as exc:
            raise self.error(f"the model header is corrupt ({type(exc).__name__}: {str(exc)[:200]})") from exc
        if _depth(header) > _MAX_DEPTH:
            raise self.error(f"the model header is nested more than {_MAX_DEPTH} levels deep; the file is damaged")
        if not isinstance(header, dict):
            raise self.error(f"the model header must be a JSON object, got {type(header).__name__}")
        if header.get("format") != FORMAT:
            raise self.error(f"unknown format {header.get('format')!r}, expected {FORMAT!r}")
        version = header.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self.error(f"the header's format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise self.error(f"was written by a newer xpnn (file format {version}, xpnn "
                             f"{header.get('xpnn_version')}); this xpnn {__version__} reads format "
                             f"{FORMAT_VERSION}: upgrade with pip install -U xpnn")
        self._check_types(header)
        return header

    def _check_types(self, header: dict[str, Any]) -> None:
        """Each header field has the JSON type xpnn writes, so later code never trips over it."""
        def need(ok: bool, what: str, expected: str, value: Any) -> None:
            if not ok:
                raise self.error(f"the header's {what} must be {expected}, got {json_text(value, indent=None)[:80]}")

        need(isinstance(header.get("architecture"), dict), "architecture", "an object", header.get("architecture"))
        shape = header.get("input_shape")
        need(shape is None or (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                 and d > 0 for d in shape)),
             "input_shape", "null or a list of positive integers", shape)
        need(isinstance(header.get("metadata", {}), dict), "metadata", "an object", header.get("metadata"))
        frozen = header.get("frozen", [])
        need(isinstance(frozen, list) and all(isinstance(path, str) for path in frozen), "frozen",
             "a list of layer paths", frozen)
        for key, parts in (("loss", ("type", "config")), ("optimizer", ("type", "config", "state"))):
            spec = header.get(key)
            need(spec is None or (isinstance(spec, dict) and isinstance(spec.get("type"), str)
                                  and isinstance(spec.get("config"), dict)
                                  and ("state" not in parts or isinstance(spec.get("state"), dict))),
                 key, f"null or an object with {', '.join(parts)}", spec)


def _depth(tree: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (iteratively: a hostile file cannot recurse)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level > _MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _architecture(archive: "_Archive") -> dict[str, Any]:
    """The file's architecture as a format-2 layer spec (a format-1 flat list becomes a Sequential)."""
    header = archive.header
    architecture = header.get("architecture")
    if header.get("format_version") == 1:
        architecture = {"type": "Sequential", "config": architecture}
    if not isinstance(architecture, dict) or architecture.get("type") != "Sequential":
        raise archive.error(f"the architecture must be a Sequential, got {str(architecture)[:80]}")
    return architecture


def _rebuild(archive: _Archive, device: "backend.Device | str | None") -> Sequential:
    """The file's architecture on ``device``, its weights allocated as zeros (nothing drawn), and
    no more than the file stores for them: a small file declaring a huge layer is refused here."""
    target = backend.resolve(device)
    try:
        with backend.use_device(target), backend.preserved_rng(), placeholders(archive.weight_bytes()):
            return Sequential.from_config(_architecture(archive)["config"])
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        raise archive.error(f"cannot rebuild the architecture: {exc}") from exc


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
        child = join_path(path, key)
        if isinstance(b, list) and b and all(_is_spec(v) for v in b) and isinstance(a, list):
            if len(a) != len(b):
                diffs.append(f"{where}: the file has {len(a)} layers, the model {len(b)}")
            for i, (sa, sb) in enumerate(zip(a, b)):
                diffs += _spec_differences(sa, sb, join_path(path, i))
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


def _load_arrays(archive: _Archive, model: Sequential, strict: bool) -> LoadReport:
    """Load the file's weights into ``model`` (see ``Layer.load_state_dict``): arrays whose name and
    shape fit are read; the others are never read, only their declared shapes reported."""
    arrays = archive.weights(model) if strict else archive.matching_weights(model)
    try:
        return model.load_state_dict(arrays, strict=strict)
    except DataError as exc:  # values the model's dtype cannot hold
        raise archive.error(str(exc)) from exc
    except ValueError as exc:
        raise archive.error(f"weights do not match the architecture: {exc}") from exc


def _load(archive: _Archive, device: "backend.Device | str | None", model: Sequential | None) -> Sequential:
    header = archive.header
    if model is None:
        model = _rebuild(archive, device)
        _load_arrays(archive, model, strict=True)
        layers = dict(model.walk())
        for frozen in header.get("frozen", []):
            if frozen not in layers:
                raise archive.error(f"the header's frozen names layer {frozen!r}, which the architecture does "
                                    f"not have")
            layers[frozen].trainable = False
    else:
        diffs = _spec_differences(_architecture(archive), layer_spec(model), "")
        if diffs:
            raise ModelFileError(f"{archive.path} does not match the model: " + "; ".join(diffs))
        _load_arrays(archive, model, strict=True)
        if device is not None:
            model.to(device)
    try:
        if header.get("input_shape"):
            model.build(header["input_shape"])
    except ValueError as exc:
        raise archive.error(f"the architecture does not fit its input shape {tuple(header['input_shape'])}: "
                            f"{exc}") from exc
    if header.get("loss"):
        try:
            model.loss = get_loss(header["loss"]["type"], **header["loss"]["config"])
        except (ValueError, TypeError) as exc:
            raise archive.error(f"the saved loss cannot be rebuilt: {exc}") from exc
    model.metadata = archive.join(header.get("metadata", {}))
    return model


def load(path: "str | os.PathLike[str]", device: "backend.Device | str | None" = None,
         model: Sequential | None = None) -> Sequential:
    """Read a model file onto ``device`` (default: the active device).

    With ``model=`` the weights are loaded into that existing model instead, after checking the
    architectures match; a mismatch raises :class:`ModelFileError` listing what differs. A
    damaged or hostile file raises :class:`ModelFileError` naming it, before any size it
    declares is allocated and without reading arrays the architecture does not name.
    """
    with _Archive(path) as archive:
        return _load(archive, device, model)


def load_weights(path: "str | os.PathLike[str]", model: Sequential, strict: bool = False) -> LoadReport:
    """Load into ``model`` every array of the file at ``path`` whose dotted path and shape match
    (all of them with ``strict=True``); returns the :class:`~xpnn.layers.LoadReport`. The model's
    architecture may differ (a new head, another number of classes). Nothing matching is an
    error, and a refused load leaves the model as it was."""
    with _Archive(path) as archive:
        _architecture(archive)
        return _load_arrays(archive, model, strict=strict)


def _optimizer(archive: _Archive, model: Sequential) -> Any:
    """The optimizer saved in the header with its state restored, each state array's declared
    shape checked against its parameter before it is read."""
    spec = archive.header["optimizer"]
    try:
        optimizer = get_optimizer(spec["type"], **spec["config"])
    except (ValueError, TypeError) as exc:
        raise archive.error(f"the saved optimizer cannot be rebuilt: {exc}") from exc
    shapes = {p.name: p.shape for p in model.parameters()}
    per_param = spec["state"].get("state")
    for pname, entries in (per_param.items() if isinstance(per_param, dict) else ()):
        for key, ref in (entries.items() if isinstance(entries, dict) else ()):
            if isinstance(ref, dict) and isinstance(ref.get("__array__"), str) and pname in shapes:
                declared, _ = archive.declared(ref["__array__"])
                if declared != shapes[pname]:
                    raise archive.error(f"optimizer state {pname}.{key} has shape {declared}, the parameter "
                                        f"{shapes[pname]}")
    try:
        optimizer.load_state_dict(archive.join(spec["state"]), model.parameters())
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise archive.error(f"the optimizer state does not fit the model: {exc}") from exc
    return optimizer


def load_checkpoint(path: "str | os.PathLike[str]", device: "backend.Device | str | None" = None
                    ) -> tuple[Sequential, Any, dict[str, Any]]:
    """``(model, optimizer or None, metadata)`` from a file written by ``save(..., optimizer=...)``,
    with the optimizer's state (moments, step count) restored for an exact resume."""
    with _Archive(path) as archive:
        model = _load(archive, device, None)
        optimizer = _optimizer(archive, model) if archive.header.get("optimizer") else None
    return model, optimizer, model.metadata
