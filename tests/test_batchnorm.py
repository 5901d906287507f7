"""BatchNorm1D/2D: gradients, train/eval behaviour, running statistics, state round trip, bad input."""
import numpy as np
import pytest

import xpnn
from xpnn import backend, layers
from xpnn.errors import ShapeError
from xpnn.testing import check_layer_gradients

CASES = {"1d": (lambda: layers.BatchNorm1D(3), (6, 3)), "2d": (lambda: layers.BatchNorm2D(2), (3, 2, 4, 5)),
         "2d-batch1": (lambda: layers.BatchNorm2D(2), (1, 2, 3, 3))}


def with_nontrivial_affine(layer, rng):
    layer.gamma.value = xpnn.to_device(rng.uniform(0.5, 2, layer.num_features), dtype="float32")
    layer.beta.value = xpnn.to_device(rng.standard_normal(layer.num_features), dtype="float32")
    layer.running_mean = xpnn.to_device(rng.standard_normal(layer.num_features), dtype="float32")
    layer.running_var = xpnn.to_device(rng.uniform(0.5, 2, layer.num_features), dtype="float32")
    return layer


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_gradients(device, rng, name, train):
    make, shape = CASES[name]
    layer = with_nontrivial_affine(make(), rng)
    check_layer_gradients(layer, rng.standard_normal(shape) * 3 + 1, device, train=train)


def test_train_normalizes_with_batch_statistics(device, rng):
    bn = layers.BatchNorm2D(3)
    x = rng.standard_normal((8, 3, 5, 4)) * np.array([1, 5, 0.1]).reshape(1, 3, 1, 1) + 7
    y = xpnn.to_numpy(bn(xpnn.to_device(x, dtype="float32"), train=True)[0])
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)


def test_running_statistics_follow_pytorch_semantics(device, rng):
    bn = layers.BatchNorm1D(4, momentum=0.2)
    x = rng.standard_normal((10, 4)) * 2 + 3
    bn(xpnn.to_device(x, dtype="float32"), train=True)
    mean = xpnn.to_numpy(bn.running_mean)
    var = xpnn.to_numpy(bn.running_var)
    np.testing.assert_allclose(mean, 0.8 * 0 + 0.2 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(var, 0.8 * 1 + 0.2 * x.var(axis=0, ddof=1), rtol=1e-5)  # unbiased
    assert backend.device_of(bn.running_mean) == device
    assert backend.dtype_name(bn.running_var.dtype) == "float32"


def test_eval_uses_running_statistics_and_does_not_update_them(device, rng):
    bn = with_nontrivial_affine(layers.BatchNorm2D(2), rng)
    x = rng.standard_normal((4, 2, 3, 3))
    before = {k: xpnn.to_numpy(v).copy() for k, v in bn.state().items()}
    y = xpnn.to_numpy(bn(xpnn.to_device(x, dtype="float32"), train=False)[0])
    shape = (1, 2, 1, 1)
    expected = ((x - before["running_mean"].reshape(shape)) / np.sqrt(before["running_var"].reshape(shape) + 1e-5)
                * before["gamma"].reshape(shape) + before["beta"].reshape(shape))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    for k, v in bn.state().items():
        np.testing.assert_array_equal(xpnn.to_numpy(v), before[k])


def test_float32_stays_float32(device, rng):
    bn = layers.BatchNorm2D(3)
    x = xpnn.to_device(rng.standard_normal((2, 3, 4, 4)), dtype="float32")
    for train in (True, False):
        y, backprop = bn(x, train=train)
        dx = backprop(y)
        for array in (y, dx, bn.gamma.grad, bn.beta.grad, bn.running_mean, bn.running_var):
            assert backend.dtype_name(array.dtype) == "float32"


def test_state_round_trip(device, rng):
    bn = layers.BatchNorm2D(3)
    for _ in range(3):
        bn(xpnn.to_device(rng.standard_normal((4, 3, 2, 2)) + 2, dtype="float32"), train=True)
    state = bn.state_dict()
    assert set(state) == {"gamma", "beta", "running_mean", "running_var"}
    fresh = layers.BatchNorm2D(**bn.config())
    fresh.load_state_dict(state)
    x = xpnn.to_device(rng.standard_normal((2, 3, 2, 2)), dtype="float32")
    np.testing.assert_array_equal(xpnn.to_numpy(fresh(x)[0]), xpnn.to_numpy(bn(x)[0]))
    assert backend.device_of(fresh.running_mean) == device


def test_state_is_saved_with_a_model(tmp_path, rng):
    model = xpnn.Sequential([layers.Conv2D(1, 2, 3), layers.BatchNorm2D(2), layers.ReLU(), layers.Flatten(),
                             layers.Linear(2 * 4 * 4, 3)])
    x = xpnn.to_device(rng.standard_normal((5, 1, 6, 6)), dtype="float32")
    model(x, train=True)
    path = tmp_path / "model.npz"
    xpnn.save(model, path)
    loaded = xpnn.load(path)
    np.testing.assert_array_equal(xpnn.to_numpy(loaded.layers[1].running_var),
                                  xpnn.to_numpy(model.layers[1].running_var))
    np.testing.assert_array_equal(xpnn.to_numpy(loaded(x)[0]), xpnn.to_numpy(model(x)[0]))


def test_wrong_channel_count():
    with pytest.raises(ShapeError, match=r"BatchNorm2D\(num_features=3.*expects 3 channels \(input shape "
                                         r"\(N, 3, H, W\)\), got 4 \(input shape \(2, 4, 5, 5\)\)"):
        layers.BatchNorm2D(3)(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ShapeError, match=r"BatchNorm1D.*expects a rank-2 input \(N, 3\), got shape \(2, 3, 4\)"):
        layers.BatchNorm1D(3)(np.zeros((2, 3, 4), np.float32))


def test_one_value_per_channel_cannot_train():
    with pytest.raises(ShapeError, match=r"BatchNorm1D.*needs more than one value per channel.*\(1, 3\)"):
        layers.BatchNorm1D(3)(np.zeros((1, 3), np.float32), train=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_features": 0}, "num_features must be a positive integer"),
    ({"momentum": 1.5}, r"momentum must be in \[0, 1\], got 1.5"),
    ({"eps": 0}, "eps must be positive"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.BatchNorm2D(**{"num_features": 3, **kwargs})
