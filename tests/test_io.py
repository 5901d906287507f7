"""save/load: any device to any device, atomic writes, no pickle, clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

import xpnn
from xpnn import layers, optim
from xpnn.errors import ModelFileError


def small_model():
    return xpnn.Sequential([layers.Linear(6, 5), layers.Tanh(), layers.Dropout(0.2), layers.Linear(5, 3)])


def test_save_on_device1_load_on_numpy_same_predictions(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    with xpnn.use_device("array_api_strict:device1"):
        model = small_model()
        model.fit(x, np.arange(10) % 3, loss="cross_entropy", optimizer=optim.Adam(lr=0.01), epochs=2, verbose=0)
        expected = model.predict(x)
        path = xpnn.save(model, tmp_path / "model.npz", metadata={"note": "device1"})
    loaded = xpnn.load(path)
    assert loaded.device == "cpu"
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-6)
    assert loaded.metadata == {"note": "device1"}
    assert type(loaded.loss).__name__ == "CrossEntropy"
    assert loaded.input_shape == (6,)


def test_load_onto_a_named_device(tmp_path, device):
    with xpnn.use_device("cpu"):
        path = xpnn.save(small_model(), tmp_path / "m")
    assert path.name == "m.npz"
    with xpnn.use_device("cpu"):
        loaded = xpnn.load(path, device=device)
    assert loaded.device == device


def test_file_is_plain_npz_without_pickles(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["__xpnn__"]))
        assert all(data[k].dtype != object for k in data.files)
    assert header["format"] == "xpnn-model" and header["architecture"]["config"]["layers"][0]["type"] == "Linear"


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        xpnn.save(small_model(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_checkpoint_restores_optimizer_state(tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32)
    y = np.arange(32) % 3
    xpnn.seed(0)
    model = small_model()
    opt = optim.Adam(lr=0.01)
    model.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8, seed=1, verbose=0)
    path = xpnn.save(model, tmp_path / "ckpt.npz", optimizer=opt, metadata={"epoch": 2})
    resumed, resumed_opt, meta = xpnn.load_checkpoint(path)
    assert meta == {"epoch": 2} and type(resumed_opt).__name__ == "Adam"
    layers_without_dropout = [0, 3]
    for m in (model, resumed):
        m.layers[2].p = 0.0  # make the continuation deterministic
    model.fit(x, y, epochs=4, initial_epoch=2, batch_size=8, seed=1, verbose=0)
    resumed.fit(x, y, loss="cross_entropy", optimizer=resumed_opt, epochs=4, initial_epoch=2, batch_size=8, seed=1,
                verbose=0)
    for key, value in model.state_dict().items():
        assert int(key.split(".")[0]) in layers_without_dropout
        np.testing.assert_array_equal(value, resumed.state_dict()[key])


def test_loading_into_a_different_architecture_says_what_differs(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    other = xpnn.Sequential([layers.Linear(6, 4), layers.Tanh(), layers.Dropout(0.2), layers.Linear(4, 3)])
    with pytest.raises(ModelFileError, match=r"does not match the model: layer 0: file has Linear\(.*'out_features': 5.*"
                                             r"model has Linear\(.*'out_features': 4"):
        xpnn.load(path, model=other)
    shorter = xpnn.Sequential([layers.Linear(6, 5)])
    with pytest.raises(ModelFileError, match="the file has 4 layers, the model 1"):
        xpnn.load(path, model=shorter)


def test_loading_into_a_matching_model(tmp_path):
    source = small_model()
    path = xpnn.save(source, tmp_path / "m.npz")
    target = small_model()
    xpnn.load(path, model=target)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(value, target.state_dict()[key])


def _rewrite(path, mutate):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["__xpnn__"]))
    mutate(header, arrays)
    arrays["__xpnn__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)


def test_newer_format_is_refused(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    _rewrite(path, lambda h, a: h.update(format_version=99, xpnn_version="9.0"))
    with pytest.raises(ModelFileError, match=r"written by a newer xpnn \(file format 99, xpnn 9.0\).*upgrade"):
        xpnn.load(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    _rewrite(path, lambda h, a: a.update({"model/0.weight": np.zeros((6, 7), np.float32)}))
    with pytest.raises(ModelFileError, match=r"0.weight|weight: expected shape \(6, 5\), file has \(6, 7\)"):
        xpnn.load(path)


def test_unknown_layer_type(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    _rewrite(path, lambda h, a: h["architecture"]["config"]["layers"][1].update(type="Mystery"))
    with pytest.raises(ModelFileError, match="cannot rebuild the architecture: unknown layer type 'Mystery'"):
        xpnn.load(path)


def test_not_a_model_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(ModelFileError, match="junk.npz is not a readable xpnn model file"):
        xpnn.load(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not an xpnn model .*no __xpnn__ header"):
        xpnn.load(plain)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        xpnn.load(tmp_path / "missing.npz")


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__xpnn__.npy", b"")
    np.savez(path, __xpnn__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="holds Python objects.*never unpickles"):
        xpnn.load(path)


def test_load_does_not_disturb_the_seeded_generator(tmp_path):
    path = xpnn.save(small_model(), tmp_path / "m.npz")
    xpnn.seed(3)
    expected = xpnn.backend.host_rng().random()
    xpnn.seed(3)
    xpnn.load(path)
    assert xpnn.backend.host_rng().random() == expected


def test_saved_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = xpnn.save(small_model(), tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_refuses_what_load_would_refuse_as_too_deep(tmp_path):
    """Writing and reading apply one nesting limit: a file save writes, load reads."""
    def nested(depth):
        model = layers.Linear(2, 2)
        for _ in range(depth):
            model = xpnn.Sequential([model])
        return model

    xpnn.save(nested(20), tmp_path / "ok.npz")
    assert len(xpnn.load(tmp_path / "ok.npz").parameters()) == 2
    deep_metadata = {"notes": [[[[]]]]}
    for _ in range(110):
        deep_metadata = {"inner": deep_metadata}
    for model, metadata, what in ((nested(34), None, "architecture"), (small_model(), deep_metadata, "metadata")):
        with pytest.raises(ValueError, match=rf"not saving {tmp_path / 'm.npz'}: its {what} is nested more than "
                                             r"100 levels deep"):
            xpnn.save(model, tmp_path / "m.npz", metadata=metadata)
        assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("value, kind", [
    (np.zeros((6, 5), np.complex64), "complex64"), (np.full((6, 5), None, dtype=object), "object"),
    (np.zeros((6, 5), bool), "bool"), ([[0.0] * 5] * 6, "list"), (None, "NoneType")])
def test_load_state_dict_refuses_values_that_are_not_arrays_of_real_numbers(value, kind):
    model = small_model()
    before = model.state_dict()
    for strict in (True, False):
        with pytest.raises(TypeError, match=rf"0\.weight must be an array of real numbers, got {kind}"):
            model.load_state_dict({**before, "0.weight": value}, strict=strict)
    with pytest.raises(ValueError, match=r"3\.bias holds values too large for float32"):
        model.load_state_dict({**before, "3.bias": np.full(3, 1e300)})
    for key, array in model.state_dict().items():
        np.testing.assert_array_equal(array, before[key])
