"""MaxPool2D, AvgPool2D, GlobalAvgPool2D: gradients over a sampled grid, ties, shapes, bad input."""
import numpy as np
import pytest

import xpnn
from xpnn import backend, layers
from xpnn.errors import ShapeError
from xpnn.testing import check_layer_gradients

# (kernel, stride, padding, (H, W), batch): non-overlapping and overlapping windows, strides 1-3,
# padding, rectangular windows, odd and even images, batch 1 and > 1.
GRID = [
    (2, None, 0, (6, 4), 2),
    (2, None, 0, (7, 5), 1),
    (3, 1, 1, (5, 6), 2),
    (3, 2, 1, (7, 7), 1),
    (2, 1, 0, (4, 5), 2),
    ((2, 3), (1, 2), (1, 1), (6, 7), 2),
    (5, 3, 2, (8, 9), 1),
    (1, 2, 0, (5, 4), 2),
    ((2, 3), None, 0, (5, 7), 2),
]


def grid_id(case):
    k, s, p, hw, n = case
    return f"k{k}-s{s}-p{p}-{hw[0]}x{hw[1]}-n{n}".replace(" ", "")


def distinct_input(rng, shape):
    """Values at least 1e-3 apart, so finite differences never swap two maxima."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape) * 1e-3 + rng.uniform(0, 1e-4, shape)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_max_pool_gradients(device, rng, case, train):
    k, s, p, (h, w), n = case
    check_layer_gradients(layers.MaxPool2D(k, s, p), distinct_input(rng, (n, 2, h, w)), device, train=train,
                          max_checks=20)


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_avg_pool_gradients(device, rng, case):
    k, s, p, (h, w), n = case
    check_layer_gradients(layers.AvgPool2D(k, s, p), rng.standard_normal((n, 2, h, w)), device, max_checks=20)


def test_global_avg_pool_gradients(device, rng):
    check_layer_gradients(layers.GlobalAvgPool2D(), rng.standard_normal((3, 2, 5, 4)), device)


@pytest.mark.parametrize("kernel, stride", [(2, 2), (2, 1), (3, 1), (3, 2)])
def test_max_pool_ties_send_each_gradient_to_the_first_max(device, kernel, stride):
    """On a constant input every window element ties; the gradient goes to the window's first
    (row-major) element only, as PyTorch does."""
    pool = layers.MaxPool2D(kernel, stride)
    x = xpnn.to_device(np.ones((1, 1, 7, 7)), dtype="float32")
    y, backprop = pool(x, train=True)
    dy = np.arange(1, y.shape[2] * y.shape[3] + 1, dtype=np.float32).reshape(y.shape)
    dx = xpnn.to_numpy(backprop(xpnn.to_device(dy)))
    expected = np.zeros((1, 1, 7, 7), np.float32)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            expected[0, 0, i * stride, j * stride] += dy[0, 0, i, j]
    np.testing.assert_array_equal(dx, expected)
    assert dx.sum() == dy.sum()


def test_max_pool_ties_in_eval_mode_backprop_too(device):
    y, backprop = layers.MaxPool2D(2)(xpnn.to_device(np.zeros((1, 1, 4, 4)), dtype="float32"), train=False)
    dx = xpnn.to_numpy(backprop(xpnn.to_device(np.ones((1, 1, 2, 2)), dtype="float32")))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_max_pool_values(device):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = xpnn.to_numpy(layers.MaxPool2D(2)(xpnn.to_device(x))[0])
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    y = xpnn.to_numpy(layers.MaxPool2D(3, 1, 1)(xpnn.to_device(-x))[0])
    assert y[0, 0, 0, 0] == 0 and y[0, 0, 3, 3] == -10  # the -inf padding never wins


def test_avg_pool_counts_padding(device):
    y = xpnn.to_numpy(layers.AvgPool2D(3, 1, 1)(xpnn.to_device(np.ones((1, 1, 3, 3)), dtype="float32"))[0])
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]], rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: layers.MaxPool2D(2), lambda: layers.AvgPool2D(3, 2, 1),
                                  layers.GlobalAvgPool2D], ids=["max", "avg", "global"])
def test_float32_stays_float32_on_the_device(device, rng, make):
    x = xpnn.to_device(rng.standard_normal((2, 3, 6, 5)), dtype="float32")
    y, backprop = make()(x, train=True)
    dx = backprop(y)
    for array in (y, dx):
        assert backend.dtype_name(array.dtype) == "float32"
        assert backend.device_of(array) == device


@pytest.mark.parametrize("layer, shape, expected", [
    (layers.MaxPool2D(2), (4, 8, 26, 26), (4, 8, 13, 13)),
    (layers.MaxPool2D(2), (4, 8, 7, 7), (4, 8, 3, 3)),
    (layers.MaxPool2D(3, 2, 1), (1, 2, 7, 8), (1, 2, 4, 4)),
    (layers.AvgPool2D((2, 3), (1, 2)), (1, 2, 5, 9), (1, 2, 4, 4)),
    (layers.GlobalAvgPool2D(), (4, 8, 5, 3), (4, 8)),
])
def test_output_shape(layer, shape, expected):
    assert layer.output_shape(shape) == expected
    assert tuple(layer(np.zeros(shape, np.float32))[0].shape) == expected


def test_window_larger_than_input():
    with pytest.raises(ShapeError, match=r"MaxPool2D\(kernel_size=3.*the 3x3 window is larger than the padded "
                                         r"input 2x5 \(input shape \(1, 1, 2, 5\)"):
        layers.MaxPool2D(3)(np.zeros((1, 1, 2, 5), np.float32))


def test_wrong_rank():
    with pytest.raises(ShapeError, match=r"AvgPool2D.*expects a rank-4 input \(N, C, H, W\), got shape \(3, 4\)"):
        layers.AvgPool2D(2)(np.zeros((3, 4), np.float32))
    with pytest.raises(ShapeError, match=r"GlobalAvgPool2D.*expects a rank-4 input"):
        layers.GlobalAvgPool2D()(np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("args, message", [
    ((0,), "MaxPool2D: kernel_size must be an integer >= 1"),
    ((2, 0), "MaxPool2D: stride must be an integer >= 1"),
    ((2, 2, 2), r"MaxPool2D: padding \(2, 2\) must be at most half the kernel size \(2, 2\)"),
])
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        layers.MaxPool2D(*args)


def test_sequential_runs_relu_after_maxpool_with_identical_results(device, rng):
    """Sequential executes [ReLU, MaxPool2D] as MaxPool2D then ReLU: same outputs and gradients."""
    x = rng.standard_normal((2, 3, 6, 6))
    x[0, 0, :2, :2] = -1.0  # a window of tied negatives
    grads = []
    for swapped in (True, False):
        xpnn.seed(0)
        model = xpnn.Sequential([layers.Conv2D(3, 4, 3, padding=1), layers.ReLU(), layers.MaxPool2D(2),
                                 layers.Flatten(), layers.Linear(36, 2)]).to(device, dtype="float64")
        if swapped:
            assert model._order == [0, 2, 1, 3, 4]
        else:
            model._order = list(range(len(model.layers)))
        y, backprop = model(xpnn.to_device(x, device), train=True)
        dx = backprop(xpnn.to_device(np.ones((2, 2)), device))
        grads.append([xpnn.to_numpy(y), xpnn.to_numpy(dx)] + [xpnn.to_numpy(p.grad) for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def first_max_pool_reference(x, kernel, stride):
    """Brute-force max pooling of a NumPy NCHW array and the gradient of sum(y * dy) for a dy of
    ones scaled by position, sending each window's gradient to its first (row-major) maximum.
    ``kernel`` and ``stride`` are (rows, cols) pairs."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.empty((n, c, out_h, out_w), x.dtype)
    dy = np.arange(1, y.size + 1, dtype=x.dtype).reshape(y.shape)
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    window = x[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    r, q = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
                    y[b, ch, i, j] = window[r, q]
                    dx[b, ch, i * sh + r, j * sw + q] += dy[b, ch, i, j]
    return y, dy, dx


# (kernel, stride, (H, W)): the separable path (stride == kernel, no padding: 2x2, 3x3, 2x3 and
# 3x1 windows, with trailing rows/columns the windows do not cover) and overlapping windows
TIE_CASES = [
    ((2, 2), (2, 2), (6, 4)), ((2, 2), (2, 2), (7, 5)), ((2, 2), (2, 2), (2, 3)),
    ((3, 3), (3, 3), (7, 8)), ((2, 3), (2, 3), (5, 7)), ((3, 1), (3, 1), (6, 2)),
    ((2, 2), (1, 1), (5, 4)), ((3, 2), (2, 1), (7, 5)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kernel, stride, hw", TIE_CASES,
                         ids=[f"k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-{hw[0]}x{hw[1]}" for k, s, hw in TIE_CASES])
def test_max_pool_matches_the_first_max_reference_with_many_ties(device, rng, kernel, stride, hw, train):
    """Values drawn from {0, 1, 2}: most windows hold ties, in every arrangement, and trailing
    rows/columns no window covers get no gradient."""
    x = rng.integers(0, 3, (3, 2, *hw)).astype(np.float32)
    x[0, 0, :2, :2] = [[0, 2], [2, 0]]  # a tie that a column-first tournament gets wrong
    expected_y, dy, expected_dx = first_max_pool_reference(x, kernel, stride)
    y, backprop = layers.MaxPool2D(kernel, stride)(xpnn.to_device(x, device), train=train)
    dx = backprop(xpnn.to_device(dy, device))
    assert backend.device_of(dx) == backend.resolve(device)
    np.testing.assert_array_equal(xpnn.to_numpy(y), expected_y)
    np.testing.assert_array_equal(xpnn.to_numpy(dx), expected_dx)


SEPARABLE = [case for case in TIE_CASES if case[0] == case[1]]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kernel, stride, hw", SEPARABLE,
                         ids=[f"k{k[0]}x{k[1]}-{hw[0]}x{hw[1]}" for k, _, hw in SEPARABLE])
def test_max_pool_backward_in_chunks_matches_the_reference(device, rng, kernel, stride, hw, train):
    """Under a workspace limit of two images' scratch the separable backward routes a
    batch of 5 two images at a time (the last chunk one image), into one input-sized dx, with
    trailing rows/columns left at zero; the numerical check passes there too."""
    from xpnn.layers.workspace import workspace

    x = rng.integers(0, 3, (5, 2, *hw)).astype(np.float32)
    expected_y, dy, expected_dx = first_max_pool_reference(x, kernel, stride)
    with workspace(4 * x[0].nbytes):
        y, backprop = layers.MaxPool2D(kernel, stride)(xpnn.to_device(x, device), train=train)
        dx = backprop(xpnn.to_device(dy, device))
        np.testing.assert_array_equal(xpnn.to_numpy(y), expected_y)
        np.testing.assert_array_equal(xpnn.to_numpy(dx), expected_dx)
    with workspace(8 * x[0].nbytes):  # float64 in the numerical check
        check_layer_gradients(layers.MaxPool2D(kernel, stride), distinct_input(rng, (5, 2, *hw)), device,
                              train=train, max_checks=20)
