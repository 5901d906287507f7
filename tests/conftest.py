"""The backend fixture: every layer, loss and optimizer test runs on each array library/device.

NumPy; array-api-strict on its CPU device and on ``Device("device1")`` (which raises on any
array created on the wrong device: our GPU stand-in on the CPU); :mod:`xpnn.instrumented` on its
second device (allocates where the *current* device is and refuses arrays of another, as CuPy
does); CuPy on ``gpu:0`` where a GPU works, and on ``gpu:1`` where there are two. A CuPy case
that cannot run is skipped saying what is missing: CuPy, the driver, a GPU, or a CUDA library.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import xpnn
from xpnn import backend, instrumented

BACKENDS = {
    "numpy": lambda: "cpu",
    "strict-cpu": lambda: "array_api_strict:CPU_DEVICE",
    "strict-device1": lambda: "array_api_strict:device1",
    "current-device1": lambda: backend.Device.from_namespace(_INSTRUMENTED, _INSTRUMENTED.devices[1]),
    "cupy": lambda: "gpu:0",
    "cupy-gpu1": lambda: "gpu:1",
}
_INSTRUMENTED = instrumented.make(devices=2)


def _gpu_skip_reason(index: int) -> str | None:
    """None if ``gpu:<index>`` works, else what is missing, in a few words."""
    if importlib.util.find_spec("cupy") is None:
        return 'CuPy is not installed (pip install "xpnn[gpu]")'
    try:
        with backend.use_device(f"gpu:{index}"):
            return None
    except backend.DeviceError as exc:
        text = str(exc)
        if "no usable CUDA device" in text:
            return "no NVIDIA driver or no usable GPU: " + text.split("(", 1)[-1].split(")")[0]
        if "no CUDA device is visible" in text:
            return "no GPU visible (CUDA_VISIBLE_DEVICES)"
        if "out of range" in text:
            return f"gpu:{index} needs {index + 1} GPUs; " + text.split("; ", 1)[-1]
        return text.split(". Fix:")[0]


_GPU_SKIP = {"cupy": _gpu_skip_reason(0)}
_GPU_SKIP["cupy-gpu1"] = _GPU_SKIP["cupy"] or _gpu_skip_reason(1)


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def device(request):
    """A :class:`xpnn.backend.Device`, also made active (and current) for the test, restored after."""
    if _GPU_SKIP.get(request.param):
        pytest.skip(_GPU_SKIP[request.param])
    with backend.use_device(BACKENDS[request.param]()) as dev:
        xpnn.seed(0)
        yield dev


def _cupy_current() -> int | None:
    if _GPU_SKIP["cupy"]:
        return None
    import cupy
    return cupy.cuda.runtime.getDevice()


@pytest.fixture(autouse=True)
def default_device_is_left_as_found():
    """No test may leave xpnn's default device (or CuPy's current GPU) changed for the next one."""
    before = (backend.get_device(), _cupy_current())
    yield
    after = (backend.get_device(), _cupy_current())
    if after != before:
        backend.set_device(before[0])
        if before[1] is not None:
            import cupy
            cupy.cuda.Device(before[1]).use()
        pytest.fail(f"the test left the default device changed: (xpnn, CuPy) {before} -> {after}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


class _GpuDevice:
    """``cupy.cuda.Device`` as far as xpnn's availability check uses it."""

    def __init__(self, index):
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def failing_cupy():
    """A factory for a stand-in CuPy whose driver sees one GPU but whose ``library`` (e.g.
    ``"libnvrtc.so.12"``) cannot be loaded: every kernel launch raises as CuPy then does."""
    import types

    def make(library: str):
        def arange(*args, **kwargs):
            raise RuntimeError(f"CompileException: {library}: cannot open shared object file")

        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=lambda: (70 * 2**30, 80 * 2**30),
                                        getDeviceProperties=lambda i: {"name": b"Test GPU"})
        return types.SimpleNamespace(float32="float32", arange=arange,
                                     cuda=types.SimpleNamespace(Device=_GpuDevice, runtime=runtime))
    return make
