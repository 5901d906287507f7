"""Forward values and every gradient against PyTorch (float64), where PyTorch is installed."""
import numpy as np
import pytest

import xpnn
from xpnn import layers

torch = pytest.importorskip("torch")
F = torch.nn.functional


def run_xpnn(layer, x, dy, train=True):
    y, backprop = layer(xpnn.to_device(x), train=train)
    dx = backprop(xpnn.to_device(dy))
    return xpnn.to_numpy(y), xpnn.to_numpy(dx)


def run_torch(fn, x, dy, *params):
    xt = torch.tensor(x, requires_grad=True)
    pt = [torch.tensor(xpnn.to_numpy(p), requires_grad=True) for p in params]
    yt = fn(xt, *pt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), [p.grad.numpy() for p in pt]


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel, stride, padding, dilation, bias", [
    (3, 1, 0, 1, True),
    (3, 1, "same", 1, True),
    (4, 1, "same", 1, False),
    (5, 2, 2, 1, True),
    ((2, 3), (3, 1), (1, 0), (2, 1), True),
    (3, 2, 1, 2, True),
    (1, 1, 0, 1, True),
])
def test_conv2d(rng, kernel, stride, padding, dilation, bias):
    conv = layers.Conv2D(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, dtype="float64")
    x = rng.standard_normal((2, 3, 9, 8))
    y, dx = run_xpnn(conv, x, dy := rng.standard_normal(conv.output_shape(x.shape)))
    params = [conv.weight.value] + ([conv.bias.value] if bias else [])
    y_t, dx_t, grads_t = run_torch(
        lambda xt, w, b=None: F.conv2d(xt, w, b, stride=stride, padding=padding, dilation=dilation), x, dy, *params)
    close(y, y_t)
    close(dx, dx_t)
    close(xpnn.to_numpy(conv.weight.grad), grads_t[0])
    if bias:
        close(xpnn.to_numpy(conv.bias.grad), grads_t[1])


POOLS = [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (2, 1), (1, 1)), (2, 1, 0)]


@pytest.mark.parametrize("kernel, stride, padding", POOLS)
@pytest.mark.parametrize("values", ["random", "ties"])
def test_max_pool2d(rng, kernel, stride, padding, values):
    x = rng.standard_normal((2, 3, 7, 8)) if values == "random" else rng.integers(0, 2, (2, 3, 7, 8)).astype(float)
    pool = layers.MaxPool2D(kernel, stride, padding)
    y, dx = run_xpnn(pool, x, dy := rng.standard_normal(pool.output_shape(x.shape)))
    y_t, dx_t, _ = run_torch(lambda xt: F.max_pool2d(xt, kernel, stride, padding), x, dy)
    close(y, y_t)
    close(dx, dx_t)


@pytest.mark.parametrize("kernel, stride, padding", POOLS)
def test_avg_pool2d(rng, kernel, stride, padding):
    x = rng.standard_normal((2, 3, 7, 8))
    pool = layers.AvgPool2D(kernel, stride, padding)
    y, dx = run_xpnn(pool, x, dy := rng.standard_normal(pool.output_shape(x.shape)))
    y_t, dx_t, _ = run_torch(lambda xt: F.avg_pool2d(xt, kernel, stride, padding), x, dy)
    close(y, y_t)
    close(dx, dx_t)


def test_global_avg_pool2d(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    y, dx = run_xpnn(layers.GlobalAvgPool2D(), x, dy := rng.standard_normal((2, 3)))
    y_t, dx_t, _ = run_torch(lambda xt: F.adaptive_avg_pool2d(xt, 1).flatten(1), x, dy)
    close(y, y_t)
    close(dx, dx_t)


@pytest.mark.parametrize("make, shape", [(lambda: layers.BatchNorm1D(4, momentum=0.3), (6, 4)),
                                         (lambda: layers.BatchNorm2D(3), (4, 3, 5, 2))], ids=["1d", "2d"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_norm(rng, make, shape, train):
    bn = make().to(dtype="float64")
    c = shape[1]
    bn.gamma.value = rng.uniform(0.5, 2, c)
    bn.beta.value = rng.standard_normal(c)
    bn.running_mean, bn.running_var = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    running_t = [torch.tensor(bn.running_mean), torch.tensor(bn.running_var)]
    x = rng.standard_normal(shape) * 2 + 1
    y, dx = run_xpnn(bn, x, dy := rng.standard_normal(shape), train=train)
    y_t, dx_t, (dgamma_t, dbeta_t) = run_torch(
        lambda xt, g, b: F.batch_norm(xt, *running_t, g, b, training=train, momentum=bn.momentum, eps=bn.eps),
        x, dy, bn.gamma.value, bn.beta.value)
    close(y, y_t)
    close(dx, dx_t)
    close(xpnn.to_numpy(bn.gamma.grad), dgamma_t)
    close(xpnn.to_numpy(bn.beta.grad), dbeta_t)
    close(xpnn.to_numpy(bn.running_mean), running_t[0].numpy())
    close(xpnn.to_numpy(bn.running_var), running_t[1].numpy())
