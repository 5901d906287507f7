"""Conv2D: gradients (float64) over a sampled grid of shapes, dtypes, devices, shapes and bad input."""
import numpy as np
import pytest

import xpnn
from xpnn import backend, layers
from xpnn.errors import ShapeError
from xpnn.testing import check_layer_gradients

# (in, out, kernel, stride, padding, dilation, (H, W), batch): kernels 1-5, strides 1-3, paddings
# (int, pair, "valid", "same"), dilations 1-2, odd and even images, batch 1 and > 1.
GRID = [
    (1, 2, 1, 1, 0, 1, (5, 4), 1),
    (2, 3, 2, 1, 0, 1, (6, 5), 2),
    (2, 2, 3, 1, "same", 1, (5, 5), 2),
    (1, 2, 4, 1, "same", 1, (6, 7), 1),
    (2, 2, 5, 2, 2, 1, (7, 8), 2),
    (3, 2, 3, 3, 1, 1, (8, 7), 1),
    (2, 2, 3, 1, "valid", 2, (7, 6), 2),
    (2, 3, (2, 3), (1, 2), (1, 0), (2, 1), (6, 7), 2),
    (1, 1, 3, 2, 0, 1, (4, 4), 3),
    (2, 2, 3, 1, "same", 2, (5, 6), 1),
]


def grid_id(case):
    c_in, c_out, k, s, p, d, hw, n = case
    return f"k{k}-s{s}-p{p}-d{d}-{hw[0]}x{hw[1]}-n{n}".replace(" ", "")


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_gradients(device, rng, case):
    c_in, c_out, k, s, p, d, (h, w), n = case
    conv = layers.Conv2D(c_in, c_out, k, stride=s, padding=p, dilation=d)
    check_layer_gradients(conv, rng.standard_normal((n, c_in, h, w)), device, max_checks=20)


CHUNKED = [  # (in, out, kernel, stride, padding, dilation, (H, W), batch, images per chunk)
    (2, 3, 3, 2, 1, 1, (6, 5), 3, 1),
    (2, 3, 3, 1, "same", 2, (7, 6), 5, 2),
    (3, 2, (2, 3), (1, 2), (1, 0), (2, 1), (6, 7), 7, 3),
]


@pytest.mark.parametrize("case", CHUNKED, ids=[f"chunk{c[-1]}-of-{c[-2]}" for c in CHUNKED])
def test_chunked_columns_match_the_whole_batch(device, rng, case):
    """Under a workspace limit the columns are built a few images at a time, forward and backward
    (batches that are not a multiple of the chunk, strides, dilations, paddings): same outputs and
    gradients as the whole batch at once, and the numerical check passes."""
    from xpnn.layers.workspace import workspace

    *shape, images = case
    c_in, c_out, k, s, p, d, (h, w), n = shape
    conv = layers.Conv2D(c_in, c_out, k, stride=s, padding=p, dilation=d).to(device, dtype="float64")
    x = xpnn.to_device(rng.standard_normal((n, c_in, h, w)), device)
    rows = c_in * conv.kernel_size[0] * conv.kernel_size[1] + 1
    out_hw = conv.output_shape(tuple(x.shape))[2:]
    results = []
    for limit in (2 ** 30, images * rows * out_hw[0] * out_hw[1] * 8):
        with workspace(limit):
            y, backprop = conv(x, train=True)
            dx = backprop(y)
        results.append([xpnn.to_numpy(a) for a in (y, dx, conv.weight.grad, conv.bias.grad)])
        conv.weight.grad = conv.bias.grad = None
    for whole, chunked in zip(*results):
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
    with workspace(images * rows * out_hw[0] * out_hw[1] * 8):
        check_layer_gradients(conv, xpnn.to_numpy(x), device, max_checks=20)


def test_workspace_limit_is_checked_and_restored():
    from xpnn.layers import workspace as ws

    before = ws.workspace_limit()
    for bad in (0, -1, 1.5, True, "1G"):
        with pytest.raises(ValueError, match=r"set_workspace_limit: nbytes \(the workspace limit in bytes\) must be a positive integer"):
            ws.set_workspace_limit(bad)
        assert ws.workspace_limit() == before
    with ws.workspace(1234):
        assert ws.workspace_limit() == 1234
    assert ws.workspace_limit() == before


def test_gradients_without_bias(device, rng):
    conv = layers.Conv2D(2, 3, 3, padding=1, bias=False)
    assert [p.name for p in conv.parameters()] == ["weight"]
    check_layer_gradients(conv, rng.standard_normal((2, 2, 5, 4)), device, max_checks=20)


def test_matches_direct_convolution(device, rng):
    """Against a plain per-pixel loop, on a strided, dilated, padded case."""
    conv = layers.Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    y = xpnn.to_numpy(conv(xpnn.to_device(x), train=False)[0])
    w, b = xpnn.to_numpy(conv.weight.value), xpnn.to_numpy(conv.bias.value)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    expected = np.zeros(y.shape, np.float32)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            patch = padded[:, :, 2 * i:2 * i + 3, j:j + 3:2]
            expected[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_float32_stays_float32_on_the_device(device, rng):
    conv = layers.Conv2D(3, 4, 3, padding="same")
    x = xpnn.to_device(rng.standard_normal((2, 3, 6, 5)), dtype="float32")
    y, backprop = conv(x, train=True)
    dx = backprop(y)
    for array in (y, dx, conv.weight.grad, conv.bias.grad):
        assert backend.dtype_name(array.dtype) == "float32"
        assert backend.device_of(array) == device


def test_input_grad_false_skips_dx_but_not_weights(device, rng):
    conv = layers.Conv2D(1, 2, 3)
    y, backprop = conv(xpnn.to_device(rng.standard_normal((2, 1, 5, 5)), dtype="float32"), train=True,
                       input_grad=False)
    assert backprop(y) is None
    assert conv.weight.grad is not None and conv.bias.grad is not None


def test_gradients_accumulate_over_calls(rng):
    conv = layers.Conv2D(1, 2, 3)
    x = xpnn.to_device(rng.standard_normal((2, 1, 5, 5)), dtype="float32")
    for _ in range(2):
        y, backprop = conv(x, train=True)
        backprop(y)
    once = layers.Conv2D(1, 2, 3)
    once.weight.value = conv.weight.value
    y, backprop = once(x, train=True)
    backprop(y)
    np.testing.assert_allclose(xpnn.to_numpy(conv.weight.grad), 2 * xpnn.to_numpy(once.weight.grad), rtol=1e-6)


def test_he_initialization_and_weight_layout():
    xpnn.seed(0)
    conv = layers.Conv2D(16, 32, (3, 5))
    w = xpnn.to_numpy(conv.weight.value)
    assert w.shape == (32, 16, 3, 5) and w.dtype == np.float32
    assert abs(w.std() / np.sqrt(2 / (16 * 15)) - 1) < 0.05
    np.testing.assert_array_equal(xpnn.to_numpy(conv.bias.value), 0)


@pytest.mark.parametrize("args, kwargs, shape, expected", [
    ((1, 8, 3), {}, (4, 1, 28, 28), (4, 8, 26, 26)),
    ((1, 32, 3), {"padding": "same"}, (4, 1, 28, 28), (4, 32, 28, 28)),
    ((3, 4, 4), {"padding": "same", "dilation": 2}, (1, 3, 9, 8), (1, 4, 9, 8)),
    ((3, 4, (3, 1)), {"stride": 2, "padding": (1, 0)}, (2, 3, 7, 6), (2, 4, 4, 3)),
    ((3, 4, 5), {"stride": 3}, (2, 3, 5, 11), (2, 4, 1, 3)),
])
def test_output_shape(args, kwargs, shape, expected):
    conv = layers.Conv2D(*args, **kwargs)
    assert conv.output_shape(shape) == expected
    assert tuple(conv(np.zeros(shape, np.float32))[0].shape) == expected


def test_summary_shows_conv_and_pool_shapes():
    model = xpnn.Sequential([layers.Conv2D(1, 8, 3), layers.MaxPool2D(2), layers.Flatten(), layers.Linear(1352, 10)])
    text = model.summary(input_shape=(1, 28, 28), print_fn=None)
    for shape in ("(N, 8, 26, 26)", "(N, 8, 13, 13)", "(N, 1352)", "(N, 10)"):
        assert shape in text


def test_wrong_channel_count_names_layer_and_shapes():
    conv = layers.Conv2D(3, 8, 3)
    with pytest.raises(ShapeError, match=r"Conv2D\(in_channels=3, out_channels=8.*expects 3 input channels "
                                         r"\(input shape \(N, 3, H, W\)\), got 1 \(input shape \(2, 1, 28, 28\)\)"):
        conv(np.zeros((2, 1, 28, 28), np.float32))


def test_kernel_larger_than_padded_input():
    conv = layers.Conv2D(1, 2, 5, padding=1)
    with pytest.raises(ShapeError, match=r"Conv2D\(.*kernel_size=5.*the 5x5 window is larger than the padded "
                                         r"input 4x6 \(input shape \(1, 1, 2, 4\), padding"):
        conv(np.zeros((1, 1, 2, 4), np.float32))


def test_wrong_rank():
    with pytest.raises(ShapeError, match=r"expects a rank-4 input \(N, 1, H, W\), got shape \(28, 28\)"):
        layers.Conv2D(1, 2, 3)(np.zeros((28, 28), np.float32))


def test_linear_after_flatten_with_wrong_size_is_caught_when_built():
    model = xpnn.Sequential([layers.Conv2D(1, 8, 3), layers.MaxPool2D(2), layers.Flatten(), layers.Linear(1000, 10)])
    with pytest.raises(ShapeError, match=r"Linear\(in_features=1000.*got 1352"):
        model.build((1, 28, 28))


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 0}, "in_channels must be a positive integer, got 0"),
    ({"kernel_size": 0}, r"kernel_size must be an integer >= 1 or a pair of them, got 0"),
    ({"kernel_size": (3, 3, 3)}, r"kernel_size must be an integer >= 1 or a pair of them, got \(3, 3, 3\)"),
    ({"stride": 0}, "stride must be an integer >= 1"),
    ({"padding": -1}, "padding must be an integer >= 0"),
    ({"padding": "full"}, "padding must be an int, a pair, 'valid' or 'same', got 'full'"),
    ({"padding": "same", "stride": 2}, r"padding='same' needs stride 1, got stride \(2, 2\)"),
    ({"dilation": (1, 0)}, "dilation must be an integer >= 1"),
])
def test_bad_arguments(kwargs, message):
    args = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        layers.Conv2D(**args)


def test_config_rebuilds_the_layer():
    conv = layers.Conv2D(2, 4, (3, 2), stride=(1, 2), padding=(1, 0), dilation=2, bias=False)
    again = layers.Conv2D(**conv.config())
    assert again.config() == conv.config()
    assert again.output_shape((1, 2, 9, 9)) == conv.output_shape((1, 2, 9, 9))
