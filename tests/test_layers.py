"""Dense layers and activations: gradients (float64), devices, dtypes and bad input."""
import json

import numpy as np
import pytest

import xpnn
from xpnn import backend, layers
from xpnn.errors import ShapeError
from xpnn.testing import check_layer_gradients

LAYERS = {
    "linear": lambda: layers.Linear(5, 3),
    "linear-nobias": lambda: layers.Linear(5, 4, bias=False),
    "relu": layers.ReLU,
    "leaky_relu": lambda: layers.LeakyReLU(0.1),
    "sigmoid": layers.Sigmoid,
    "tanh": layers.Tanh,
    "softmax": layers.Softmax,
    "gelu": layers.GELU,
    "flatten": layers.Flatten,
    "dropout-eval": lambda: layers.Dropout(0.5),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients(device, name, rng):
    x = rng.standard_normal((4, 5))
    if name in ("relu", "leaky_relu"):
        x[np.abs(x) < 1e-3] = 0.5  # finite differences are wrong at the kink
    check_layer_gradients(LAYERS[name](), x, device)


def test_flatten_gradients_on_images(device, rng):
    check_layer_gradients(layers.Flatten(), rng.standard_normal((2, 3, 4, 5)), device)


@pytest.mark.parametrize("name", list(LAYERS))
def test_float32_in_float32_out(device, name, rng):
    layer = LAYERS[name]()
    x = xpnn.to_device(rng.standard_normal((4, 5)), dtype="float32")
    y, backprop = layer(x, train=True)
    dx = backprop(y)
    assert backend.dtype_name(y.dtype) == "float32"
    assert backend.dtype_name(dx.dtype) == "float32"
    for p in layer.parameters():
        assert backend.dtype_name(p.grad.dtype) == "float32"
        assert backend.device_of(p.grad) == device


def test_sigmoid_is_stable_for_huge_inputs(device):
    x = xpnn.to_device(np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]]), dtype="float32")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = xpnn.to_numpy(layers.Sigmoid()(x)[0])
    np.testing.assert_allclose(y, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)


def test_softmax_rows_sum_to_one_with_large_logits(device):
    x = xpnn.to_device(np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]]), dtype="float32")
    y = xpnn.to_numpy(layers.Softmax()(x)[0])
    np.testing.assert_allclose(y.sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert np.isfinite(y).all()


def test_gelu_matches_reference_values():
    y = xpnn.to_numpy(layers.GELU()(np.array([-3.0, -1.0, 0.0, 1.0, 3.0]))[0])
    # PyTorch gelu(approximate="tanh")
    np.testing.assert_allclose(y, [-0.0036373921, -0.1588080094, 0.0, 0.8411919906, 2.9963626079], rtol=1e-8)


def test_dropout_is_inverted_and_train_only(device):
    x = xpnn.to_device(np.ones((200, 50)), dtype="float32")
    drop = layers.Dropout(0.3)
    y_eval, _ = drop(x, train=False)
    np.testing.assert_array_equal(xpnn.to_numpy(y_eval), 1.0)
    y, backprop = drop(x, train=True)
    values = xpnn.to_numpy(y)
    kept = values != 0
    np.testing.assert_allclose(values[kept], 1 / 0.7, rtol=1e-6)
    assert 0.65 < kept.mean() < 0.75
    assert backend.device_of(y) == device
    dx = xpnn.to_numpy(backprop(x))
    np.testing.assert_array_equal(dx != 0, kept)


def test_dropout_gradient_uses_the_same_mask(device, rng):
    drop = layers.Dropout(0.5)
    x = xpnn.to_device(rng.standard_normal((6, 7)), dtype="float64")
    y, backprop = drop(x, train=True)
    dy = xpnn.to_device(rng.standard_normal((6, 7)), dtype="float64")
    # y = x * mask, so dx = dy * mask = dy * y / x
    np.testing.assert_allclose(xpnn.to_numpy(backprop(dy)),
                               xpnn.to_numpy(dy) * xpnn.to_numpy(y) / xpnn.to_numpy(x), rtol=1e-12)


def test_linear_skips_input_gradient_when_not_needed(device, rng):
    layer = layers.Linear(5, 3)
    y, backprop = layer(xpnn.to_device(rng.standard_normal((4, 5)), dtype="float32"), train=True, input_grad=False)
    assert backprop(y) is None
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("init", ["he", "he_uniform", "glorot", "glorot_normal", "lecun", "normal"])
def test_initializer_scales(init):
    xpnn.seed(0)
    w = xpnn.to_numpy(layers.Linear(400, 300, init=init).weight.value)
    expected = {"he": np.sqrt(2 / 400), "he_uniform": np.sqrt(2 / 400), "glorot": np.sqrt(2 / 700),
                "glorot_normal": np.sqrt(2 / 700), "lecun": np.sqrt(1 / 400), "normal": 0.01}[init]
    assert abs(w.std() / expected - 1) < 0.03
    assert w.dtype == np.float32


def test_linear_wrong_feature_count():
    with pytest.raises(ShapeError, match=r"Linear\(in_features=5, out_features=3.*expects 5 input features.*got 4"):
        layers.Linear(5, 3)(np.ones((2, 4), dtype=np.float32))


def test_linear_wrong_rank():
    with pytest.raises(ShapeError, match=r"expects a rank-2 input \(N, 5\), got shape \(2, 1, 5\)"):
        layers.Linear(5, 3)(np.ones((2, 1, 5), dtype=np.float32))


@pytest.mark.parametrize("args, message", [
    ((0, 3), "in_features must be a positive integer, got 0"),
    ((5, 2.5), "out_features must be a positive integer, got 2.5"),
])
def test_linear_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        layers.Linear(*args)


def test_layer_sizes_take_numpy_integers_and_refuse_bools():
    """One integer check (xpnn.validation.check_integer) for every layer: a NumPy integer is kept as a
    Python int, so the layer's config stays JSON; True is no size."""
    sizes = np.arange(1, 5)
    linear, conv, norm = layers.Linear(sizes[2], sizes[1]), layers.Conv2D(sizes[0], sizes[3], 3), \
        layers.BatchNorm2D(sizes[1])
    assert [type(v) for v in (linear.in_features, conv.out_channels, norm.num_features)] == [int] * 3
    assert json.dumps(linear.config())
    for build, message in ((lambda: layers.BatchNorm1D(True), "BatchNorm1D: num_features must be a positive integer, "
                                                               "got True"),
                           (lambda: layers.Conv2D(2, 0, 3), "Conv2D: out_channels must be a positive integer, got 0")):
        with pytest.raises(ValueError, match=message):
            build()


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match=r"Dropout: p .* must be in \[0, 1\), got 1.0"):
        layers.Dropout(1.0)
    with pytest.raises(ValueError, match="LeakyReLU: alpha must be in"):
        layers.LeakyReLU(-1)
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        layers.Linear(3, 3, init="xavier")
