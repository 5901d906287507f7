"""The backend fixture: every layer, loss and optimizer test runs on each array library/device.

NumPy; array-api-strict on its CPU device and on ``Device("device1")`` (which raises on any
array created on the wrong device: our GPU stand-in on the CPU); CuPy where a GPU is visible.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn import backend

BACKENDS = ["numpy", "array_api_strict:CPU_DEVICE", "array_api_strict:device1", "gpu:0"]


def _gpu_skip_reason() -> str | None:
    try:
        with backend.use_device("gpu:0"):
            return None
    except backend.DeviceError as exc:
        return f"no CUDA GPU: {str(exc).split('(')[0].strip()}"


_GPU_SKIP = _gpu_skip_reason()


@pytest.fixture(params=BACKENDS, ids=["numpy", "strict-cpu", "strict-device1", "cupy"])
def device(request):
    """A :class:`xpnn.backend.Device`, also made active for the test (and restored after)."""
    spec = "cpu" if request.param == "numpy" else request.param
    if spec == "gpu:0" and _GPU_SKIP:
        pytest.skip(_GPU_SKIP)
    with backend.use_device(spec) as dev:
        xpnn.seed(0)
        yield dev


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
