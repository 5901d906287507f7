"""What a training step keeps alive for backward, and for how long.

Each layer's backprop keeps its input or less (a convolution its input, not the kh*kw times larger
im2col columns; masks as one byte a value); a container frees each child's saved arrays once that
child's gradient is out; and in ``fit`` no array of one step is alive when the next forward starts.
"""
import weakref

import numpy as np
import pytest

import xpnn
from xpnn import layers
from xpnn.testing import retained_bytes


@pytest.fixture
def x(rng):
    return xpnn.to_device(rng.standard_normal((8, 16, 20, 20)), dtype="float32")


def test_conv_keeps_its_input_not_its_columns(x):
    conv = layers.Conv2D(16, 16, 3, padding=1)
    _, backprop = conv(x, train=True)
    kept = retained_bytes(backprop, conv)
    columns = 9 * x.nbytes
    assert x.nbytes <= kept <= x.nbytes + 2 * conv.weight.value.nbytes, (kept, x.nbytes, columns)


def test_masks_are_kept_as_one_byte_a_value(x):
    dropout = layers.Dropout(0.5)
    _, backprop = dropout(x, train=True)
    assert retained_bytes(backprop, dropout) == x.size  # bool: a quarter of float32
    _, backprop = layers.MaxPool2D(2)(x, train=True)
    assert retained_bytes(backprop) <= x.size  # the tournament's decisions, bool


def test_max_pool_backward_holds_one_input_sized_array_at_a_time(x):
    """The separable max-pool backward routes a few images at a time under the workspace limit:
    its peak above dy is the input gradient and a chunk's temporaries, not two input-sized arrays."""
    import tracemalloc

    from xpnn.layers.workspace import workspace

    pool = layers.MaxPool2D(2)
    y, backprop = pool(x, train=True)
    dy = xpnn.to_device(np.ones(tuple(y.shape)), dtype="float32")
    with workspace(x.nbytes // 4):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            dx = backprop(dy)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert dx.nbytes == x.nbytes
    assert peak <= 1.5 * x.nbytes, (peak, x.nbytes)  # two input-sized arrays at once would be 2.0


def test_relu_keeps_only_its_output_which_the_next_layer_keeps_too(x):
    """ReLU then a convolution: the two backprops together keep one array, ReLU's output."""
    relu, conv = layers.ReLU(), layers.Conv2D(16, 4, 3)
    y, relu_backprop = relu(x, train=True)
    assert retained_bytes(relu_backprop) == y.nbytes
    _, conv_backprop = conv(y, train=True)
    assert retained_bytes([relu_backprop, conv_backprop], conv) <= y.nbytes + 2 * conv.weight.value.nbytes


def test_batchnorm_keeps_its_normalized_input_once(x):
    bn = layers.BatchNorm2D(16)
    _, backprop = bn(x, train=True)
    assert x.nbytes <= retained_bytes(backprop, bn) <= x.nbytes + 1024


def test_residual_add_keeps_nothing(x):
    block = layers.Residual([layers.Dropout(0.5)])  # identity shortcut, no activation after the add
    _, backprop = block(x, train=True)
    assert retained_bytes(backprop, block) == x.size  # the body's dropout mask, nothing for the add


def test_sequential_frees_each_layer_once_its_gradient_is_out(x):
    """Backward drops each child's backprop after it ran; a second backward pass is refused."""
    model = xpnn.Sequential([layers.Conv2D(16, 4, 3), layers.ReLU(), layers.Flatten(), layers.Linear(4 * 18 * 18, 2)])
    out, backprop = model(x, train=True)
    kept = retained_bytes(backprop, model)
    assert kept > x.nbytes
    backprop(xpnn.to_device(np.ones(tuple(out.shape)), dtype="float32"))
    assert retained_bytes(backprop, model) == 0
    with pytest.raises(RuntimeError, match="backprop already ran, and released what the forward kept"):
        backprop(out)


class Probe(layers.Layer):
    """Passes its input through; its backprop keeps a fresh array, watched by a weak reference."""

    def __init__(self) -> None:
        self.saved: list[weakref.ref] = []
        self.alive_at_forward: list[int] = []

    def forward(self, x, *, train, input_grad):
        self.alive_at_forward.append(sum(ref() is not None for ref in self.saved))
        saved = x * 1.0
        self.saved.append(weakref.ref(saved))

        def backprop(dy):
            assert saved.shape == dy.shape
            return dy

        return x, backprop


def test_fit_keeps_no_previous_step_alive(rng):
    probe = Probe()
    model = xpnn.Sequential([layers.Linear(4, 8), probe, layers.ReLU(), layers.Linear(8, 2)])
    x, y = rng.standard_normal((24, 4)).astype(np.float32), rng.integers(0, 2, 24)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert len(probe.alive_at_forward) == 12
    assert probe.alive_at_forward == [0] * 12


def _measured_step(model, x):
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out, backprop = model(x, train=True, input_grad=False)
        backprop(xpnn.to_device(np.ones(tuple(out.shape)), dtype="float32"))
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_memory_estimate_is_within_a_fifth_of_the_measured_step(rng, checkpoint):
    from xpnn import zoo

    model = zoo.resnet((3, 32, 32), 2, widths=(8, 16), blocks=(1, 1), checkpoint=checkpoint)
    estimate = layers.memory_estimate(model, 24, (3, 32, 32))
    x = xpnn.to_device(rng.standard_normal((24, 3, 32, 32)), dtype="float32")
    measured = _measured_step(model, x)
    assert 0.8 <= (estimate.step - estimate.optimizer_state) / measured <= 1.2, (estimate, measured)
    assert estimate.gradients == 4 * model.count_params() and estimate.optimizer_state == 0
    with_adam = layers.memory_estimate(model, 24, (3, 32, 32), xpnn.optim.Adam(lr=1e-3))
    assert with_adam.optimizer_state == 2 * estimate.gradients
    assert f"training memory at batch size 24: {estimate.total / 2 ** 20:,.1f} MiB" in \
        model.summary((3, 32, 32), print_fn=None, batch_size=24)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_memory_estimate_needs_a_positive_batch_size(bad):
    with pytest.raises(ValueError, match="memory_estimate: batch_size must be a positive integer"):
        layers.memory_estimate(xpnn.mlp([4, 3]), bad, (4,))


class FakeCupyOutOfMemory(MemoryError):
    """What CuPy raises when its pool cannot allocate (``cupy.cuda.memory.OutOfMemoryError``)."""


FakeCupyOutOfMemory.__module__ = "cupy.cuda.memory"
FakeCupyOutOfMemory.__name__ = "OutOfMemoryError"


@pytest.fixture
def memory_runs_out(monkeypatch):
    """Conv2D's training forward raises CuPy's out-of-memory error at its ``at``-th call (the memory
    estimate's dry runs, on zero weights, are not counted and do not fail)."""
    calls = {"n": 0, "at": None}
    forward = layers.Conv2D.forward

    def failing(self, x, *, train, input_grad):
        if train and np.any(xpnn.to_numpy(self.weight.value)):
            calls["n"] += 1
            if calls["n"] == calls["at"]:
                raise FakeCupyOutOfMemory("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes).")
        return forward(self, x, train=train, input_grad=input_grad)

    monkeypatch.setattr(layers.Conv2D, "forward", failing)
    return calls


def test_fit_out_of_memory_says_what_fits(rng, memory_runs_out):
    from xpnn import zoo
    from xpnn.errors import OutOfMemoryError

    model = zoo.tutorial_cnn()
    x, y = rng.random((40, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 40)
    memory_runs_out["at"] = 3
    with pytest.raises(OutOfMemoryError) as caught:
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    text = str(caught.value)
    assert text.startswith("out of memory on cpu in epoch 1 at batch size 16: a training step needs about ")
    assert "MiB (estimate) and " in text and "MiB are free; batch size " in text and " fits." in text
    assert "\n" not in text and caught.value.__cause__ is None
    assert model.predict(x[:4]).shape == (4, 10)  # the model is usable: nothing of the failed step is left


def test_train_out_of_memory_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, memory_runs_out):
    import json

    from xpnn.cli import main

    memory_runs_out["at"] = 5  # three steps an epoch: the second epoch's second step
    code = main(["train", "--model", "tutorial-cnn", "--epochs", "2", "--limit", "200", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xpnn: error: out of memory on cpu in epoch 2 at batch size 64"), err
    assert "batch size" in lines[0] and "fits" in lines[0] and "Traceback" not in err
    assert "The last good checkpoint" in lines[0] and "end of epoch 1" in lines[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "out of memory"
    _, _, meta = xpnn.load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert meta["epoch"] == 1


def test_memory_estimate_draws_nothing_from_the_generators():
    """The dry run's dropout must not move the host stream (a resumed run continues it exactly)."""
    from xpnn import zoo

    model = zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1), dropout=0.5)
    xpnn.seed(11)
    expected = xpnn.backend.host_rng().random(3)
    xpnn.seed(11)
    layers.memory_estimate(model, 8, (3, 16, 16))
    np.testing.assert_array_equal(xpnn.backend.host_rng().random(3), expected)
