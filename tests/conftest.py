"""The backend fixture: every layer, loss and optimizer test runs on each array library/device.

NumPy; array-api-strict on its CPU device and on ``Device("device1")`` (which raises on any
array created on the wrong device: our GPU stand-in on the CPU); :mod:`xpnn.instrumented` on its
second device (allocates where the *current* device is and refuses arrays of another, as CuPy
does); CuPy on ``gpu:0`` where a GPU works, and on ``gpu:1`` where there are two. A CuPy case
that cannot run is skipped saying what is missing: CuPy, the driver, a GPU, or a CUDA library.
"""
from __future__ import annotations

import importlib.util
import sys

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


class FakeCupy:
    """CuPy as far as xpnn's GPU set-up uses it, with CUDA's rules about devices.

    As ``cupy/cuda/device.pyx`` over the CUDA runtime: ``Device(i)`` touches nothing;
    ``Device.__enter__`` remembers the current device and switches only if it differs;
    ``__exit__`` always calls ``runtime.setDevice(remembered)``, which is 0 in a fresh process;
    ``use()`` is ``setDevice(i)``. Since CUDA 12 ``setDevice`` creates that GPU's context, and so
    does the first allocation or kernel on the current device: ``initialised`` records the GPUs
    that got one. ``broken`` names a library that cannot be loaded, and the operations needing it
    raise as CuPy then does: ``libnvrtc`` every element-wise kernel, ``libcublas`` a matmul,
    ``libcurand`` random numbers; any other name every kernel.
    """

    float32 = np.float32

    def __init__(self, gpus: int = 1, broken: str | None = None) -> None:
        import types

        self.initialised: set[int] = set()
        self.broken = broken
        self._current = 0
        self._stack: list[int] = []
        fake = self

        class Device:
            def __init__(self, index=None):
                self.id = fake._current if index is None else int(index)

            def __enter__(self):
                previous = fake._current
                fake._stack.append(previous)
                if self.id != previous:
                    fake._set_device(self.id)
                return self

            def __exit__(self, *exc):
                fake._set_device(fake._stack.pop())

            def use(self):
                fake._set_device(self.id)
                return self

        self.runtime = types.SimpleNamespace(
            getDeviceCount=lambda: gpus, getDevice=lambda: self._current, setDevice=self._set_device,
            memGetInfo=lambda: (70 * 2**30, 80 * 2**30), getDeviceProperties=lambda i: {"name": b"Test GPU"})
        driver = types.SimpleNamespace(ctxGetCurrent=lambda: 1 + self._current if self._current in self.initialised
                                       else 0)
        self.cuda = types.SimpleNamespace(Device=Device, runtime=self.runtime, driver=driver)
        self.random = types.SimpleNamespace(default_rng=lambda seed=None: types.SimpleNamespace(
            random=lambda shape, dtype=np.float64: self._launch("curand", np.full(shape, 0.5, dtype=dtype))))

    def _set_device(self, index: int) -> None:
        self._current = index
        self.initialised.add(index)

    def _launch(self, library: str, data: np.ndarray) -> "_FakeGpuArray":
        """A kernel on the current device: it gets a context, and fails if ``library`` (or any, for an
        unknown broken name) cannot be loaded."""
        self.initialised.add(self._current)
        broken = self.broken
        if broken and (library in broken or not any(name in broken for name in ("nvrtc", "cublas", "curand"))):
            raise RuntimeError(f"CuPy failed to load {broken}: OSError: {broken}: cannot open shared object file")
        return _FakeGpuArray(self, data)

    def arange(self, *args, dtype=None):
        return self._launch("nvrtc", np.arange(*args, dtype=dtype))

    def asarray(self, obj, dtype=None):
        return self._launch("nvrtc", np.asarray(obj, dtype=dtype))


class _FakeGpuArray:
    """An array of :class:`FakeCupy`: each operation is a kernel on the current device."""

    def __init__(self, cupy: FakeCupy, data: np.ndarray) -> None:
        self.cupy, self.data = cupy, data

    def reshape(self, *shape):
        return _FakeGpuArray(self.cupy, self.data.reshape(*shape))

    def __mul__(self, other):
        return self.cupy._launch("nvrtc", self.data * getattr(other, "data", other))

    def __add__(self, other):
        return self.cupy._launch("nvrtc", self.data + getattr(other, "data", other))

    def __matmul__(self, other):
        return self.cupy._launch("cublas", self.data @ other.data)

    def sum(self):
        return self.cupy._launch("nvrtc", self.data.sum())

    def __float__(self):
        return float(self.data)


@pytest.fixture
def fake_cupy():
    """A factory for a :class:`FakeCupy` with ``gpus`` GPUs, made the CuPy xpnn imports; its array
    namespace (which xpnn takes without creating an array) is a stand-in module."""
    import types

    def make(gpus: int = 1, broken: str | None = None) -> FakeCupy:
        cupy = FakeCupy(gpus, broken)
        monkeypatch.setattr(backend, "_import_cupy", lambda spec: cupy)
        monkeypatch.setattr(backend, "_working_gpus", set())
        monkeypatch.setitem(sys.modules, "array_api_compat.cupy", types.ModuleType("array_api_compat.cupy"))
        return cupy

    with pytest.MonkeyPatch.context() as monkeypatch:
        yield make


@pytest.fixture
def failing_cupy():
    """A factory for a stand-in CuPy whose driver sees one GPU but whose ``library`` (e.g.
    ``"libnvrtc.so.12"``) cannot be loaded: the operations that need it raise as CuPy then does."""
    return lambda library: FakeCupy(gpus=1, broken=library)
