"""Losses: gradients (float64) on every backend, stability at extreme logits, target checks."""
import numpy as np
import pytest

import xpnn
from xpnn import backend, losses
from xpnn.errors import DataError, ShapeError
from xpnn.testing import check_loss_gradients
from xpnn.validation import check_targets


def test_bce_from_logits_gradient(device, rng):
    check_loss_gradients(losses.BinaryCrossEntropy(), rng.standard_normal((6, 1)) * 3,
                         rng.integers(0, 2, (6, 1)).astype(np.float64), device)


def test_bce_from_probabilities_gradient(device, rng):
    p = rng.uniform(0.05, 0.95, (6, 1))
    check_loss_gradients(losses.BinaryCrossEntropy(from_logits=False), p,
                         rng.integers(0, 2, 6).astype(np.float64), device)


def test_cross_entropy_gradient_integer_labels(device, rng):
    check_loss_gradients(losses.CrossEntropy(), rng.standard_normal((5, 4)) * 2, rng.integers(0, 4, 5), device)


def test_cross_entropy_gradient_one_hot(device, rng):
    labels = rng.integers(0, 4, 5)
    check_loss_gradients(losses.CrossEntropy(), rng.standard_normal((5, 4)), np.eye(4)[labels], device)


def test_mse_gradient(device, rng):
    check_loss_gradients(losses.MeanSquaredError(), rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), device)


def _value(loss, pred, target, dtype="float32"):
    value, backprop = loss(xpnn.to_device(np.asarray(pred), dtype=dtype), xpnn.to_device(np.asarray(target)))
    return float(xpnn.to_numpy(value)), xpnn.to_numpy(backprop())


def test_bce_matches_hand_computation(device):
    z = np.array([[0.5], [-1.0], [2.0]])
    y = np.array([1.0, 0.0, 0.0])
    p = 1 / (1 + np.exp(-z[:, 0]))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    value, grad = _value(losses.BinaryCrossEntropy(), z, y, "float64")
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad[:, 0], (p - y) / 3, rtol=1e-12)
    value_p, _ = _value(losses.BinaryCrossEntropy(from_logits=False), p[:, None], y, "float64")
    assert value_p == pytest.approx(expected, rel=1e-9)


def test_cross_entropy_matches_hand_computation(device):
    z = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
    labels = np.array([2, 0])
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    value, _ = _value(losses.CrossEntropy(), z, labels, "float64")
    assert value == pytest.approx(-(log_p[0, 2] + log_p[1, 0]) / 2, rel=1e-12)


@pytest.mark.parametrize("logit", [150.0, -150.0, 1e4, -1e4])
def test_bce_from_logits_is_stable_far_out(device, logit):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        right, grad_right = _value(losses.BinaryCrossEntropy(), [[logit]], [1.0 if logit > 0 else 0.0])
        wrong, grad_wrong = _value(losses.BinaryCrossEntropy(), [[logit]], [0.0 if logit > 0 else 1.0])
    assert right == pytest.approx(0.0, abs=1e-30)
    assert wrong == pytest.approx(abs(logit), rel=1e-6)
    assert np.isfinite([grad_right, grad_wrong]).all()


def test_bce_from_probabilities_never_takes_log_of_zero(device):
    with np.errstate(divide="raise", invalid="raise"):
        value, grad = _value(losses.BinaryCrossEntropy(from_logits=False), [[0.0], [1.0]], [1.0, 0.0])
    assert np.isfinite(value) and value > 10
    assert np.isfinite(grad).all()


def test_cross_entropy_is_stable_for_huge_logits(device):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grad = _value(losses.CrossEntropy(), [[1000.0, -1000.0, 0.0]], [1])
    assert value == pytest.approx(2000.0, rel=1e-6)
    assert np.isfinite(grad).all()


def test_loss_value_lives_on_device(device):
    value, backprop = losses.CrossEntropy()(xpnn.to_device(np.zeros((2, 3)), dtype="float32"),
                                           xpnn.to_device(np.array([0, 1])))
    assert backend.device_of(value) == device and backend.device_of(backprop()) == device
    assert backend.dtype_name(value.dtype) == "float32"


@pytest.mark.parametrize("loss, y, shape, error, message", [
    (losses.CrossEntropy(), np.array([0, 3, 10]), (3, 10), DataError,
     r"labels in y must be in \[0, 9\] for a model with 10 outputs, got values from 0 to 10"),
    (losses.CrossEntropy(), np.array([-1, 0]), (2, 10), DataError, "got values from -1 to 0"),
    (losses.CrossEntropy(), np.array([0.5, 1.0]), (2, 3), DataError, "must be integer class labels"),
    (losses.CrossEntropy(), np.eye(4)[:2], (2, 3), ShapeError, "one-hot y has 4 columns, the model has 3 outputs"),
    (losses.BinaryCrossEntropy(), np.array([0.0, 2.0]), (2, 1), DataError, r"must be in \[0, 1\], got values from 0.0 to 2.0"),
    (losses.BinaryCrossEntropy(), np.zeros((2, 3)), (2, 1), ShapeError, r"y of shape \(2, 3\) does not match model outputs of shape \(N, 1\)"),
    (losses.MeanSquaredError(), np.array([np.nan, 1.0]), (2, 1), DataError, "y contains 1 NaN/inf value"),
])
def test_bad_targets(loss, y, shape, error, message):
    with pytest.raises(error, match=message):
        check_targets(loss, y, shape)


def test_get_loss_by_name():
    assert isinstance(losses.get_loss("cross_entropy"), losses.CrossEntropy)
    assert losses.get_loss("BinaryCrossEntropy", from_logits=False).from_logits is False
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get_loss("hinge")
