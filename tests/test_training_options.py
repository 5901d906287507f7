"""Training options: gradient clipping, label smoothing, class and sample weights, per-step schedules
with warmup, ReduceLROnPlateau.

Compared with PyTorch where it has the same thing (``clip_grad_norm_``, ``CrossEntropyLoss``'s
``label_smoothing`` and ``weight=``, ``LinearLR`` + ``CosineAnnealingLR``), otherwise with Keras'
formulas written out in NumPy. Bad values: one clear error, and nothing changed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpnn
from xpnn import backend, losses
from xpnn.layers import Linear
from xpnn.layers.base import Parameter
from xpnn.model import Sequential
from xpnn.optim import SGD, Adam, Constant, CosineDecay, StepDecay, get_optimizer
from xpnn.train import ReduceLROnPlateau
from xpnn.train.weights import balanced_class_weight

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(7)
SHAPES = [(3, 4), (4,), (2, 3)]
VALUES = [RNG.normal(size=s) for s in SHAPES]
GRADS = [[RNG.normal(scale=scale, size=s) for s in SHAPES] for scale in (3.0, 0.05, 1.0)]


def _params(device):
    return [Parameter(backend.to_device(v, device, dtype="float32"), f"p{i}") for i, v in enumerate(VALUES)]


def _run(opt, device):
    params = _params(device)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = backend.to_device(g, device, dtype="float32")
        opt.step(params)
    return [backend.to_numpy(p.value) for p in params]


def _torch_run(make, clip=None):
    params = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in VALUES]
    opt = make(params)
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        if clip is not None:
            clip(params)
        opt.step()
    return [p.detach().numpy() for p in params]


# --------------------------------------------------------------------------- gradient clipping

@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_global_clipnorm_is_clip_grad_norm_then_step(device, name):
    if name == "sgd":
        ours = SGD(0.1, momentum=0.9, weight_decay=0.01, global_clipnorm=1.5)
        make = lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)  # noqa: E731
    else:
        ours = Adam(0.01, global_clipnorm=1.5)
        make = lambda ps: torch.optim.Adam(ps, lr=0.01)  # noqa: E731
    got = _run(ours, device)
    expected = _torch_run(make, clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.5))
    unclipped = _torch_run(make)
    for g, e, u in zip(got, expected, unclipped):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(e, u) for e, u in zip(expected, unclipped))  # the clipping did something


def _keras_clipped(grads, clipnorm=None, clipvalue=None):
    if clipvalue is not None:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return [g * clipnorm / max(np.linalg.norm(g), clipnorm) for g in grads]


@pytest.mark.parametrize("kind", ["clipnorm", "clipvalue"])
def test_per_parameter_clipping_follows_keras(device, kind):
    opt = SGD(0.1, **{kind: 0.8})
    got = _run(opt, device)
    w = [v.copy() for v in VALUES]
    for grads in GRADS:
        clipped = _keras_clipped(grads, **{kind: 0.8})
        w = [a - 0.1 * g for a, g in zip(w, clipped)]
    for g, e in zip(got, w):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_clipping_leaves_the_gradients_and_config_round_trips():
    params = _params("cpu")
    for p, g in zip(params, GRADS[0]):
        p.grad = backend.to_device(g, "cpu", dtype="float32")
    before = [backend.to_numpy(p.grad).copy() for p in params]
    opt = Adam(global_clipnorm=0.5)
    opt.step(params)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(backend.to_numpy(p.grad), b)
    twin = get_optimizer({"name": opt.name, **opt.config()})
    assert twin.global_clipnorm == 0.5 and twin.config() == opt.config()
    assert "global_clipnorm=0.5" in repr(opt) and "clipnorm" not in repr(Adam())


@pytest.mark.parametrize("kwargs, message", [
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "SGD: set at most one of clipnorm, clipvalue and global_clipnorm, "
                                                "got clipnorm, global_clipnorm"),
    ({"clipnorm": -1.0}, "SGD: clipnorm must be a finite number > 0, got -1.0"),
    ({"clipvalue": 0}, "SGD: clipvalue must be a finite number > 0, got 0"),
    ({"global_clipnorm": math.nan}, "SGD: global_clipnorm must be a finite number > 0, got nan"),
    ({"clip": 1.0}, "unexpected keyword argument 'clip'"),
])
def test_bad_clipping_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        SGD(0.1, **kwargs)


# --------------------------------------------------------------------------- label smoothing, weights

def _torch_ce(logits, target, **kwargs):
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    value = torch.nn.CrossEntropyLoss(reduction="none", **{k: v for k, v in kwargs.items() if k != "sample"})(
        z, torch.tensor(target))
    value = (value * torch.tensor(kwargs["sample"])).mean() if "sample" in kwargs else value.mean()
    value.backward()
    return float(value.detach()), z.grad.numpy()


def _ours(loss, logits, target, device, sample_weight=None):
    pred = backend.to_device(logits, device, dtype="float32")
    y = backend.to_device(target, device, dtype="int64" if target.dtype.kind == "i" else "float32")
    w = None if sample_weight is None else backend.to_device(sample_weight, device, dtype="float32")
    value, backprop = loss(pred, y, w) if w is not None else loss(pred, y)
    return float(backend.to_numpy(value)), backend.to_numpy(backprop())


LOGITS = RNG.normal(scale=2.0, size=(6, 4))
LABELS = np.array([0, 3, 1, 1, 2, 3])
SOFT = RNG.dirichlet(np.ones(4), size=6)


@pytest.mark.parametrize("target", [LABELS, SOFT], ids=["labels", "soft"])
def test_cross_entropy_label_smoothing_matches_torch(device, target):
    value, grad = _ours(losses.CrossEntropy(label_smoothing=0.2), LOGITS, target, device)
    ref_value, ref_grad = _torch_ce(LOGITS, target, label_smoothing=0.2)
    assert value == pytest.approx(ref_value, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


def test_cross_entropy_class_weights_match_torch_weight(device):
    class_weight = np.array([1.0, 3.0, 0.5, 2.0])
    value, grad = _ours(losses.CrossEntropy(), LOGITS, LABELS, device, sample_weight=class_weight[LABELS])
    # torch's weight= with reduction="mean" divides by the sum of the weights; Keras by the batch size
    ref_value, ref_grad = _torch_ce(LOGITS, LABELS, weight=torch.tensor(class_weight))
    assert value == pytest.approx(ref_value, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_label_smoothing_and_weights_follow_keras(device, from_logits):
    z = RNG.normal(scale=2.0, size=(5, 1))
    y = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    w = np.array([1.0, 0.0, 2.5, 1.0, 0.5])
    s = 0.1
    pred = z if from_logits else 1 / (1 + np.exp(-z))
    value, grad = _ours(losses.BinaryCrossEntropy(from_logits=from_logits, label_smoothing=s), pred, y, device, w)
    smooth = y * (1 - s) + s / 2  # Keras: y * (1 - label_smoothing) + 0.5 * label_smoothing
    zt = torch.tensor(z, requires_grad=True)
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(smooth), reduction="none")
    ref = (per_sample[:, 0] * torch.tensor(w)).sum() / len(w)
    ref.backward()
    assert value == pytest.approx(float(ref), rel=1e-6, abs=1e-6)
    expected = zt.grad.numpy() if from_logits else zt.grad.numpy() / (pred * (1 - pred))  # dL/dp = dL/dz / p(1-p)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_loss_options_in_config_and_bad_values():
    assert losses.CrossEntropy(label_smoothing=0.1).describe() == "CrossEntropy(label_smoothing=0.1)"
    assert losses.CrossEntropy().describe() == "CrossEntropy()"
    for bad in (-0.1, 1.5, math.nan, "0.1"):
        with pytest.raises(ValueError, match=r"CrossEntropy: label_smoothing must be a number in \[0, 1\]"):
            losses.CrossEntropy(label_smoothing=bad)
    with pytest.raises(xpnn.errors.ShapeError, match=r"sample_weight must have shape \(6,\)"):
        losses.CrossEntropy()(backend.to_device(LOGITS, "cpu", dtype="float32"), backend.to_device(LABELS, "cpu"),
                              backend.to_device(np.ones(5), "cpu", dtype="float32"))


def _model():
    xpnn.seed(3)
    return Sequential([Linear(5, 3)])


X = RNG.normal(size=(24, 5)).astype(np.float32)
Y = np.array([0] * 12 + [1] * 8 + [2] * 4)


def test_class_weight_is_sample_weight_of_the_class_and_balanced_is_sklearns():
    counts = np.bincount(Y)
    np.testing.assert_allclose(balanced_class_weight(Y, 3), len(Y) / (3 * counts))
    fits = {}
    for key, kwargs in {"balanced": {"class_weight": "balanced"},
                        "dict": {"class_weight": {0: 24 / 36, 1: 1.0, 2: 2.0}},
                        "sample": {"sample_weight": (len(Y) / (3 * counts))[Y]}}.items():
        model = _model()
        model.fit(X, Y, optimizer=SGD(0.5), epochs=2, batch_size=8, shuffle=False, verbose=0, **kwargs)
        fits[key] = [backend.to_numpy(p.value) for p in model.parameters()]
    for a, b in zip(fits["balanced"], fits["sample"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fits["balanced"], fits["dict"]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weighted_fit_is_torch_weight_and_evaluate_is_unweighted():
    class_weight = {0: 1.0, 1: 3.0, 2: 0.5}
    model = _model()
    w0, b0 = (backend.to_numpy(p.value).astype(np.float64) for p in model.parameters())
    model.fit(X, Y, loss="cross_entropy", optimizer=SGD(0.5), epochs=1, batch_size=None, verbose=0,
              class_weight=class_weight)
    layer = torch.nn.Linear(5, 3, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w0.T if w0.shape == (5, 3) else w0))
        layer.bias.copy_(torch.tensor(b0))
    per_sample = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64),
                                           reduction="none")(layer(torch.tensor(X, dtype=torch.float64)),
                                                             torch.tensor(Y))
    per_sample.mean().backward()
    with torch.no_grad():
        for p in layer.parameters():
            p -= 0.5 * p.grad
    weight = backend.to_numpy(model.parameters()[0].value)
    np.testing.assert_allclose(weight.T if weight.shape == (5, 3) else weight, layer.weight.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    unweighted = torch.nn.CrossEntropyLoss()(layer(torch.tensor(X, dtype=torch.float64)), torch.tensor(Y))
    assert model.evaluate(X, Y)["loss"] == pytest.approx(float(unweighted), rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"sample_weight": np.ones(23)}, r"sample_weight must hold one number per sample, shape \(24,\), got shape "
                                     r"\(23,\)"),
    ({"sample_weight": -np.ones(24)}, r"sample_weight must be finite and >= 0, got -1.0 at index 0"),
    ({"sample_weight": np.r_[np.ones(23), np.inf]}, r"sample_weight must be finite and >= 0, got inf at index 23"),
    ({"class_weight": {0: 1.0, 1: -2.0}}, r"class_weight\[1\] must be a finite number >= 0, got -2.0"),
    ({"class_weight": {0: math.nan}}, r"class_weight\[0\] must be a finite number >= 0, got nan"),
    ({"class_weight": {5: 1.0}}, r"class_weight: 5 is not a class of this model \(integers 0 to 2\)"),
    ({"class_weight": "balance"}, r"class_weight must be a mapping \{class: weight\} or 'balanced', got 'balance'"),
    ({"class_weight": [1.0, 2.0, 3.0]}, r"class_weight must be a mapping \{class: weight\} or 'balanced', got list"),
])
def test_bad_weights_one_error_nothing_trained(kwargs, message):
    model = _model()
    before = [backend.to_numpy(p.value).copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        model.fit(X, Y, optimizer=SGD(0.5), epochs=1, verbose=0, **kwargs)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(backend.to_numpy(p.value), b)
    assert model.optimizer is None and model.history is None


def test_a_class_absent_from_the_data_is_refused():
    y = np.where(Y == 2, 0, Y)
    with pytest.raises(ValueError, match=r"class_weight='balanced': class 2 has no samples in y"):
        _model().fit(X, y, epochs=1, verbose=0, class_weight="balanced")
    with pytest.raises(ValueError, match=r"class_weight names class 2, which has no samples in y"):
        _model().fit(X, y, epochs=1, verbose=0, class_weight={2: 4.0})
    with pytest.raises(ValueError, match=r"class_weight needs a class per sample, but y holds soft targets"):
        _model().fit(X, np.full((24, 3), 1 / 3), epochs=1, verbose=0, class_weight="balanced")


# --------------------------------------------------------------------------- schedules per step, warmup

def test_warmup_cosine_per_step_matches_torch():
    steps_per_epoch, epochs, warmup = 5, 6, 1.4  # 7 warmup steps, then a cosine over the remaining 23
    schedule = CosineDecay(0.1, epochs, min_lr=0.001, warmup_epochs=warmup)
    ours = [schedule.at_step(s, steps_per_epoch) for s in range(epochs * steps_per_epoch)]
    param = torch.nn.Parameter(torch.zeros(1))
    ramp = warmup * steps_per_epoch
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (ramp + 1), end_factor=(ramp + 1) / (ramp + 1) * 1.0,
                                          total_iters=ramp + 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch - ramp, eta_min=0.001)],
        milestones=[math.ceil(ramp)])
    lambda_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lambda_sched = torch.optim.lr_scheduler.LambdaLR(lambda_opt, lambda s: (
        (s + 1) / (ramp + 1) if s < ramp else
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - ramp) / (epochs * steps_per_epoch - ramp)))))
    theirs, lambdas = [], []
    for _ in range(epochs * steps_per_epoch):
        theirs.append(opt.param_groups[0]["lr"])
        lambdas.append(lambda_opt.param_groups[0]["lr"])
        opt.step(), sched.step(), lambda_opt.step(), lambda_sched.step()
    np.testing.assert_allclose(ours, lambdas, rtol=1e-9)
    np.testing.assert_allclose(ours[math.ceil(ramp):], theirs[math.ceil(ramp):], rtol=1e-6)
    assert ours[0] == pytest.approx(0.1 / (ramp + 1)) and ours[6] < 0.1 and ours[7] == pytest.approx(0.1)


def test_warmup_works_with_any_schedule_and_per_epoch_values_stay():
    assert [Constant(0.3, warmup_epochs=2)(e) for e in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    step = StepDecay(1.0, step_size=2, gamma=0.5, warmup_epochs=0.5)
    assert [step.at_step(s, 4) for s in range(10)] == pytest.approx(
        [1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"StepDecay: warmup_epochs must be a finite number >= 0, got -1"):
        StepDecay(1.0, 2, warmup_epochs=-1)


def test_fit_moves_the_schedule_every_update_and_logs_first_and_last():
    model = _model()
    schedule = CosineDecay(0.2, 3, warmup_epochs=1)
    history = model.fit(X, Y, optimizer=SGD(schedule), epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert history["lr"] == pytest.approx([schedule.at_step(3 * e, 3) for e in range(3)])
    assert history["lr_last"] == pytest.approx([schedule.at_step(3 * e + 2, 3) for e in range(3)])
    plain = _model().fit(X, Y, optimizer=SGD(0.2), epochs=1, verbose=0)
    assert plain["lr"] == [0.2] and "lr_last" not in plain.history


# --------------------------------------------------------------------------- ReduceLROnPlateau

class _Holder:
    def __init__(self, optimizer):
        self.optimizer = optimizer


def _keras_plateau(values, lr, factor, patience, cooldown, min_lr, min_delta):
    """Keras' ReduceLROnPlateau.on_epoch_end, written out (mode min)."""
    best, wait, counter, out = math.inf, 0, 0, []
    for current in values:
        if counter > 0:
            counter -= 1
            wait = 0
        if current < best - min_delta:
            best, wait = current, 0
        elif not counter > 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr, counter, wait = max(lr * factor, min_lr), cooldown, 0
        out.append(lr)
    return out


LOSSES = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91]


def _drive(plateau, optimizer, values, start=0):
    plateau.model = _Holder(optimizer)
    plateau.on_train_begin({})
    lrs = []
    for epoch, value in enumerate(values, start):
        plateau.on_epoch_end(epoch, {"val_loss": value})
        lrs.append(optimizer.lr)
    return lrs


@pytest.mark.parametrize("patience, cooldown, min_lr", [(2, 0, 0.0), (1, 2, 0.0), (1, 0, 0.004)])
def test_plateau_state_machine_follows_keras(patience, cooldown, min_lr):
    plateau = ReduceLROnPlateau(factor=0.5, patience=patience, cooldown=cooldown, min_lr=min_lr)
    got = _drive(plateau, SGD(0.1), LOSSES)
    expected = _keras_plateau(LOSSES, 0.1, 0.5, patience, cooldown, min_lr, 1e-4)
    assert got == pytest.approx(expected, rel=1e-12)
    assert min(got) >= min_lr and got[-1] < 0.1


def test_plateau_scales_a_schedule_and_resumes_exactly():
    make = lambda: SGD(StepDecay(0.1, step_size=4, gamma=0.5))  # noqa: E731
    whole_opt = make()
    whole = _drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1), whole_opt, LOSSES)
    first_opt = make()
    first = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1)
    _drive(first, first_opt, LOSSES[:7])
    saved_plateau, saved_opt = first.state_dict(), first_opt.state_dict()
    resumed_opt = make()
    resumed_opt.load_state_dict(saved_opt, [])
    resumed = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1)
    resumed.load_state_dict(saved_plateau)
    rest = _drive(resumed, resumed_opt, LOSSES[7:], start=7)
    assert whole[7:] == rest  # bit for bit
    assert resumed_opt.lr_factor == whole_opt.lr_factor < 1
    whole_opt.set_epoch(4)
    assert whole_opt.lr == 0.05 * whole_opt.lr_factor  # the schedule's value, scaled


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": 1.0}, r"ReduceLROnPlateau: factor must be a number in \(0, 1\), got 1.0"),
    ({"patience": -1}, r"ReduceLROnPlateau: patience must be an integer >= 0, got -1"),
    ({"cooldown": 1.5}, r"ReduceLROnPlateau: cooldown must be an integer >= 0, got 1.5"),
    ({"min_lr": -1e-3}, r"ReduceLROnPlateau: min_lr must be a finite number >= 0, got -0.001"),
    ({"mode": "up"}, r"mode must be 'auto', 'min' or 'max', got 'up'"),
])
def test_bad_plateau_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau(**kwargs)


def test_bad_plateau_state_changes_nothing():
    plateau = ReduceLROnPlateau(patience=1)
    _drive(plateau, SGD(0.1), [1.0, 1.2])
    before = plateau.state_dict()
    for bad, message in (({"best": 1.0, "wait": -1, "cooldown_counter": 0}, "wait must be an integer >= 0"),
                         ({"best": "x", "wait": 0, "cooldown_counter": 0}, "best must be a finite number or null"),
                         ({"best": 1.0}, "expected a record with best, wait and cooldown_counter")):
        with pytest.raises(ValueError, match=message):
            plateau.load_state_dict(bad)
        assert plateau.state_dict() == before
    opt = SGD(0.1)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: lr_factor must be a finite number >= 0, got -1"):
        opt.load_state_dict({"name": "sgd", "state": {}, "epoch": 3, "lr_factor": -1}, [])
    assert opt.epoch == 0 and opt.lr_factor == 1.0
