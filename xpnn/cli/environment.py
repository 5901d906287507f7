"""The machine a command runs on: the ``--device`` choice, and the library versions (a run
records them, ``xpnn devices`` shows them)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import warnings

import numpy as np

from .. import __version__, backend


def select_device(spec: str | None) -> tuple[backend.Device, str]:
    """Activate ``spec`` (default: $XPNN_DEVICE, else "auto"); returns it and why auto chose the CPU."""
    spec = spec or os.environ.get("XPNN_DEVICE") or "auto"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = backend.set_device(spec)
    note = ""
    if spec.strip().lower() == "auto":
        note = "auto: " + ("no GPU found" if caught else "GPU found")
    return device, note


def library_versions() -> dict[str, str]:
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
