"""xpnn: small, fast, honest neural networks on any array-API library (NumPy, CuPy, ...).

The public names and submodules below are imported on first use (PEP 562): ``xpnn.data``,
``xpnn.zoo`` or ``xpnn.save`` work after a bare ``import xpnn``, which itself is instant, so the
``xpnn`` command can answer Ctrl-C with one line even while NumPy is still loading.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "Device": "backend", "DeviceError": "backend", "current_device": "backend", "devices": "backend",
    "get_device": "backend", "seed": "backend", "set_device": "backend", "to_device": "backend",
    "to_numpy": "backend", "use_device": "backend",
    "load": "io", "load_checkpoint": "io", "save": "io",
    "Sequential": "model", "mlp": "model",
    "Callback": "train", "EarlyStopping": "train", "ReduceLROnPlateau": "train", "History": "train",
    "ModelCheckpoint": "train", "export_onnx": "onnx_export",
    "memory_estimate": "layers", "set_workspace_limit": "layers", "workspace_limit": "layers",
    "set_dtype_policy": "precision", "dtype_policy": "precision", "set_float32_matmul_precision": "precision",
    "get_float32_matmul_precision": "precision",
}
#: every public submodule, reachable as ``xpnn.NAME`` (imported on first use like the names above)
_SUBMODULES = ("backend", "cli", "data", "datasets", "distributed", "errors", "files", "init", "instrumented", "io",
               "layers", "losses", "metrics", "model", "onnx_export", "optim", "precision", "testing", "train", "validation", "zoo")

__all__ = [*_SUBMODULES, "Device", "DeviceError", "set_device", "get_device", "current_device",
           "use_device", "devices", "to_device", "to_numpy", "seed", "Sequential", "mlp", "save", "load",
           "load_checkpoint", "History", "Callback", "EarlyStopping", "ReduceLROnPlateau",
           "ModelCheckpoint", "export_onnx", "memory_estimate", "set_workspace_limit", "workspace_limit",
           "set_dtype_policy", "dtype_policy", "set_float32_matmul_precision", "get_float32_matmul_precision",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
