"""ModelCheckpoint resumes exactly: weights, optimizer, random generator, epoch, history and the
states of EarlyStopping and ReduceLROnPlateau; the CLI's run checkpoint is the same callback."""
import numpy as np
import pytest

import xpnn
from xpnn import layers, optim


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _model():
    return xpnn.Sequential([layers.Linear(6, 16), layers.ReLU(), layers.Dropout(0.3), layers.Linear(16, 2)])


def _callbacks(path):
    """EarlyStopping that never sees an improvement after epoch 1 (stops after epoch 4 of 6, restoring
    epoch 1's weights), a plateau that lowers the rate, and the checkpoint after both."""
    stop = xpnn.EarlyStopping(monitor="loss", mode="max", patience=3, restore_best=True)
    plateau = xpnn.ReduceLROnPlateau(monitor="loss", mode="max", patience=1, factor=0.5)
    return stop, plateau, xpnn.ModelCheckpoint(path, callbacks={"stop": stop, "plateau": plateau})


def _fit(model, callbacks, epochs, initial_epoch=0, optimizer=None):
    x, y = _data()  # shuffle=True without a seed: the order comes from the host generator
    return model.fit(x, y, optimizer=optimizer, epochs=epochs, batch_size=16, verbose=0, callbacks=list(callbacks),
                     initial_epoch=initial_epoch)


def _without_timing(history):
    return {k: v for k, v in history.to_dict().items() if k not in ("seconds", "samples_per_second")}


def test_half_then_resume_is_bit_identical_to_a_straight_run(tmp_path):
    xpnn.seed(5)
    straight = _model()
    stop, plateau, checkpoint = _callbacks(tmp_path / "straight.npz")
    _fit(straight, (stop, plateau, checkpoint), 6, optimizer=optim.Adam(lr=0.01))
    assert stop.stopped_epoch == 3 and len(straight.history) == 4

    xpnn.seed(5)
    first = _model()
    _fit(first, _callbacks(tmp_path / "half.npz"), 2, optimizer=optim.Adam(lr=0.01))
    xpnn.seed(99)  # the resume must put the generator back, whatever happened since
    stop2, plateau2, checkpoint2 = _callbacks(tmp_path / "half.npz")
    resumed, epoch = checkpoint2.resume()
    assert epoch == 2 and len(resumed.history) == 2 and type(resumed.optimizer).__name__ == "Adam"
    _fit(resumed, (stop2, plateau2, checkpoint2), 6, initial_epoch=epoch)

    assert stop2.stopped_epoch == 3 and _without_timing(resumed.history) == _without_timing(straight.history)
    for a, b in ((straight, resumed), (xpnn.load(tmp_path / "straight.npz"), xpnn.load(tmp_path / "half.npz"))):
        for key, value in a.state_dict().items():  # the restored best, and the last epoch's in the files
            np.testing.assert_array_equal(b.state_dict()[key], value, err_msg=key)
    assert plateau2.state_dict() == plateau.state_dict() and straight.optimizer.lr == resumed.optimizer.lr
    saved_state = {k: v for k, v in stop.state_dict().items() if k != "best_state"}
    assert {k: v for k, v in stop2.state_dict().items() if k != "best_state"} == saved_state


def test_save_best_only_resumes_with_the_best_value_as_the_bar(tmp_path):
    xpnn.seed(1)
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "best.npz", monitor="loss", save_best_only=True)
    _fit(_model(), [checkpoint], 3)
    again = xpnn.ModelCheckpoint(tmp_path / "best.npz", monitor="loss", save_best_only=True)
    model, epoch = again.resume()
    assert again.best == checkpoint.best and epoch == checkpoint.saved_epoch
    assert model.metadata["logs"]["loss"] == checkpoint.best


def test_resume_refuses_a_file_without_training_state_and_changes_nothing(tmp_path):
    model = _model()
    xpnn.save(model, tmp_path / "plain.npz")
    stop = xpnn.EarlyStopping(monitor="loss")
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "plain.npz", callbacks={"stop": stop})
    state = xpnn.backend.rng_state()
    with pytest.raises(ValueError, match=r"plain.npz cannot resume a run: it lacks the optimizer state, epoch, "
                                         r"history, rng_state, the state of callback 'stop'"):
        checkpoint.resume()
    assert xpnn.backend.rng_state() == state and stop.wait == 0 and checkpoint.saved_epoch is None
    with pytest.raises(TypeError, match="ModelCheckpoint: callback 'h' \\(History\\) has no state_dict"):
        xpnn.ModelCheckpoint(tmp_path / "c.npz", callbacks={"h": xpnn.History()})


def test_resume_with_one_damaged_callback_state_loads_none(tmp_path):
    """A checkpoint whose second callback state, or whose random-generator state, is damaged
    changes neither callback nor the random generator."""
    stop, plateau = xpnn.EarlyStopping(monitor="loss"), xpnn.ReduceLROnPlateau(monitor="loss")
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "c.npz", callbacks={"stop": stop, "plateau": plateau})
    _fit(_model(), [stop, plateau, checkpoint], 1)
    model, optimizer, meta = xpnn.load_checkpoint(tmp_path / "c.npz")
    meta["callbacks"]["stop"]["wait"] = 3
    meta["callbacks"]["plateau"]["wait"] = -1
    fresh_stop = xpnn.EarlyStopping(monitor="loss")
    fresh = xpnn.ModelCheckpoint(tmp_path / "c.npz", callbacks={"stop": fresh_stop, "plateau": plateau})
    state, before = xpnn.backend.rng_state(), (fresh_stop.wait, fresh_stop.best)
    with pytest.raises(ValueError, match="ReduceLROnPlateau.load_state_dict: wait must be an integer >= 0"):
        fresh.restore(model, optimizer, meta)
    assert (fresh_stop.wait, fresh_stop.best) == before and xpnn.backend.rng_state() == state
    meta["callbacks"]["plateau"]["wait"], meta["rng_state"] = 0, {"bit_generator": "damaged"}
    with pytest.raises(ValueError):
        fresh.restore(model, optimizer, meta)
    assert (fresh_stop.wait, fresh_stop.best) == before and xpnn.backend.rng_state() == state


def test_early_stopping_refuses_a_damaged_state_and_keeps_its_own():
    stop = xpnn.EarlyStopping(monitor="loss")
    stop.wait, stop.best = 2, 0.5
    for bad, message in (({"best": 1.0}, "expected a record with best, best_epoch, wait and best_state"),
                         ({"best": float("nan"), "best_epoch": 1, "wait": 0, "best_state": None}, "finite number"),
                         ({"best": 1.0, "best_epoch": 1, "wait": -1, "best_state": None}, "wait"),
                         ({"best": 1.0, "best_epoch": 1, "wait": 0, "best_state": {"w": [1.0]}}, "best_state")):
        with pytest.raises(ValueError, match=message):
            stop.load_state_dict(bad)
        assert (stop.wait, stop.best) == (2, 0.5)


def test_the_cli_checkpoint_is_the_library_one(tmp_path):
    from xpnn.cli.run_folder import RunCheckpoint
    checkpoint = RunCheckpoint(tmp_path, {"model": "mlp"}, initial_epoch=0)
    assert isinstance(checkpoint, xpnn.ModelCheckpoint)
    xpnn.seed(2)
    model = _model()
    model.optimizer, model.history = optim.SGD(lr=0.1), xpnn.History()
    checkpoint.write(0, {}, model)  # the initial weights, before fit, as `xpnn train` writes them
    assert xpnn.load(tmp_path / "checkpoint.npz").metadata["epoch"] == 0 and (tmp_path / "history.csv").is_file()
    _fit(model, [checkpoint], 1)
    assert xpnn.load(tmp_path / "checkpoint.npz").metadata["epoch"] == 1 and checkpoint.saved_epoch == 1


def test_info_describes_the_best_weights_a_checkpoint_keeps(tmp_path, capsys):
    import json

    from xpnn import cli
    stop = xpnn.EarlyStopping(monitor="loss")
    _fit(_model(), [stop, xpnn.ModelCheckpoint(tmp_path / "c.npz", callbacks={"stop": stop})], 1)
    assert cli.main(["info", str(tmp_path / "c.npz"), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)["metadata"]["callbacks"]["stop"]
    assert saved["wait"] == 0 and saved["best_state"]["0.weight"] == "array float32 (6, 16)"


def test_save_fit_and_evaluate_name_the_model_they_need(tmp_path):
    body = layers.Sequential([layers.Linear(2, 2)])
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    for run in (lambda: xpnn.train.fit(body, x, y, verbose=0), lambda: xpnn.train.evaluate(body, x, y, loss="ce")):
        with pytest.raises(TypeError, match=r"needs an xpnn.Sequential model \(layers plus a training session\), got "
                                            r"xpnn.layers.container.Sequential"):
            run()
    with pytest.raises(TypeError, match=r"save needs an xpnn.Sequential model, got xpnn.layers.container.Sequential"):
        xpnn.save(body, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
