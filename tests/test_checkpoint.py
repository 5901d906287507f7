"""Checkpointed blocks: keep only the input, run again inside backward, same gradients as plain."""
import numpy as np
import pytest

import xpnn
from xpnn import layers, zoo
from xpnn.testing import retained_bytes


def _step(model, x, y):
    """One training step's outputs and gradients (no update), as host arrays."""
    for p in model.parameters():
        p.grad = None
    out, backprop = model(x, train=True, input_grad=True)
    value, dloss = xpnn.losses.CrossEntropy()(out, y)
    dx = backprop(dloss())
    return [xpnn.to_numpy(a) for a in (out, dx, *(p.grad for p in model.parameters()))]


def _pair(build):
    xpnn.seed(3)
    plain = build(False)
    xpnn.seed(3)
    return plain, build(True)


def _assert_same(plain, checkpointed, exact):
    for a, b in zip(plain, checkpointed):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_checkpointed_resnet_matches_the_plain_one(device, rng):
    """Outputs and every gradient equal (bit for bit on NumPy); BatchNorm's running statistics
    are updated once per step, not again by the second run."""
    plain, checkpointed = _pair(lambda flag: zoo.resnet((3, 16, 16), 3, widths=(4, 8), blocks=(1, 1),
                                                        checkpoint=flag).to(device))
    x = xpnn.to_device(rng.standard_normal((4, 3, 16, 16)), device, dtype="float32")
    y = xpnn.to_device(np.array([0, 1, 2, 1]), device)
    xpnn.seed(5)
    expected = _step(plain, x, y)
    xpnn.seed(5)
    got = _step(checkpointed, x, y)
    exact = device.name == "cpu"
    _assert_same(expected, got, exact)
    _assert_same([xpnn.to_numpy(v) for v in plain.named_state().values()],
                 [xpnn.to_numpy(v) for v in checkpointed.named_state().values()], exact)


def test_second_run_sees_the_same_dropout_masks(device, rng):
    def build(flag):
        block = xpnn.Sequential([layers.Linear(6, 16), layers.Dropout(0.5), layers.ReLU(), layers.Linear(16, 6)],
                                checkpoint=flag)
        return xpnn.Sequential([layers.Linear(5, 6), layers.ReLU(), block, layers.Dropout(0.3),
                                layers.Linear(6, 3)]).to(device)

    plain, checkpointed = _pair(build)
    x = xpnn.to_device(rng.standard_normal((8, 5)), device, dtype="float32")
    y = xpnn.to_device(rng.integers(0, 3, 8), device)
    xpnn.seed(7)
    expected = _step(plain, x, y)
    after_plain = xpnn.to_numpy(xpnn.backend.random_uniform((4,), like=x))
    xpnn.seed(7)
    got = _step(checkpointed, x, y)
    _assert_same(expected, got, exact=device.name == "cpu")
    if device.name == "cpu":  # the replay leaves the stream where the first run left it
        np.testing.assert_array_equal(xpnn.to_numpy(xpnn.backend.random_uniform((4,), like=x)), after_plain)


def test_checkpointed_block_keeps_only_its_input(rng):
    block = zoo.basic_block(8, 8, checkpoint=True)
    x = xpnn.to_device(rng.standard_normal((4, 8, 12, 12)), dtype="float32")
    _, backprop = block(x, train=True)
    assert retained_bytes(backprop, block) == x.nbytes
    _, plain_backprop = zoo.basic_block(8, 8)(x, train=True)
    assert retained_bytes(plain_backprop) > 4 * x.nbytes


def test_checkpoint_is_saved_with_the_architecture(tmp_path):
    model = zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1), checkpoint=True)
    xpnn.save(model, tmp_path / "m.npz")
    again = xpnn.load(tmp_path / "m.npz")
    assert [type(layer).__name__ for _, layer in again.walk() if getattr(layer, "checkpoint", False)] == \
        ["Residual", "Residual"]
    assert "checkpointed" in again.summary((3, 16, 16), print_fn=None)
    assert "checkpoint" not in str(zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1)).config())


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_checkpoint_flag_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="checkpoint must be True or False"):
        layers.Residual([layers.ReLU()], checkpoint=bad)
    with pytest.raises(TypeError, match="Sequential: checkpoint must be True or False"):
        xpnn.Sequential([layers.ReLU()], checkpoint=bad)
