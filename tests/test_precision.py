"""Mixed precision: the dtype policy, where it casts, 16-bit numerics against float32 and PyTorch's
autocast, dynamic loss scaling (skip, back off, grow, resume), the TF32 switch."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

import xpnn
from xpnn import backend, instrumented, layers, losses, optim, precision
from xpnn.errors import PrecisionUnavailableError, TrainingDivergedError
from xpnn.train import loop

ml_dtypes = pytest.importorskip("ml_dtypes")
MIXED = ("mixed_bfloat16", "mixed_float16")
EPS = {"mixed_bfloat16": 2.0 ** -7, "mixed_float16": 2.0 ** -10}


@pytest.fixture(autouse=True)
def _float32_afterwards():
    """Each test leaves the global policy and matmul precision as it found them."""
    before, matmul = precision.dtype_policy(), precision.get_float32_matmul_precision()
    yield
    precision.set_dtype_policy(before)
    precision.set_float32_matmul_precision(matmul)


def _cnn(batchnorm=True):
    middle = [layers.BatchNorm2D(4)] if batchnorm else []
    # no conv bias before BatchNorm: its true gradient is zero, so its float32 value is rounding noise
    return xpnn.Sequential([layers.Conv2D(3, 4, 3, padding="same", bias=not batchnorm), *middle, layers.ReLU(),
                            layers.MaxPool2D(2), layers.Flatten(), layers.Linear(4 * 4 * 4, 8), layers.ReLU(),
                            layers.Linear(8, 3)])


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


# --------------------------------------------------------------------------- the policy


def test_the_policy_is_float32_by_default_and_the_context_form_restores_it():
    assert xpnn.dtype_policy().name == "float32" and not xpnn.dtype_policy().mixed
    with xpnn.set_dtype_policy("mixed_bfloat16") as policy:
        assert policy.compute_dtype == "bfloat16" and policy.variable_dtype == "float32"
        assert xpnn.dtype_policy() == policy and not policy.loss_scaling
        with xpnn.set_dtype_policy("mixed_float16"):
            assert xpnn.dtype_policy().loss_scaling
        assert xpnn.dtype_policy().name == "mixed_bfloat16"
    assert xpnn.dtype_policy().name == "float32"
    xpnn.set_dtype_policy("mixed_float16")  # the plain call sets it for good
    assert xpnn.dtype_policy().name == "mixed_float16"


def test_an_unknown_policy_is_refused_and_changes_nothing():
    xpnn.set_dtype_policy("mixed_float16")
    with pytest.raises(ValueError, match="unknown dtype policy 'float16'; choose one of float32, mixed_bfloat16, "
                                         "mixed_float16"):
        xpnn.set_dtype_policy("float16")
    assert xpnn.dtype_policy().name == "mixed_float16"


def test_bfloat16_without_ml_dtypes_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now raises ImportError
    with pytest.raises(PrecisionUnavailableError, match=r"bfloat16 needs the ml_dtypes package: pip install "
                                                        r"ml_dtypes \(or xpnn\[bfloat16\]\)"):
        xpnn.set_dtype_policy("mixed_bfloat16")
    assert xpnn.dtype_policy().name == "float32"
    xpnn.set_dtype_policy("mixed_float16")  # float16 needs no ml_dtypes


def test_array_api_strict_refuses_a_mixed_policy_before_training():
    strict = pytest.importorskip("array_api_strict")
    x, y = _batch()
    with xpnn.use_device(backend.Device.from_namespace(strict)):
        xpnn.seed(0)
        model = _cnn()
        before = model.state_dict()
        with xpnn.set_dtype_policy("mixed_bfloat16"):
            with pytest.raises(PrecisionUnavailableError, match="the mixed_bfloat16 policy needs 16-bit floats, "
                                                                "which array-api-strict does not have"):
                model.fit(x, y, optimizer=optim.SGD(0.1), epochs=1, batch_size=8, verbose=0)
        assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_cupy_13_is_refused_for_bfloat16_naming_the_version_to_install(monkeypatch):
    fake_cupy = types.SimpleNamespace(__version__="13.6.0")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(precision, "is_cupy_namespace", lambda xp: True)
    with pytest.raises(PrecisionUnavailableError, match=r"needs CuPy >= 14 .* this is CuPy 13 .*or use mixed_float16"):
        precision.check_available(np, precision.DTypePolicy("mixed_bfloat16"))
    precision.check_available(np, precision.DTypePolicy("mixed_float16"))


def test_dtype_names_and_limits_know_bfloat16():
    assert backend.dtype_name(ml_dtypes.bfloat16) == "bfloat16"
    assert backend.dtype_name(np.float16) == "float16"
    assert precision.finfo(ml_dtypes.bfloat16).eps == 2.0 ** -7
    assert precision.itemsize(ml_dtypes.bfloat16) == precision.itemsize(np.float16) == 2


# --------------------------------------------------------------------------- where it casts


@pytest.mark.parametrize("policy", MIXED)
def test_compute_is_16_bit_and_every_variable_stays_float32(policy):
    x, y = _batch()
    xpnn.seed(0)
    model = _cnn()
    with xpnn.set_dtype_policy(policy) as chosen:
        half = np.dtype(precision.compute_dtype(np))
        out, backprop = model(x, train=True, input_grad=False)
        assert out.dtype == half  # the logits: a matmul output
        conv_out, _ = model.layers[0](x, train=True)
        bn_out, _ = model.layers[1](conv_out, train=True)
        assert conv_out.dtype == half and bn_out.dtype == half
        value, dloss = losses.CrossEntropy()(out, y)
        assert value.dtype == np.float32  # the loss is float32
        backprop(dloss())
        assert all(p.grad.dtype == np.float32 for p in model.parameters())
        opt = optim.Adam(1e-3)
        opt.step(model.parameters())
        assert all(p.value.dtype == np.float32 for p in model.parameters())
        assert all(a.dtype == np.float32 for entries in opt.state.values() for k, a in entries.items() if k != "step")
        bn = model.layers[1]
        assert bn.running_mean.dtype == bn.running_var.dtype == np.float32
        assert layers.Softmax()(out)[0].dtype == np.float32
        assert model.predict(x).dtype == np.float32
        assert chosen.mixed


def test_a_16_bit_matmul_on_numpy_is_the_float32_product_rounded():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((7, 3)).astype(ml_dtypes.bfloat16)
    product = precision.matmul(a, b)
    assert product.dtype == ml_dtypes.bfloat16
    assert np.array_equal(product, (a.astype(np.float32) @ b.astype(np.float32)).astype(ml_dtypes.bfloat16))


@pytest.mark.parametrize("policy", MIXED)
def test_float32_policy_results_are_unchanged_bit_for_bit(policy):
    """Setting and leaving a mixed policy leaves float32 work exactly as it was."""
    x, y = _batch()
    xpnn.seed(0)
    model = _cnn()
    first = model(x)[0]
    with xpnn.set_dtype_policy(policy):
        model(x)
    assert np.array_equal(first, model(x)[0])


# --------------------------------------------------------------------------- numerics


def _gradients(model, x, y):
    out, backprop = model(x, train=True, input_grad=False)
    value, dloss = losses.CrossEntropy()(out, y)
    backprop(dloss())
    grads = {p.name: np.array(p.grad, dtype=np.float64) for p in model.parameters()}
    model.zero_grad()
    return float(value), grads


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_gradients_are_within_a_few_16_bit_epsilons_of_float32(policy):
    x, y = _batch(32)
    xpnn.seed(0)
    model = _cnn()
    loss32, grads32 = _gradients(model, x, y)
    with xpnn.set_dtype_policy(policy):
        loss16, grads16 = _gradients(model, x, y)
    assert abs(loss16 - loss32) <= 8 * EPS[policy] * abs(loss32)
    for name, g32 in grads32.items():
        error = np.linalg.norm(grads16[name] - g32) / np.linalg.norm(g32)
        assert error <= 16 * EPS[policy], f"{name}: relative error {error:.2g}"


@pytest.mark.parametrize("policy", MIXED)
def test_forward_and_gradients_match_torch_autocast(policy):
    torch = pytest.importorskip("torch")
    x, y = _batch(8)
    xpnn.seed(0)
    model = _cnn(batchnorm=False)
    conv, lin1, lin2 = model.layers[0], model.layers[4], model.layers[6]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(np.asarray(conv.weight.value)))
        net[0].bias.copy_(torch.from_numpy(np.asarray(conv.bias.value)))
        for mine, theirs in ((lin1, net[4]), (lin2, net[6])):
            theirs.weight.copy_(torch.from_numpy(np.asarray(mine.weight.value).T.copy()))
            theirs.bias.copy_(torch.from_numpy(np.asarray(mine.bias.value)))
    half = torch.bfloat16 if policy == "mixed_bfloat16" else torch.float16
    with torch.autocast("cpu", dtype=half):
        expected = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(expected.float(), torch.from_numpy(y)).backward()
    assert expected.dtype == half
    with xpnn.set_dtype_policy(policy):
        out, backprop = model(x, train=True, input_grad=False)
        backprop(losses.CrossEntropy()(out, y)[1]())
    assert str(out.dtype) == str(expected.dtype).replace("torch.", "")
    scale = float(expected.detach().float().abs().max())
    np.testing.assert_allclose(out.astype(np.float32), expected.detach().float().numpy(), rtol=0,
                               atol=4 * EPS[policy] * scale)
    pairs = [(conv.weight.grad, net[0].weight.grad), (lin1.weight.grad, net[4].weight.grad.T),
             (lin2.weight.grad, net[6].weight.grad.T), (lin2.bias.grad, net[6].bias.grad)]
    for mine, theirs in pairs:
        assert mine.dtype == np.float32 and theirs.dtype == torch.float32
        theirs = theirs.numpy()
        assert np.linalg.norm(mine - theirs) <= 8 * EPS[policy] * np.linalg.norm(theirs)


def test_a_loss_that_overflows_float16_is_still_divergence():
    """A skipped step is not divergence; a loss that is not finite in float32 is."""
    x, y = _batch()
    x[3] = 1e30  # overflows float16 in the first cast: the logits become inf/NaN
    xpnn.seed(0)
    model = _cnn(batchnorm=False)
    with xpnn.set_dtype_policy("mixed_float16"), np.errstate(all="ignore"):
        with pytest.raises(TrainingDivergedError, match="the loss became nan at epoch 1, batch 1 of 2"):
            model.fit(x, y, optimizer=optim.SGD(0.01), epochs=1, batch_size=8, shuffle=False, verbose=0)


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_training_learns_like_float32(policy):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    x = centers[y] + 0.5 * rng.standard_normal((96, 3, 8, 8)).astype(np.float32)
    accuracy = {}
    for name in ("float32", policy):
        xpnn.seed(0)
        model = _cnn()
        with xpnn.set_dtype_policy(name), np.errstate(all="ignore"):
            history = model.fit(x, y, optimizer=optim.Adam(1e-2), epochs=5, batch_size=16, seed=0, verbose=0)
        accuracy[name] = history.history["accuracy"][-1]
        if name == "mixed_float16":
            assert isinstance(model.optimizer, optim.LossScaleOptimizer)
        else:
            assert not isinstance(model.optimizer, optim.LossScaleOptimizer)
    assert accuracy["float32"] >= 0.95 and accuracy[policy] >= 0.95


# --------------------------------------------------------------------------- loss scaling


def _params(values):
    params = []
    for i, value in enumerate(values):
        p = layers.Parameter(np.array(value, dtype=np.float32), f"p{i}")
        params.append(p)
    return params


def _grads(params, values):
    for p, g in zip(params, values):
        p.grad = np.array(g, dtype=np.float32)


def test_a_step_with_inf_or_nan_is_skipped_the_scale_halves_and_the_count_restarts():
    params = _params([[1.0, 2.0], [3.0]])
    opt = optim.LossScaleOptimizer(optim.Adam(0.1), initial_scale=8.0, growth_interval=100)
    _grads(params, [[8.0, -8.0], [16.0]])
    opt.step(params)  # a good step: unscaled gradients [1, -1], [2]
    assert opt.scale == 8.0 and opt.good_steps == 1
    values = [p.value.copy() for p in params]
    state = {k: {s: np.array(a) for s, a in v.items() if s != "step"} for k, v in opt.state.items()}
    for bad in (math.inf, -math.inf, math.nan):
        _grads(params, [[bad, 1.0], [1.0]])
        with np.errstate(invalid="ignore"):  # the discarded update divides inf by inf
            opt.step(params)
        assert all(np.array_equal(v, p.value) for v, p in zip(values, params))
        assert all(np.array_equal(state[k][s], opt.state[k][s]) for k in state for s in state[k])
        assert opt.good_steps == 0
    assert opt.scale == 1.0  # 8 halved three times


def test_the_scale_grows_after_the_interval_of_good_steps():
    params = _params([[1.0]])
    opt = optim.LossScaleOptimizer(optim.SGD(0.01), initial_scale=4.0, growth_factor=2.0, growth_interval=3)
    seen = []
    for _ in range(7):
        _grads(params, [[1.0]])
        opt.step(params)
        seen.append((opt.scale, opt.good_steps))
    assert seen == [(4.0, 1), (4.0, 2), (8.0, 0), (8.0, 1), (8.0, 2), (16.0, 0), (16.0, 1)]


def test_gradients_are_unscaled_before_the_update_and_before_clipping():
    scale, clip = 1024.0, 0.5
    reference = _params([[1.0, -2.0], [0.5]])
    scaled = _params([[1.0, -2.0], [0.5]])
    plain = optim.SGD(0.1, global_clipnorm=clip)
    wrapped = optim.LossScaleOptimizer(optim.SGD(0.1, global_clipnorm=clip), initial_scale=scale)
    grads = [[3.0, 4.0], [12.0]]  # norm 13: clipped
    _grads(reference, grads)
    _grads(scaled, [[g * scale for g in gs] for gs in grads])
    plain.step(reference)
    wrapped.step(scaled)
    for a, b in zip(reference, scaled):
        np.testing.assert_allclose(b.value, a.value, rtol=1e-6)
    moved = np.concatenate([np.ravel(p.value) for p in scaled]) - np.array([1.0, -2.0, 0.5])
    assert np.linalg.norm(moved) == pytest.approx(0.1 * clip, rel=1e-5)


def test_scale_loss_multiplies_the_loss_gradient_and_plain_optimizers_leave_it():
    grad = np.ones((2, 3), dtype=np.float32)
    assert optim.SGD(0.1).scale_loss(grad) is grad
    scaled = optim.LossScaleOptimizer(optim.SGD(0.1)).scale_loss(grad)
    assert scaled.dtype == np.float32 and np.all(scaled == 2.0 ** 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"initial_scale": 0.0}, "LossScaleOptimizer: initial_scale must be"),
    ({"growth_factor": 0.5}, "LossScaleOptimizer: growth_factor must be a number >= 1, got 0.5"),
    ({"backoff_factor": 1.0}, r"LossScaleOptimizer: backoff_factor must be a number in \(0, 1\), got 1.0"),
    ({"growth_interval": 0}, "LossScaleOptimizer: growth_interval must be a positive integer, got 0"),
])
def test_bad_loss_scale_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.LossScaleOptimizer(optim.SGD(0.1), **kwargs)


def test_a_wrapper_is_not_wrapped_twice_and_a_record_rebuilds_it():
    wrapped = optim.LossScaleOptimizer("adam", growth_interval=5)
    with pytest.raises(ValueError, match="already a LossScaleOptimizer"):
        optim.LossScaleOptimizer(wrapped)
    assert wrapped.state_slots == 2 and wrapped.lr == 1e-3 and wrapped.epoch == 0 and wrapped.schedule is None
    wrapped.lr_factor = 0.5
    assert wrapped.inner.lr_factor == 0.5 and wrapped.lr == 5e-4
    again = optim.get_optimizer(type(wrapped).__name__, **wrapped.config())
    assert again.config() == wrapped.config() and again.inner.name == "adam"
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; known: adam, adamw, momentum, rmsprop, sgd"):
        optim.get_optimizer("adagrad")


def test_a_loss_scaled_step_reads_nothing_back_from_the_device(monkeypatch):
    """fit under mixed_float16 on the CuPy stand-in: the host reads of 1 and 4 batches are the same
    (only the end-of-epoch reads), as under float32."""
    monkeypatch.setattr(loop, "SYNC_SECONDS", math.inf)
    reads = {}
    for policy, batches in (("float32", 1), ("mixed_float16", 1), ("mixed_float16", 4)):
        xp = instrumented.make()
        x, y = _batch(5 * batches)
        with xpnn.use_device(backend.Device.from_namespace(xp, xp.devices[0])), xpnn.set_dtype_policy(policy):
            xpnn.seed(0)
            model = _cnn()
            xp.reset()
            with np.errstate(all="ignore"):
                model.fit(x, y, optimizer=optim.Adam(1e-3), epochs=1, batch_size=5, verbose=0)
            assert isinstance(model.optimizer, optim.LossScaleOptimizer) == (policy == "mixed_float16")
        reads[policy, batches] = dict(xp.host_reads)
    assert reads["mixed_float16", 1] == reads["mixed_float16", 4] == reads["float32", 1]


def test_resume_from_a_checkpoint_is_bit_exact_with_skipped_steps(tmp_path):
    """Two epochs in one go, and one epoch, save, load, one more: the same weights, optimizer state
    and loss scale (the first steps overflow float16 and are skipped)."""
    x, y = _batch(32)

    def run(epochs, model=None, optimizer=None, initial_epoch=0):
        if model is None:
            xpnn.seed(0)
            model = _cnn()
            optimizer = optim.LossScaleOptimizer(optim.Adam(1e-3), initial_scale=2.0 ** 24, growth_interval=3)
        with np.errstate(all="ignore"):
            model.fit(x, y, optimizer=optimizer, epochs=epochs, batch_size=8, seed=1, verbose=0,
                      initial_epoch=initial_epoch)
        return model, model.optimizer

    with xpnn.set_dtype_policy("mixed_float16"):
        straight, straight_opt = run(2)
        half, half_opt = run(1)
        assert half_opt.scale < 2.0 ** 24  # some steps were skipped
        xpnn.save(half, tmp_path / "ckpt.npz", optimizer=half_opt)
        model, opt, _ = xpnn.load_checkpoint(tmp_path / "ckpt.npz")
        assert isinstance(opt, optim.LossScaleOptimizer)
        assert (opt.scale, opt.good_steps) == (half_opt.scale, half_opt.good_steps)
        resumed, resumed_opt = run(2, model, opt, initial_epoch=1)
    for key, value in straight.state_dict().items():
        assert np.array_equal(value, resumed.state_dict()[key]), key
    assert (resumed_opt.scale, resumed_opt.good_steps) == (straight_opt.scale, straight_opt.good_steps)
    mine, theirs = straight_opt.state_dict(), resumed_opt.state_dict()
    for name, entries in mine["state"].items():
        for key, value in entries.items():
            assert np.array_equal(value, theirs["state"][name][key]), (name, key)


# --------------------------------------------------------------------------- TF32


def test_the_tf32_switch_sets_cupys_compute_type_and_environment(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(COMPUTE_TYPE_TF32=7, COMPUTE_TYPE_DEFAULT=1,
                                 set_compute_type=lambda dtype, kind: calls.append((np.dtype(dtype), kind)))
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", fake)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert xpnn.get_float32_matmul_precision() == "highest"
    xpnn.set_float32_matmul_precision("high")
    assert xpnn.get_float32_matmul_precision() == "high" and calls == [(np.dtype(np.float32), 7)]
    import os
    assert os.environ["CUPY_TF32"] == "1"
    xpnn.set_float32_matmul_precision("highest")
    assert calls[-1] == (np.dtype(np.float32), 1) and os.environ["CUPY_TF32"] == "0"
    with pytest.raises(ValueError, match="float32 matmul precision must be one of highest, high, got 'medium'"):
        xpnn.set_float32_matmul_precision("medium")
    assert xpnn.get_float32_matmul_precision() == "highest" and len(calls) == 2


def test_model_files_keep_float32_weights_and_record_the_policy_and_onnx_stays_float32(tmp_path):
    import json

    xpnn.seed(0)
    model = _cnn(batchnorm=False)
    with xpnn.set_dtype_policy("mixed_bfloat16"):
        model(_batch()[0], train=True)
        xpnn.save(model, tmp_path / "m.npz")
        with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
            header = json.loads(str(f["__xpnn__"]))
            assert all(f[k].dtype == np.float32 for k in f.files if k.startswith("model/"))
        assert header["dtype_policy"] == "mixed_bfloat16" and header["dtype"] == "float32"
        onnx = pytest.importorskip("onnx")
        graph = onnx.load(xpnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))).graph
    assert {t.data_type for t in graph.initializer} == {onnx.TensorProto.FLOAT}
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.FLOAT}


def test_the_train_command_refuses_bfloat16_without_ml_dtypes_in_one_line_writing_nothing(monkeypatch, tmp_path,
                                                                                          capsys):
    from xpnn.cli.command import main

    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    code = main(["train", "--precision", "mixed_bfloat16", "--limit", "100", "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip() == ("xpnn: error: bfloat16 needs the ml_dtypes package: pip install "
                                               "ml_dtypes (or xpnn[bfloat16])")
    assert xpnn.dtype_policy().name == "float32"
