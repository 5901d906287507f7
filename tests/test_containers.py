"""Nested containers and Residual blocks: gradients on every backend, names, shapes, summaries,
freezing in training, partial loading, and model files with nested architectures (format 2 and 1)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xpnn
from xpnn import backend, layers, optim, zoo
from xpnn.errors import ModelFileError, ShapeError
from xpnn.layers import Residual
from xpnn.model import Sequential
from xpnn.testing import check_layer_gradients

DATA = Path(__file__).parent / "data"


def basic_block(c_in=2, c_out=3, stride=2):
    return zoo.basic_block(c_in, c_out, stride)


def small_resnet(classes=3):
    return Sequential([layers.Conv2D(1, 2, 3, padding="same", bias=False), layers.BatchNorm2D(2), layers.ReLU(),
                       basic_block(2, 2, 1), basic_block(2, 3, 2), layers.GlobalAvgPool2D(),
                       layers.Linear(3, classes)])


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("train", [True, False])
def test_basic_block_with_projection_gradients(device, rng, train):
    block = basic_block()
    if not train:  # non-trivial running statistics
        block(backend.to_device(rng.standard_normal((4, 2, 5, 5)), dtype="float32"), train=True)
    check_layer_gradients(block, rng.standard_normal((3, 2, 5, 5)), device, train=train, max_checks=12)


def test_identity_block_and_nested_sequential_gradients(device, rng):
    model = Sequential([layers.Linear(4, 3), layers.Tanh(),
                        Residual(Sequential([layers.Linear(3, 3), Sequential([layers.Tanh(), layers.Linear(3, 3)])]),
                                 activation=layers.Tanh()),
                        Residual([layers.Linear(3, 2)], shortcut=[layers.Linear(3, 2, bias=False)])])
    check_layer_gradients(model, rng.standard_normal((5, 4)), device, max_checks=15)


def test_basic_block_matches_torch(rng):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    block = basic_block(2, 3, 2).to(dtype="float64")
    ref = nn.ModuleDict({"body": nn.Sequential(nn.Conv2d(2, 3, 3, 2, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                                               nn.Conv2d(3, 3, 3, 1, 1, bias=False), nn.BatchNorm2d(3)),
                         "shortcut": nn.Sequential(nn.Conv2d(2, 3, 1, 2, bias=False), nn.BatchNorm2d(3))}).double()
    pairs = {"body.0.weight": ref["body"][0].weight, "body.1.gamma": ref["body"][1].weight,
             "body.1.beta": ref["body"][1].bias, "body.3.weight": ref["body"][3].weight,
             "body.4.gamma": ref["body"][4].weight, "body.4.beta": ref["body"][4].bias,
             "shortcut.0.weight": ref["shortcut"][0].weight, "shortcut.1.gamma": ref["shortcut"][1].weight,
             "shortcut.1.beta": ref["shortcut"][1].bias}
    state = {k: rng.standard_normal(v.shape) for k, v in block.state_dict().items() if k in pairs}
    block.load_state_dict(state, strict=False)
    with torch.no_grad():
        for key, tensor in pairs.items():
            tensor.copy_(torch.tensor(state[key]))
    for train in (True, False):
        ref.train(train)
        x = rng.standard_normal((4, 2, 7, 7))
        dy = rng.standard_normal((4, 3, 4, 4))
        for p in block.parameters():
            p.grad = None
        y, backprop = block(x, train=train)
        dx = backprop(dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.relu(ref["body"](xt) + ref["shortcut"](xt))
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
        params = {p.name: p for p in block.parameters()}
        for key, tensor in pairs.items():
            np.testing.assert_allclose(params[key].grad, tensor.grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=key)
            tensor.grad = None
        for path, module in (("body.1", ref["body"][1]), ("body.4", ref["body"][4]), ("shortcut.1", ref["shortcut"][1])):
            np.testing.assert_allclose(block.state_dict()[f"{path}.running_var"], module.running_var.numpy(), rtol=1e-12)


def test_backward_never_writes_into_the_gradient_it_was_given(device, rng):
    block = Residual([layers.ReLU(), layers.Linear(3, 3)], activation=layers.ReLU())
    x = backend.to_device(rng.standard_normal((4, 3)), dtype="float32")
    dy_host = rng.standard_normal((4, 3)).astype(np.float32)
    dy = backend.to_device(dy_host)
    _, backprop = block(x, train=True)
    backprop(dy)
    np.testing.assert_array_equal(backend.to_numpy(dy), dy_host)


# --------------------------------------------------------------------------- names, shapes, errors


def test_parameters_are_named_by_dotted_path():
    model = small_resnet()
    names = [p.name for p in model.parameters()]
    assert names[:3] == ["0.weight", "1.gamma", "1.beta"]
    assert "4.body.0.weight" in names and "4.shortcut.1.gamma" in names and names[-1] == "6.bias"
    assert list(model.state_dict()) == list(model.named_state())
    assert "4.shortcut.1.running_mean" in model.state_dict()
    assert len(set(names)) == len(names)
    assert model.layers[4].body.layers[0].path == "4.body.0"


def test_any_layer_and_an_optimizer_clear_the_gradients_inside(rng):
    """zero_grad on a Residual (a layer, not a Sequential) drops every gradient in its branches; an
    optimizer's zero_grad drops those of the parameters it is given, and only those."""
    model = Sequential([basic_block(), layers.GlobalAvgPool2D(), layers.Linear(3, 2)])
    out, backprop = model(backend.to_device(rng.standard_normal((2, 2, 5, 5)), dtype="float32"), train=True)
    backprop(out)
    block, head = model.layers[0].parameters(), model.layers[2].parameters()
    assert all(p.grad is not None for p in block + head)
    optim.SGD(0.1).zero_grad(head)
    assert all(p.grad is None for p in head) and all(p.grad is not None for p in block)
    model.layers[0].zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_join_path_names_every_layer_parameter_and_buffer():
    from xpnn.layers.base import join_path
    assert (join_path("", "weight"), join_path("", 0), join_path("4.body", 0)) == ("weight", "0", "4.body.0")
    model = small_resnet()
    paths = dict(model.walk())
    assert list(paths)[:3] == ["", "0", "1"] and "4.body.0" in paths
    assert list(model.named_state()) == [join_path(path, name) for path, layer in paths.items() for name in layer.state()]
    assert [p.name for p in model.parameters()] == [join_path(path, name) for path, layer in paths.items()
                                                    for name in layer.param_names]


def test_the_same_layer_twice_is_refused():
    shared = layers.Linear(3, 3)
    with pytest.raises(ValueError, match=r"the same Linear object is placed twice, at 0 and 2.body.0; .*build a new"):
        Sequential([shared, layers.ReLU(), Residual([shared])])


def test_branch_shape_mismatch_names_both_shapes_and_the_path(rng):
    model = Sequential([layers.Linear(4, 3), Residual([layers.Linear(3, 2)])])
    with pytest.raises(ShapeError, match=r"Residual\(identity shortcut\) \(layer 1\): the body gives shape \(5, 2\) "
                                         r"but the identity shortcut gives \(5, 3\)"):
        model(rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(ShapeError, match=r"\(layer 1\): the body gives shape \(1, 2\) but the identity shortcut"):
        model.build((4,))
    with pytest.raises(TypeError, match="Residual: body must be a list of layers or a Sequential, got int"):
        Residual(3)


def test_the_input_shape_is_known_where_the_layers_fix_it(rng):
    """A first Linear (after layers that keep the shape, inside containers too) fixes (in_features,);
    a Conv2D fixes only the channels, and after a Flatten any shape with that many values fits."""
    assert Sequential([layers.Linear(7, 9), layers.ReLU(), layers.Linear(9, 2)]).input_shape == (7,)
    assert Sequential([layers.Dropout(0.1), Sequential([layers.GELU(), layers.Linear(5, 2)])]).input_shape == (5,)
    assert Sequential([Residual([layers.Linear(4, 4)]), layers.Linear(4, 1)]).input_shape == (4,)
    assert Sequential([layers.Flatten(), layers.Linear(4, 2)]).input_shape is None
    model = small_resnet()
    assert model.input_shape is None
    with pytest.raises(ShapeError, match=r"the input shape of this model is unknown: pass summary\(input_shape="):
        model.summary(print_fn=None)
    model(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))  # the first call that runs records it
    assert model.input_shape == (1, 6, 6)
    model(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))  # later calls leave it
    assert model.input_shape == (1, 6, 6) and "(N, 3, 3, 3)" in model.summary(print_fn=None)
    fresh = small_resnet()
    with pytest.raises(ShapeError):  # a call that fails records nothing
        fresh(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    assert fresh.input_shape is None


def test_the_composition_holds_children_and_the_model_its_training_session(rng, tmp_path):
    """layers.Sequential (a Residual's body) knows no training; xpnn.Sequential keeps what training
    leaves in one typed TrainingSession, read through model.loss, .optimizer, .history, .metadata."""
    body = small_resnet().layers[4].body
    assert type(body) is layers.Sequential and not isinstance(body, Sequential)
    for name in ("fit", "evaluate", "predict", "loss", "optimizer", "history", "metadata", "session", "build"):
        assert not hasattr(body, name), name
    model = small_resnet()
    assert isinstance(model.session, xpnn.train.TrainingSession) and model.metadata == {}
    assert model.loss is None and model.history is None and model.stop_training is False
    x, y = _data(rng)
    history = model.fit(x, y, optimizer="adam", epochs=1, batch_size=8, verbose=0)
    assert model.session.history is history is model.history and model.session.optimizer is model.optimizer
    assert type(model.session.loss).__name__ == "CrossEntropy" and model.session.input_shape == (1, 6, 6)
    loaded = xpnn.load(xpnn.save(model, tmp_path / "m.npz", metadata={"note": 1}))
    assert type(loaded) is Sequential and type(loaded.layers[4].body) is layers.Sequential
    assert loaded.session.metadata == {"note": 1} and loaded.session.input_shape == (1, 6, 6)


def test_evaluate_and_predict_leave_the_recorded_input_shape(rng):
    """Checking a shape records nothing: the shape the model was built for stays after evaluating
    or predicting on other images it accepts; an explicit build records."""
    model = zoo.resnet((1, 8, 8), 3, widths=(2, 2, 2, 2))
    x, y = _data(rng)  # 6x6 images: the network ends in a global average pool, so any size fits
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.evaluate(x, y)
    model.predict(x)
    assert model.input_shape == (1, 8, 8)
    fresh = small_resnet()
    fresh.fit(x, y, epochs=1, batch_size=8, verbose=0)  # the first fit records what it trained on
    fresh.predict(rng.standard_normal((2, 1, 9, 9)).astype(np.float32))
    assert fresh.input_shape == (1, 6, 6)
    assert fresh.build((1, 9, 9)) == (1, 3) and fresh.input_shape == (1, 9, 9)


def test_summary_shows_the_tree_and_trainable_counts():
    model = small_resnet()
    model.layers[3].trainable = False
    text = model.summary(input_shape=(1, 6, 6), print_fn=None)
    assert "4.shortcut.0" in text and "Residual(projection shortcut, then ReLU())" in text
    assert "(N, 3, 3, 3)" in text
    frozen = sum(p.size for p in model.layers[3].parameters())
    assert f"frozen: {frozen:,}" in text and f"Trainable parameters: {model.count_params() - frozen:,}" in text
    assert "Sequential(5 layers) (frozen)" in text


# --------------------------------------------------------------------------- freezing


def _data(rng, n=16):
    return rng.standard_normal((n, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, n)


def test_fit_leaves_frozen_weights_statistics_and_optimizer_state_untouched(rng):
    xpnn.seed(1)
    model = small_resnet()
    x, y = _data(rng)
    opt = optim.Adam(lr=0.01, weight_decay=0.1)
    model.fit(x, y, optimizer=opt, epochs=1, batch_size=8, verbose=0)
    frozen = model.layers[4]
    frozen.trainable = False
    assert not frozen.body.layers[1].trainable and model.trainable
    before = model.state_dict()
    state_before = {k: {n: np.array(backend.to_numpy(v)) if not isinstance(v, int) else v for n, v in s.items()}
                    for k, s in opt.state.items()}
    model.fit(x, y, optimizer=opt, epochs=2, batch_size=8, verbose=0)
    after = model.state_dict()
    for key in before:
        if key.startswith("4."):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        elif key.endswith("weight"):
            assert not np.array_equal(after[key], before[key]), key
    for name, entries in state_before.items():
        if name.startswith("4."):
            for k, v in entries.items():
                np.testing.assert_array_equal(backend.to_numpy(opt.state[name][k]) if not isinstance(v, int)
                                              else opt.state[name][k], v)
    assert all(p.grad is None for p in model.parameters())
    frozen.trainable = True
    model.fit(x, y, optimizer=opt, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(model.state_dict()["4.body.0.weight"], after["4.body.0.weight"])
    assert not np.array_equal(model.state_dict()["4.body.1.running_mean"], after["4.body.1.running_mean"])


def test_frozen_batchnorm_uses_running_statistics_in_training(device, rng):
    bn = layers.BatchNorm2D(2)
    bn.running_mean = backend.to_device(np.array([0.5, -1.0]), dtype="float32")
    bn.trainable = False
    x = backend.to_device(rng.standard_normal((4, 2, 3, 3)), dtype="float32")
    y_train, backprop = bn(x, train=True)
    np.testing.assert_array_equal(backend.to_numpy(y_train), backend.to_numpy(bn(x, train=False)[0]))
    np.testing.assert_array_equal(backend.to_numpy(bn.running_mean), [0.5, -1.0])
    backprop(x)
    assert bn.gamma.grad is None and bn.beta.grad is None


def test_backward_stops_at_the_first_trainable_layer(rng):
    model = small_resnet()
    for layer in model.layers[:5]:
        layer.trainable = False
    assert model.first_trainable() == 6
    calls = []
    block = model.layers[4]
    original = block.forward

    def spy(x, *, train, input_grad):
        calls.append(input_grad)
        return original(x, train=train, input_grad=input_grad)

    block.forward = spy
    x, _ = _data(rng, 4)
    out, backprop = model(x, train=True, input_grad=False)
    assert backprop(np.ones_like(out)) is None and calls == [False]
    assert [p.grad is None for p in model.parameters()] == [True] * (len(model.parameters()) - 2) + [False, False]


def test_fit_refuses_a_model_with_nothing_to_train(rng):
    model = small_resnet()
    model.trainable = False
    with pytest.raises(ValueError, match="nothing to train: every parameter of the model is frozen"):
        model.fit(*_data(rng), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="trainable must be True or False"):
        model.trainable = "no"


# --------------------------------------------------------------------------- partial and refused loads


def test_partial_load_reports_missing_unexpected_and_mismatched():
    source, target = small_resnet(classes=10), small_resnet(classes=4)
    state = source.state_dict()
    state["extra.weight"] = np.zeros(2, np.float32)
    del state["0.weight"]
    report = target.load_state_dict(state, strict=False)
    assert report.missing == ["0.weight"] and report.unexpected == ["extra.weight"]
    assert report.mismatched == [("6.weight", (3, 10), (3, 4)), ("6.bias", (10,), (4,))]
    assert "4.body.0.weight" in report.loaded and len(report.loaded) == len(state) - 3
    np.testing.assert_array_equal(target.state_dict()["4.body.0.weight"], state["4.body.0.weight"])
    with pytest.raises(ValueError, match="nothing in the state matches the model"):
        target.load_state_dict({"9.weight": np.zeros(1)}, strict=False)


def test_a_refused_load_changes_nothing(tmp_path):
    model = small_resnet()
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["6.bias"] = np.zeros(7, np.float32)  # the last entry does not fit
    with pytest.raises(ShapeError, match=r"state does not match the model: .*6.bias \(saved \(7,\), model \(3,\)\)"):
        model.load_state_dict(state)
    path = xpnn.save(small_resnet(classes=7), tmp_path / "seven.npz")
    with pytest.raises(ModelFileError, match=r"layer 6: file has Linear\(.*'out_features': 7"):
        xpnn.load(path, model=model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_load_weights_starts_a_new_model_from_the_matching_ones(tmp_path):
    source = small_resnet(classes=10)
    path = xpnn.save(source, tmp_path / "source.npz")
    target = small_resnet(classes=2)
    report = xpnn.io.load_weights(path, target)
    assert [name for name, *_ in report.mismatched] == ["6.weight", "6.bias"]
    np.testing.assert_array_equal(target.state_dict()["3.body.3.weight"], source.state_dict()["3.body.3.weight"])


def test_load_weights_refuses_a_weight_that_is_not_numbers(tmp_path):
    """A matching name and shape but text values: an error naming it, never a silent load of zeros."""
    path = xpnn.save(small_resnet(classes=2), tmp_path / "source.npz")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/0.weight"] = np.full(arrays["model/0.weight"].shape, "x")
    np.savez(tmp_path / "text.npz", **arrays)
    target = small_resnet(classes=2)
    before = target.state_dict()
    with pytest.raises(ModelFileError, match=r"text.npz: weights do not match the architecture: 0.weight holds <U1"):
        xpnn.io.load_weights(tmp_path / "text.npz", target)
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


# --------------------------------------------------------------------------- model files


def test_nested_round_trip_keeps_architecture_weights_and_freezing(device, tmp_path, rng):
    model = small_resnet()
    x, y = _data(rng)
    model.fit(x, y, optimizer="adam", epochs=1, batch_size=8, verbose=0)
    model.layers[3].trainable = False
    path = xpnn.save(model, tmp_path / "m.npz", optimizer=model.optimizer)
    loaded, opt, _ = xpnn.load_checkpoint(path)
    assert loaded.config() == model.config() and isinstance(loaded.layers[4], Residual)
    assert not loaded.layers[3].trainable and loaded.layers[4].trainable
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert sorted(opt.state) == sorted(model.optimizer.state)
    with np.load(path) as f:
        header = json.loads(str(f["__xpnn__"]))
    assert header["format_version"] == 2 and header["architecture"]["config"]["layers"][4]["type"] == "Residual"


def test_format_1_file_still_loads():
    model, opt, meta = xpnn.load_checkpoint(DATA / "model_v1.npz")
    assert meta == {"note": "written by xpnn format 1", "epoch": 2} and type(opt).__name__ == "Adam"
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D",
                                                                "Flatten", "Linear"]
    x = np.load(DATA / "model_v1_x.npy")
    np.testing.assert_allclose(model.predict(x), np.load(DATA / "model_v1_pred.npy"), rtol=1e-6, atol=1e-6)
    assert sorted(opt.state) == ["0.weight", "1.beta", "1.gamma", "5.bias", "5.weight"]
    xpnn.load(DATA / "model_v1.npz", model=model)


def test_differently_nested_models_list_the_differing_paths(tmp_path):
    path = xpnn.save(small_resnet(), tmp_path / "m.npz")
    other = small_resnet()
    other.layers[3] = Residual([layers.Conv2D(2, 2, 3, padding=1, bias=False), layers.BatchNorm2D(2)],
                               activation=layers.ReLU())
    other.layers[4].body.layers[2] = layers.Tanh()
    other = Sequential(other.layers)
    with pytest.raises(ModelFileError) as err:
        xpnn.load(path, model=other)
    message = str(err.value)
    assert "layer 3.body: the file has 5 layers, the model 2" in message
    assert "layer 4.body.2: file has ReLU({}), model has Tanh({})" in message
    assert "layer 6" not in message
