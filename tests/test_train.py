"""fit / evaluate / predict: learning, devices, history, callbacks, divergence and bad input."""
import json

import numpy as np
import pytest

import xpnn
from xpnn import backend, layers, losses, optim
from xpnn.errors import DataError, ShapeError, TrainingDivergedError


def teacher_task(n, features=16, seed=0, margin=0.5):
    """Labels from a fixed random two-layer tanh teacher (not linearly separable), keeping only
    samples at least ``margin`` standard deviations from its decision boundary."""
    rng = np.random.default_rng(seed)
    w1 = np.random.default_rng(99).standard_normal((features, 4)) / np.sqrt(features)
    w2 = np.random.default_rng(98).standard_normal(4)
    x = rng.standard_normal((4 * n, features)).astype(np.float32)
    score = np.tanh(2 * x @ w1) @ w2
    keep = np.abs(score) > margin * score.std()
    return x[keep][:n], (score[keep][:n] > 0).astype(np.float32)


def tutorial_mlp(features):
    """The tutorials' L-layer network [n, 20, 7, 5, 1] with ReLU hidden layers and a logit output."""
    return xpnn.Sequential([layers.Linear(features, 20), layers.ReLU(), layers.Linear(20, 7), layers.ReLU(),
                            layers.Linear(7, 5), layers.ReLU(), layers.Linear(5, 1)])


def test_tutorial_mlp_learns_on_every_backend(device):
    x, y = teacher_task(3000)
    x_test, y_test = teacher_task(1000, seed=1)
    model = tutorial_mlp(16)
    history = model.fit(x, y, loss=losses.BinaryCrossEntropy(from_logits=True),
                        optimizer=optim.SGD(lr=0.05, momentum=0.9), epochs=25, batch_size=64, seed=0,
                        validation_data=(x_test, y_test), verbose=0)
    result = model.evaluate(x_test, y_test)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] >= 0.95, result
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] == pytest.approx(result["accuracy"])
    assert model.device == device


def test_mlp_helper_builds_the_tutorial_network():
    model = xpnn.mlp([12288, 20, 7, 5, 1], init="lecun")
    assert [type(l).__name__ for l in model.layers] == ["Linear", "ReLU"] * 3 + ["Linear"]
    assert model.count_params() == 12288 * 20 + 20 + 20 * 7 + 7 + 7 * 5 + 5 + 5 + 1


def test_full_batch_matches_one_manual_step(device):
    """fit(batch_size=None) does exactly the tutorials' loop: forward, backward, update."""
    x, y = teacher_task(50, features=6)
    xpnn.seed(3)
    model = tutorial_mlp(6)
    manual = xpnn.Sequential.from_config(model.config())
    manual.load_state_dict(model.state_dict())
    model.fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=None, verbose=0)
    loss = losses.BinaryCrossEntropy()
    for _ in range(2):
        out, backprop = manual(xpnn.to_device(x), train=True)
        value, dloss = loss(out, xpnn.to_device(y))
        backprop(dloss())
        for p in manual.parameters():
            p.value -= 0.1 * p.grad
            p.grad = None
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, manual.state_dict()[key], rtol=1e-5, atol=1e-7)


def test_seeded_fit_is_reproducible():
    x, y = teacher_task(300, features=8)
    states = []
    for _ in range(2):
        xpnn.seed(5)
        model = tutorial_mlp(8)
        model.fit(x, y, loss="bce", optimizer=optim.Adam(lr=0.01), epochs=2, batch_size=32, seed=11, verbose=0)
        states.append(model.state_dict())
    for key in states[0]:
        np.testing.assert_array_equal(states[0][key], states[1][key])


def test_fit_moves_host_batches_to_the_model_device():
    with xpnn.use_device("array_api_strict:device1"):
        model = tutorial_mlp(8)
    x, y = teacher_task(64, features=8)
    model.fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.01), epochs=1, batch_size=16, verbose=0)
    assert model.device == "array_api_strict:device1"
    assert xpnn.get_device() == "cpu"
    assert model.predict(x).shape == (64, 1)


def test_model_refuses_input_from_another_device():
    with xpnn.use_device("array_api_strict:device1"):
        model = tutorial_mlp(8)
    with pytest.raises(xpnn.DeviceError, match=r"input is on cpu but the model is on array_api_strict:device1.*"
                                                  r"xpnn.to_device\(x, model.device\)"):
        model(np.zeros((2, 8), dtype=np.float32))


def test_model_to_moves_every_parameter():
    model = tutorial_mlp(8).to("array_api_strict:device1")
    assert all(backend.device_of(p.value) == "array_api_strict:device1" for p in model.parameters())
    model.to("cpu", dtype="float64")
    assert model.dtype == "float64" and model.device == "cpu"


def test_input_dtype_errors():
    model = tutorial_mlp(4)
    with pytest.raises(TypeError, match="must be floating point .*got uint8"):
        model(np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="has dtype float64 but the model's parameters are float32"):
        model(np.zeros((2, 4)))


def test_uint8_images_train_with_unit_scale(device):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 1, 4, 4)).astype(np.uint8)
    y = (x.reshape(40, -1).mean(axis=1) > 127).astype(np.int64)
    model = xpnn.Sequential([layers.Flatten(), layers.Linear(16, 2)])
    model.fit(x, y, loss="cross_entropy", optimizer=optim.SGD(lr=0.1), epochs=2, batch_size=8, scale="unit",
              verbose=0)
    assert model.predict(x, scale="unit").shape == (40, 2)


def test_history_and_its_files(tmp_path):
    x, y = teacher_task(200, features=8)
    model = tutorial_mlp(8)
    history = model.fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.05), epochs=3, batch_size=50,
                        validation_data=(x[:50], y[:50]), verbose=0)
    assert history.epochs == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "samples_per_second", "lr"):
        assert len(history[key]) == 3, key
    history.to_json(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text())["epoch"] == [1, 2, 3]
    history.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy")
    history.plot(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_shows_loss_accuracy_and_rate(capsys):
    x, y = teacher_task(256, features=8)
    tutorial_mlp(8).fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.05), epochs=1, batch_size=32, verbose=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "samples/s" in err and "loss" in err and "accuracy" in err


def test_fit_runs_its_own_callbacks_in_the_list_before_the_users(monkeypatch):
    """Progress, validation, epoch statistics and the History are callbacks: a user's callback sees
    every sync, the end of the steps (also when one raised) and complete logs already in the History."""
    from xpnn.train import loop
    monkeypatch.setattr(loop, "SYNC_SECONDS", 0.0)  # a sync after every step
    calls = []

    class Spy(xpnn.Callback):
        def on_sync(self, epoch, seen, logs):
            calls.append(("sync", epoch, seen, sorted(logs)))

        def on_steps_end(self, epoch, seen, logs):
            calls.append(("steps_end", epoch, seen))

        def on_epoch_end(self, epoch, logs):
            calls.append(("end", epoch, list(logs)[:4], self.model.history.epochs[-1]))

    x, y = teacher_task(64, features=8)
    tutorial_mlp(8).fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.05), epochs=2, batch_size=32,
                        validation_data=(x[:16], y[:16]), verbose=0, callbacks=[Spy()])
    first = [c for c in calls if c[1] == 0]
    assert first == [("sync", 0, 32, ["accuracy", "loss"]), ("sync", 0, 64, ["accuracy", "loss"]),
                     ("sync", 0, 64, ["accuracy", "loss"]), ("steps_end", 0, 64),
                     ("end", 0, ["loss", "accuracy", "val_loss", "val_accuracy"], 1)]
    assert calls[-1][:2] == ("end", 1) and calls[-1][3] == 2

    class Interrupt(xpnn.Callback):
        def on_sync(self, epoch, seen, logs):
            raise KeyboardInterrupt

    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        tutorial_mlp(8).fit(x, y, loss="bce", epochs=1, batch_size=32, verbose=0, callbacks=[Interrupt(), Spy()])
    assert calls == [("steps_end", 0, 32)]


def test_a_trained_model_is_freed_without_the_cycle_collector():
    """The History the model keeps is recorded by a callback of fit's, so it holds no reference back
    to the model: dropping the last reference frees the model (and its device memory) at once."""
    import gc
    import weakref
    x, y = teacher_task(64, features=8)
    model = tutorial_mlp(8)
    model.fit(x, y, loss="bce", optimizer="adam", epochs=2, batch_size=32, validation_data=(x, y), verbose=0)
    gc.disable()
    try:
        gone = weakref.ref(model)
        del model
        assert gone() is None
    finally:
        gc.enable()


def test_verbose_2_prints_one_line_per_epoch(capsys):
    x, y = teacher_task(64, features=8)
    tutorial_mlp(8).fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.05), epochs=2, batch_size=32, verbose=2)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "accuracy" in lines[0]


def test_early_stopping_restores_best_weights():
    x, y = teacher_task(300, features=8)
    model = tutorial_mlp(8)
    snapshots = []

    class Snapshot(xpnn.Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots.append(self.model.state_dict())

    stop = xpnn.EarlyStopping(monitor="loss", mode="max", patience=2)  # loss falls: never "improves"
    history = model.fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.05), epochs=20, batch_size=30,
                        callbacks=[Snapshot(), stop], verbose=0)
    assert len(history) == 3 and stop.best_epoch == 0 and stop.stopped_epoch == 2
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[0][key])


def test_early_stopping_needs_the_monitored_metric():
    x, y = teacher_task(40, features=8)
    with pytest.raises(KeyError, match="EarlyStopping monitors 'val_loss'.*pass validation_data"):
        tutorial_mlp(8).fit(x, y, loss="bce", epochs=2, callbacks=[xpnn.EarlyStopping()], verbose=0)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_names_epoch_and_batch():
    x, y = teacher_task(64, features=8)
    y[40] = 1e30  # a finite target whose squared error overflows float32 in the third batch
    model = tutorial_mlp(8)
    with pytest.raises(TrainingDivergedError, match=r"loss became inf at epoch 1, batch 3 of 4"):
        model.fit(x, y, loss="mse", optimizer=optim.SGD(lr=0.01), epochs=2, batch_size=16, shuffle=False,
                  verbose=0)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_checkpoint_survives_divergence(tmp_path):
    x, y = teacher_task(64, features=8)
    model = tutorial_mlp(8)
    path = tmp_path / "ckpt.npz"
    model.fit(x, y, loss="mse", optimizer=optim.SGD(lr=0.01), epochs=1, batch_size=16, verbose=0,
              callbacks=[xpnn.ModelCheckpoint(path)])
    good = path.read_bytes()
    bad_y = y.copy()
    bad_y[20] = 1e30
    with pytest.raises(TrainingDivergedError):
        model.fit(x, bad_y, loss="mse", epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[xpnn.ModelCheckpoint(path)])
    assert path.read_bytes() == good
    assert not list(tmp_path.glob("*.tmp"))


BAD_INPUTS = [
    (lambda x, y: (x[:, :7], y), ShapeError, r"Linear\(in_features=8.*\(layer 0\) expects 8 input features .*got 7"),
    (lambda x, y: (x[:, :, None], y), ShapeError, r"expects a rank-2 input \(N, 8\), got shape \(32, 8, 1\)"),
    (lambda x, y: (x[:0], y[:0]), DataError, r"x is empty: shape \(0, 8\)"),
    (lambda x, y: (x, y[:-1]), DataError, "x and y have different lengths: 32 samples in x, 31 in y"),
    (lambda x, y: (np.where(np.arange(8) == 3, np.nan, x), y), DataError, "x contains 32 NaN/inf value"),
    (lambda x, y: (np.where(np.arange(8) == 3, np.inf, x), y), DataError, "the first is in sample 0"),
    (lambda x, y: (x, y + 1), DataError, r"labels in y must be in \[0, 1\]"),
    (lambda x, y: (x, np.stack([y, y], 1)), ShapeError, r"y of shape \(32, 2\) does not match model outputs"),
]


@pytest.mark.parametrize("corrupt, error, message", BAD_INPUTS)
def test_bad_input_raises_before_any_parameter_changes(corrupt, error, message):
    x, y = teacher_task(32, features=8)
    model = tutorial_mlp(8)
    before = model.state_dict()
    bad_x, bad_y = corrupt(x, y)
    with pytest.raises(error, match=message):
        model.fit(bad_x, bad_y, loss="bce", optimizer=optim.SGD(lr=0.1), epochs=1, verbose=0)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_bad_validation_data_is_named():
    x, y = teacher_task(32, features=8)
    with pytest.raises(DataError, match="x_val and y_val have different lengths"):
        tutorial_mlp(8).fit(x, y, loss="bce", validation_data=(x, y[:3]), verbose=0)


def test_multiclass_labels_out_of_range():
    model = xpnn.mlp([4, 8, 3])
    with pytest.raises(DataError, match=r"labels in y must be in \[0, 2\] for a model with 3 outputs, got values from 0 to 3"):
        model.fit(np.zeros((4, 4), np.float32), np.array([0, 1, 2, 3]), loss="cross_entropy", verbose=0)


def test_fit_argument_errors():
    x, y = teacher_task(32, features=8)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        tutorial_mlp(8).fit(x, y, loss="bce", epochs=0)
    with pytest.raises(ValueError, match="fit: epochs must be a positive integer, got True"):
        tutorial_mlp(8).fit(x, y, loss="bce", epochs=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer or None"):
        tutorial_mlp(8).fit(x, y, loss="bce", batch_size=0, verbose=0)


def test_evaluate_needs_a_loss():
    x, y = teacher_task(8, features=8)
    with pytest.raises(ValueError, match="evaluate needs a loss"):
        tutorial_mlp(8).evaluate(x, y)


def test_summary_lists_layers_shapes_and_parameters():
    text = xpnn.mlp([12288, 20, 7, 5, 1]).summary(print_fn=None)
    assert "Linear(in_features=12288, out_features=20, bias=True)" in text
    assert "(N, 20)" in text and "245,780" in text
    assert "Total parameters: 245,973" in text


def test_load_state_dict_copies_so_training_never_writes_into_the_callers_arrays(device):
    model = tutorial_mlp(8)
    initial = model.state_dict()
    snapshot = {k: v.copy() for k, v in initial.items()}
    model.load_state_dict(initial)
    x, y = teacher_task(32, features=8)
    model.fit(x, y, loss="bce", optimizer=optim.SGD(lr=0.1), epochs=1, verbose=0)
    for key, value in initial.items():
        np.testing.assert_array_equal(value, snapshot[key])


@pytest.mark.parametrize("task", ["labels", "one-hot", "binary"])
def test_evaluate_weights_each_batch_by_its_size_and_counts_correct_predictions(device, task):
    """evaluate's loss is the mean over samples (a short last batch weighs less) and its accuracy
    the share of correct predictions, as computed on the host from predict's outputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 5)).astype(np.float32)
    outputs = 1 if task == "binary" else 3
    model = xpnn.Sequential([layers.Linear(5, outputs)])
    labels = rng.integers(0, outputs if outputs > 1 else 2, 11)
    y = {"labels": labels, "one-hot": np.eye(3, dtype=np.float32)[labels],
         "binary": labels.astype(np.float32)[:, None]}[task]
    loss = losses.BinaryCrossEntropy() if task == "binary" else losses.CrossEntropy()
    logs = model.evaluate(x, y, loss=loss, batch_size=4)
    z = model.predict(x).astype(np.float64)
    if task == "binary":
        expected_loss = np.mean(np.logaddexp(0, z) - y * z)
        correct = (z > 0) == (y > 0.5)
    else:
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        expected_loss = -np.mean(log_p[np.arange(11), labels])
        correct = z.argmax(axis=1) == labels
    assert logs["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(correct.mean())
