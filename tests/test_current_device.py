"""CuPy's device rules on the CPU: the work on a model runs with the model's device made current,
and a training step never waits for the device.

:mod:`xpnn.instrumented` allocates where the *current* device is (ignoring ``device=``, as CuPy
under array-api-compat does) and refuses arrays of another device, so a model on its second
device, used while the first is current, fails wherever xpnn forgets to make the model's device
current. It also counts host reads (``float()``, ``bool()``, ``to_numpy``, boolean masks).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import pytest

import xpnn
from xpnn import backend, distributed, instrumented, layers, losses, optim
from xpnn.data import transforms
from xpnn.train import inputs, loop


@pytest.fixture
def xp():
    return instrumented.make(devices=2)


def _cnn():
    return xpnn.Sequential([layers.Conv2D(3, 4, 3, padding="same"), layers.BatchNorm2D(4), layers.ReLU(),
                            layers.MaxPool2D(2), layers.Flatten(), layers.Dropout(0.2), layers.Linear(4 * 4 * 4, 3)])


def _data(n=12):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 3, n)


def _augment():
    return transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(8, padding=1),
                               transforms.ColorJitter(brightness=0.2, contrast=0.2)])


def test_a_bare_layer_on_another_device_than_the_current_one_is_refused(xp):
    """The stand-in catches what array-api-strict cannot: work on device 1 while device 0 is current."""
    second = backend.Device.from_namespace(xp, xp.devices[1])
    layer = layers.Conv2D(3, 4, 3).to(second)
    x = backend.to_device(np.zeros((2, 3, 5, 5)), second, dtype="float32")
    assert xp.current() is xp.devices[0]
    with pytest.raises(instrumented.DeviceMismatch, match="on FakeDevice\\(1\\) but the current device is "
                                                          "FakeDevice\\(0\\)"):
        layer(x)
    with backend.native_device_context(second):
        layer(x)


def test_native_device_context_makes_the_device_current_in_its_library_only(xp):
    """use_device changes xpnn's active device and its library's current one; native_device_context
    (also called device_context) only the latter."""
    second = backend.Device.from_namespace(xp, xp.devices[1])
    active = xpnn.get_device()
    assert backend.device_context is backend.native_device_context
    with backend.native_device_context(second):
        assert xp.current() is xp.devices[1] and xpnn.get_device() == active
    with xpnn.use_device(second):
        assert xp.current() is xp.devices[1] and backend.current_device() == second
    assert xp.current() is xp.devices[0] and xpnn.get_device() == active


def test_model_on_the_second_device_trains_evaluates_and_predicts_while_the_first_is_current(xp):
    second = backend.Device.from_namespace(xp, xp.devices[1])
    x_host, y_host = _data()
    with xpnn.use_device(second):
        xpnn.seed(0)
        model = _cnn()
    assert xp.current() is xp.devices[0]
    assert model.device == second

    x = backend.to_device(x_host, second, dtype="float32")
    out, backprop = model(x, train=True)
    backprop(out)  # user code between the calls (out * 2) would need `with xpnn.use_device(model.device)`
    sgd = optim.SGD(0.01, momentum=0.9)
    sgd.step(model.parameters())
    model.zero_grad()

    history = model.fit(x_host, y_host, loss="cross_entropy", optimizer=optim.Adam(1e-3), epochs=2, batch_size=5,
                        verbose=0, scale="unit", transform=_augment(), validation_data=(x_host, y_host))
    assert len(history) == 2 and math.isfinite(history["val_loss"][-1])
    assert set(model.evaluate(x_host, y_host, scale="unit")) == {"loss", "accuracy"}
    assert model.predict(x_host, scale="unit").shape == (12, 3)
    assert all(p.value.device is xp.devices[1] for p in model.parameters())
    assert xp.current() is xp.devices[0], "the model's device is current only while working on it"


def test_gradient_reduction_runs_on_the_parameters_device(xp):
    from test_distributed import FakeMpi

    second = backend.Device.from_namespace(xp, xp.devices[1])
    with xpnn.use_device(second):
        model = xpnn.Sequential([layers.Linear(4, 3), layers.ReLU(), layers.Linear(3, 2)])
        for p in model.parameters():
            p.grad = xp.ones(p.shape, dtype=xp.float32)
    mpi = FakeMpi()
    distributed.DataParallel(mpi, mpi).reduce_gradients(model.parameters(), 3, global_count=6)
    for p in model.parameters():
        assert p.grad.device is xp.devices[1]
        np.testing.assert_allclose(backend.to_numpy(p.grad), 1.0)  # weight 1/2, summed over two equal ranks



@pytest.mark.parametrize("bucket_bytes", [10**9, 40])
def test_the_optimizer_steps_on_the_all_reduced_buffer_without_copying_the_gradients_again(xp, bucket_bytes):
    """Under data parallelism the gradients are gathered into the all-reduce's buckets; the optimizer
    takes each bucket as its slice of the flat gradient instead of gathering them a second time.
    The update equals a step on copies of the same gradients."""
    from test_distributed import FakeMpi

    with xpnn.use_device(backend.Device.from_namespace(xp, xp.devices[0])):
        xpnn.seed(0)
        models = [xpnn.Sequential([layers.Linear(4, 3), layers.ReLU(), layers.Linear(3, 2)]) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        x = xpnn.to_device(np.random.default_rng(0).standard_normal((5, 4)), dtype="float32")
        optimizers = [optim.Adam(1e-2), optim.Adam(1e-2)]
        for step in range(2):
            for model, opt, reduced in zip(models, optimizers, (True, False)):
                params = model.parameters()
                out, backprop = model(x, train=True)
                backprop(out)
                mpi = FakeMpi()
                if reduced:
                    distributed.DataParallel(mpi, mpi, bucket_bytes=bucket_bytes).reduce_gradients(params, 1, 2)
                else:
                    for p in params:
                        p.grad = p.grad * 1.0
                xp.reset()
                opt.step(params)
                model.zero_grad()
                if reduced and step == 1:  # the first step packs the values and the state into flat buffers
                    buckets = len(mpi.allreduce_calls)
                    copies = 0 if buckets == 1 else buckets  # the buckets' slices, each copied once
                    assert xp.ops["concat"] == copies, f"the gradients were gathered again: {dict(xp.ops)}"
    assert buckets == (1 if bucket_bytes > 1000 else 3)
    for a, b in zip(*(m.state_dict().values() for m in models)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_gradient_dropped_after_the_step_lets_its_all_reduced_bucket_go():
    """Where a gradient lay is remembered only while it is that gradient: the bucket is freed with it."""
    import gc
    import weakref

    from test_distributed import FakeMpi

    model = xpnn.Sequential([layers.Linear(4, 3), layers.ReLU(), layers.Linear(3, 2)])
    params = model.parameters()
    out, backprop = model(xpnn.to_device(np.ones((2, 4)), dtype="float32"), train=True)
    backprop(out)
    mpi = FakeMpi()
    distributed.DataParallel(mpi, mpi).reduce_gradients(params, 1, 2)
    buffer = params[0].grad_location()[0]
    assert [p.grad_location() for p in params] == [(buffer, lo) for lo in (0, 12, 15, 21)]
    bucket = weakref.ref(buffer)
    del buffer, out, backprop
    model.zero_grad()
    gc.collect()
    assert bucket() is None and all(p.grad_location() is None for p in params)

# --------------------------------------------------------------------------- no hidden syncs


def _fit_reads(xp, batches, monkeypatch, sync_seconds):
    monkeypatch.setattr(loop, "SYNC_SECONDS", sync_seconds)
    first = backend.Device.from_namespace(xp, xp.devices[0])
    x_host, y_host = _data(5 * batches)
    with xpnn.use_device(first):
        xpnn.seed(0)
        model = _cnn()
        xp.reset()
        model.fit(x_host, y_host, loss="cross_entropy", optimizer=optim.Adam(1e-3), epochs=1, batch_size=5,
                  shuffle=True, seed=1, verbose=0, scale="unit", transform=_augment())
    return dict(xp.host_reads)


def test_a_training_step_never_reads_from_the_device(xp, monkeypatch):
    """Host reads of fit: the same for 1 and 4 batches (only the end-of-epoch reads: the stacked
    losses, the stacked correct counts, and the finite-weights flags read before any checkpoint),
    and with a metric read forced after every step, two per step plus the weight flags at the
    epoch's end (nothing is left to read after the last step's)."""
    one = _fit_reads(xp, 1, monkeypatch, math.inf)
    four = _fit_reads(xp, 4, monkeypatch, math.inf)
    assert one == four, f"steps read from the device: {one} for 1 batch, {four} for 4"
    assert "boolean mask" not in one
    every_step = _fit_reads(xp, 4, monkeypatch, 0.0)
    assert sum(one.values()) == 3
    assert sum(every_step.values()) == 4 * 2 + 1


def test_probability_cross_entropy_and_color_jitter_do_not_sync(xp):
    with xpnn.use_device(backend.Device.from_namespace(xp, xp.devices[0])):
        pred = xpnn.to_device(np.array([[0.0], [0.3], [1.0]]), dtype="float32")
        target = xpnn.to_device(np.array([[0.0], [1.0], [1.0]]), dtype="float32")
        images = xpnn.to_device(np.random.default_rng(0).random((4, 3, 6, 6)), dtype="float32")
        xp.reset()
        value, backprop = losses.BinaryCrossEntropy(from_logits=False)(pred, target)
        backprop()
        transforms.ColorJitter(brightness=0.5, contrast=0.5)(images)
        transforms.RandomCrop(6, padding=2)(images)
        assert dict(xp.host_reads) == {}
        assert math.isfinite(float(value))


# --------------------------------------------------------------------------- inputs on the device


def test_inputs_already_on_the_models_device_never_go_to_the_host(xp, monkeypatch):
    """fit/evaluate/predict cut batches of device inputs on the device (slices, or a gather by the
    shuffled indices); the results equal training on host copies of the same data."""
    second = backend.Device.from_namespace(xp, xp.devices[1])
    x_host, y_host = _data(14)
    x_host = x_host.astype(np.float32) / 255
    models = []
    for on_device in (False, True):
        with xpnn.use_device(second):
            xpnn.seed(0)
            models.append(_cnn())
        x, y = (backend.to_device(x_host, second), backend.to_device(y_host, second)) if on_device else (x_host, y_host)
        moved, read = [], []
        real_to_device, real_to_numpy = backend.to_device, backend.to_numpy
        monkeypatch.setattr(backend, "to_device", lambda a, *args, **kw: (moved.append(np.shape(a)),
                                                                          real_to_device(a, *args, **kw))[1])
        monkeypatch.setattr(backend, "to_numpy", lambda a: (read.append(tuple(a.shape)), real_to_numpy(a))[1])
        models[-1].fit(x, y, loss="cross_entropy", optimizer=optim.Adam(1e-2), epochs=2, batch_size=4, seed=3,
                       verbose=0, validation_data=(x, y))
        logs = models[-1].evaluate(x, y)
        out = models[-1].predict(x, to_host=False)
        monkeypatch.undo()
        if on_device:
            assert not [s for s in moved if len(s) == 4], f"device inputs were moved again: {moved}"
            assert not [s for s in read if len(s) == 4], f"device inputs were read to the host: {read}"
            np.testing.assert_allclose(backend.to_numpy(out), expected_out, rtol=1e-5, atol=1e-6)
            assert logs == pytest.approx(expected_logs, rel=1e-5)
        else:
            assert [s for s in moved if len(s) == 4], "host inputs are moved batch by batch"
            expected_out, expected_logs = backend.to_numpy(out), logs
    for a, b in zip(*(m.state_dict().values() for m in models)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_device_inputs_with_nan_are_refused_before_training(xp):
    first = backend.Device.from_namespace(xp, xp.devices[0])
    with xpnn.use_device(first):
        model = _cnn()
        x = np.zeros((4, 3, 8, 8), dtype=np.float32)
        x[2, 1, 0, 0] = np.nan
        before = model.state_dict()
        with pytest.raises(xpnn.errors.DataError, match="x contains 1 NaN/inf value\\(s\\); the first is in sample 2"):
            model.fit(xpnn.to_device(x), xpnn.to_device(np.zeros(4, dtype=np.int64)), loss="cross_entropy", verbose=0)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[key])



def test_device_inputs_are_checked_in_bounded_slices_with_one_read(xp, monkeypatch):
    """The NaN/inf/range check of data on the device never builds a temporary the size of the data."""
    slice_elements = 2 * 3 * 8 * 8
    monkeypatch.setattr(inputs, "CHECK_SLICE_ELEMENTS", slice_elements)
    x_host = np.random.default_rng(0).random((11, 3, 8, 8)).astype(np.float32)
    with xpnn.use_device(backend.Device.from_namespace(xp, xp.devices[0])):
        model = _cnn()
        x = xpnn.to_device(x_host)
        xp.reset()
        assert inputs.checked_inputs(model, x, "x") is x
        assert 0 < max(xp.largest.values()) <= slice_elements, xp.largest
        assert dict(xp.host_reads) == {"bool": 1}
        x_host[10, 2, 7, 7] = np.inf  # in the last, short slice
        with pytest.raises(xpnn.errors.DataError, match="x contains 1 NaN/inf value\\(s\\); the first is in sample 10"):
            inputs.checked_inputs(model, xpnn.to_device(x_host), "x")


def test_fit_checks_its_validation_data_once_not_every_epoch(xp, monkeypatch):
    checked = []
    real = loop.checked_data
    monkeypatch.setattr(loop, "checked_data", lambda model, x, y, loss, names: (checked.append(names),
                                                                                real(model, x, y, loss, names))[1])
    x_host, y_host = _data()
    with xpnn.use_device(backend.Device.from_namespace(xp, xp.devices[0])):
        model = _cnn()
        x, y = xpnn.to_device(x_host.astype(np.float32) / 255), xpnn.to_device(y_host)
        history = model.fit(x, y, loss="cross_entropy", epochs=3, batch_size=6, verbose=0, validation_data=(x, y))
    assert checked == [("x", "y"), ("x_val", "y_val")]
    assert len(history["val_loss"]) == 3
    model.evaluate(x_host, y_host, scale="unit")
    assert checked[-1] == ("x", "y"), "evaluate on its own still checks its data"

# --------------------------------------------------------------------------- the stand-in is as strict as CuPy


def test_the_stand_in_refuses_implicit_host_conversion_and_index_as_cupy_does(xp):
    array = xp.asarray(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(array)
    with pytest.raises(TypeError):
        operator.index(xp.asarray(np.array(3)))
    np.testing.assert_array_equal(backend.to_numpy(array), [1.0, 2.0])  # the explicit way still works
    assert int(xp.asarray(np.array(3))) == 3


def test_use_inside_a_device_with_is_undone_at_its_exit_as_in_cupy(xp):
    with xp.devices[0]:
        xp.devices[1].use()
        assert xp.current() is xp.devices[1]
    assert xp.current() is xp.devices[0]
    xp.devices[1].use()
    with xp.devices[0]:
        assert xp.current() is xp.devices[0]
    assert xp.current() is xp.devices[1]
