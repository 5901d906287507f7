"""The device switch: names, context manager, environment default, clear GPU errors."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

import xpnn
from xpnn import backend


def test_default_device_is_cpu():
    assert xpnn.get_device() == "cpu"
    assert "cpu" in xpnn.devices()


def test_use_device_restores_previous():
    with xpnn.use_device("array_api_strict:device1") as dev:
        assert xpnn.get_device() == "array_api_strict:device1"
        assert dev.name == "array_api_strict:device1"
    assert xpnn.get_device() == "cpu"


def test_set_device_returns_device_and_can_be_reset():
    try:
        dev = xpnn.set_device("array_api_strict:device1")
        assert isinstance(dev, xpnn.Device) and xpnn.get_device() == "array_api_strict:device1"
    finally:
        xpnn.set_device("cpu")
    assert xpnn.get_device() == "cpu"


def test_device_from_namespace_pair():
    import array_api_strict as xs
    dev = xpnn.Device.from_namespace(xs, xs.Device("device1"))
    assert dev.name == "array_api_strict:device1"
    a = dev.asarray(np.arange(3), dtype="float32")
    assert backend.device_of(a) == dev


def test_environment_default():
    code = "import xpnn; print(xpnn.get_device())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"XPNN_DEVICE": "array_api_strict:device1", "PATH": ""}, check=True)
    assert out.stdout.strip() == "array_api_strict:device1"


def test_to_device_and_back_on_every_backend(device):
    host = np.arange(6, dtype=np.uint8).reshape(2, 3)
    moved = xpnn.to_device(host, dtype="float32")
    assert backend.device_of(moved) == device
    assert backend.dtype_name(moved.dtype) == "float32"
    np.testing.assert_array_equal(xpnn.to_numpy(moved), host.astype(np.float32))


def test_random_uniform_stays_on_device(device):
    like = xpnn.to_device(np.zeros((3, 4), dtype=np.float32))
    r = backend.random_uniform((3, 4), like=like)
    assert backend.device_of(r) == device
    values = xpnn.to_numpy(r)
    assert values.dtype == np.float32 and (values >= 0).all() and (values < 1).all()


@pytest.mark.parametrize("spec", ["gpu", "gpu:0", "gpu:N", "cuda:0"])
def test_explicit_gpu_request_never_falls_back(spec):
    gpus = len(xpnn.devices()) - 1
    if spec == "gpu:N":
        spec = f"gpu:{max(gpus, 1)}"  # one past the last GPU, however many this machine has
    elif gpus:
        pytest.skip("a GPU is present")
    with pytest.raises(xpnn.DeviceError) as info:
        xpnn.set_device(spec)
    message = str(info.value)
    assert repr(spec) in message
    if "needs CuPy" in message:
        assert 'pip install "xpnn[gpu]"' in message
        assert isinstance(info.value.__cause__, ImportError)
    else:
        assert "out of range" in message or "no usable CUDA device" in message
    assert xpnn.get_device() == "cpu"


def test_auto_warns_once_and_uses_cpu(monkeypatch):
    if len(xpnn.devices()) > 1:
        pytest.skip("a GPU is present")
    monkeypatch.setattr(backend, "_auto_warned", False)
    try:
        with pytest.warns(UserWarning, match="found no GPU and uses the CPU"):
            assert xpnn.set_device("auto").name == "cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert xpnn.set_device("auto").name == "cpu"
    finally:
        xpnn.set_device("cpu")


@pytest.mark.parametrize("spec, message", [
    ("tpu", "unknown device 'tpu'"),
    ("gpu:x", "the GPU index must be a number"),
    ("array_api_strict:device9", "array_api_strict has no device 'device9'"),
    ("nosuchlib:0", "'nosuchlib' is not a known array library"),
])
def test_bad_device_names(spec, message):
    with pytest.raises((ValueError, xpnn.DeviceError), match=message):
        xpnn.set_device(spec)


def test_device_spec_type_error():
    with pytest.raises(TypeError, match="device must be a string"):
        xpnn.set_device(3)


def test_seed_gives_same_initial_weights_on_every_backend():
    weights = []
    for spec in ("cpu", "array_api_strict:CPU_DEVICE", "array_api_strict:device1"):
        with xpnn.use_device(spec):
            xpnn.seed(7)
            model = xpnn.mlp([5, 4, 2])
            weights.append(model.state_dict())
    for other in weights[1:]:
        for key, value in weights[0].items():
            np.testing.assert_array_equal(value, other[key])


@pytest.mark.parametrize("library, named", [("libnvrtc.so.12", "NVRTC"), ("libcublas.so.12", "cuBLAS"),
                                            ("libcurand.so.10", "cuRAND"),
                                            ("something else", "a CUDA library or the driver")])
def test_gpu_that_cannot_compute_is_a_device_error_and_auto_falls_back(monkeypatch, failing_cupy, library, named):
    monkeypatch.setattr(backend, "_import_cupy", lambda spec: failing_cupy(library))
    monkeypatch.setattr(backend, "_working_gpus", set())
    monkeypatch.setattr(backend, "_auto_warned", False)
    with pytest.raises(xpnn.DeviceError) as info:
        xpnn.set_device("gpu:0")
    message = str(info.value)
    assert "CuPy found gpu:0 but cannot compute on it" in message and named in message
    assert 'pip install "xpnn[gpu]"' in message and "cupy-cuda12x[ctk]" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert xpnn.get_device() == "cpu"
    try:
        with pytest.warns(UserWarning, match=f"found no GPU and uses the CPU.*{named}"):
            assert xpnn.set_device("auto").name == "cpu"
    finally:
        xpnn.set_device("cpu")


def test_set_device_initialises_only_the_gpu_it_names(fake_cupy):
    """In a fresh process GPU 0 is current but has no context yet: making gpu:1 current first and
    taking the namespace without an array leaves GPU 0 untouched (one context per rank under mpirun)."""
    cupy = fake_cupy(gpus=2)
    try:
        device = xpnn.set_device("gpu:1")
        assert device.name == "gpu:1" and cupy.initialised == {1}
        assert cupy.runtime.getDevice() == 1
        with xpnn.use_device("gpu:1"):
            pass
        assert cupy.initialised == {1} and cupy.runtime.getDevice() == 1
    finally:
        xpnn.set_device("cpu")


def test_a_second_gpu_is_probed_without_changing_the_current_one(fake_cupy):
    cupy = fake_cupy(gpus=2)
    try:
        xpnn.set_device("gpu:0")
        with xpnn.use_device("gpu:1"):
            assert cupy.runtime.getDevice() == 1
        assert cupy.initialised == {0, 1} and cupy.runtime.getDevice() == 0
    finally:
        xpnn.set_device("cpu")


def test_xpnn_device_gpu_makes_that_gpu_current_as_set_device_does(fake_cupy, monkeypatch):
    cupy = fake_cupy(gpus=2)
    monkeypatch.setenv("XPNN_DEVICE", "gpu:1")
    monkeypatch.setattr(backend, "_default", None)
    assert xpnn.get_device() == "gpu:1"
    assert cupy.initialised == {1} and cupy.runtime.getDevice() == 1
