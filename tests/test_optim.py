"""Optimizers and schedules: hand-computed steps on every backend, state round trips, bad arguments.

Expected values come from the update formulas, written out with NumPy in float64 (or as literal
numbers where they are short), independently of the in-place array-API code under test; where
torch is importable a few steps are also compared with ``torch.optim``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xpnn import backend
from xpnn.layers.base import Parameter
from xpnn.optim import (SGD, Adam, AdamW, CosineDecay, ExponentialDecay, Optimizer, RMSprop, StepDecay,
                        get_optimizer, get_schedule)

W0 = np.array([[1.0, -2.0], [0.5, 3.0]])
GRADS = [np.array([[0.5, -1.0], [0.25, 2.0]]),
         np.array([[-0.3, 0.7], [0.0, 1.5]]),
         np.array([[0.2, 0.1], [-0.8, -0.4]])]


# --------------------------------------------------------------------------- reference formulas

def ref_sgd(grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    w, buf, out = W0.copy(), None, []
    for g in grads:
        d = g + weight_decay * w
        if momentum:
            buf = d if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        w = w - lr * d
        out.append(w)
    return out


def ref_adam(grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    w, m, v, out = W0.copy(), 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            w = w - lr * weight_decay * w
        else:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(w)
    return out


def ref_rmsprop(grads, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    w, s, buf, out = W0.copy(), 0.0, 0.0, []
    for g in grads:
        g = g + weight_decay * w
        s = alpha * s + (1 - alpha) * g * g
        scaled = g / (np.sqrt(s) + eps)
        buf = momentum * buf + scaled
        w = w - lr * (buf if momentum else scaled)
        out.append(w)
    return out


CASES = {
    "sgd": (lambda: SGD(0.1), lambda g: ref_sgd(g, 0.1)),
    "sgd-wd": (lambda: SGD(0.1, weight_decay=0.1), lambda g: ref_sgd(g, 0.1, weight_decay=0.1)),
    "momentum": (lambda: SGD(0.1, momentum=0.9), lambda g: ref_sgd(g, 0.1, 0.9)),
    "momentum-wd": (lambda: SGD(0.1, momentum=0.9, weight_decay=0.05),
                    lambda g: ref_sgd(g, 0.1, 0.9, weight_decay=0.05)),
    "nesterov": (lambda: SGD(0.1, momentum=0.9, nesterov=True), lambda g: ref_sgd(g, 0.1, 0.9, True)),
    "nesterov-wd": (lambda: SGD(0.1, momentum=0.8, nesterov=True, weight_decay=0.05),
                    lambda g: ref_sgd(g, 0.1, 0.8, True, 0.05)),
    "adam": (lambda: Adam(0.1), lambda g: ref_adam(g, 0.1)),
    "adam-l2": (lambda: Adam(0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
                lambda g: ref_adam(g, 0.1, (0.8, 0.9), 1e-6, 0.1)),
    "adamw": (lambda: AdamW(0.1, weight_decay=0.1), lambda g: ref_adam(g, 0.1, weight_decay=0.1, decoupled=True)),
    "rmsprop": (lambda: RMSprop(0.01), lambda g: ref_rmsprop(g, 0.01)),
    "rmsprop-momentum-wd": (lambda: RMSprop(0.01, alpha=0.9, momentum=0.5, weight_decay=0.1),
                            lambda g: ref_rmsprop(g, 0.01, 0.9, momentum=0.5, weight_decay=0.1)),
}


# --------------------------------------------------------------------------- helpers

def make_param(device, value=W0, name="w"):
    return Parameter(backend.to_device(value, device, dtype="float32"), name)


def run_steps(opt, param, grads, device):
    """Step ``opt`` once per gradient; checks each update is in place, float32 and on ``device``.

    The first step moves the parameter into the optimizer's flat buffer (``value`` becomes a view
    of it); from then on the same array is updated in place.
    """
    out = []
    for step, g in enumerate(grads):
        before = param.value
        param.grad = backend.to_device(g, device, dtype="float32")
        opt.step([param])
        assert step == 0 or param.value is before, "the update must be in place"
        assert param.value.dtype == backend.dtype_of(device.xp, "float32")
        assert backend.device_of(param.value) == device
        out.append(backend.to_numpy(param.value).copy())
    return out


def assert_steps(got, expected, rtol=1e-5, atol=1e-6):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"step {i + 1}")


# --------------------------------------------------------------------------- steps, hand-computed

@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_match_formulas(device, case):
    make, reference = CASES[case]
    opt = make()
    assert_steps(run_steps(opt, make_param(device), GRADS, device), reference(GRADS))
    for entries in opt.state.values():
        for value in entries.values():
            if not isinstance(value, int):
                assert value.dtype == backend.dtype_of(device.xp, "float32")
                assert backend.device_of(value) == device


def test_sgd_momentum_literal_values(device):
    # w0 = 1, constant g = 1, lr = 0.1, mu = 0.9: v = 1, 1.9, 2.71.
    ones = [np.ones(1)] * 3
    plain = run_steps(SGD(0.1, momentum=0.9), make_param(device, np.ones(1)), ones, device)
    assert_steps(plain, [[0.9], [0.71], [0.439]])
    # Nesterov steps by g + mu * v: 1.9, 2.71, 3.439.
    nesterov = run_steps(SGD(0.1, momentum=0.9, nesterov=True), make_param(device, np.ones(1)), ones, device)
    assert_steps(nesterov, [[0.81], [0.539], [0.1951]])


def test_sgd_weight_decay_is_l2_on_the_gradient(device):
    # g = 0.5, w = 1, wd = 0.1: d = 0.6, w = 1 - 0.1 * 0.6 = 0.94.
    got = run_steps(SGD(0.1, weight_decay=0.1), make_param(device, np.ones(1)), [np.full(1, 0.5)], device)
    assert_steps(got, [[0.94]])


def test_first_adaptive_steps_are_lr_times_sign(device):
    # Bias-corrected Adam's first step is lr * g / |g|; RMSprop's is lr * g / (sqrt(1 - alpha) |g|).
    g = [np.array([[0.5, -1.0], [0.25, 2.0]])]
    expected = [W0 - 0.1 * np.sign(g[0])]
    assert_steps(run_steps(Adam(0.1), make_param(device), g, device), expected)
    assert_steps(run_steps(RMSprop(0.01, alpha=0.99), make_param(device), g, device), expected)


def test_adamw_decouples_weight_decay_and_adam_couples_it(device):
    zero = [np.zeros((2, 2))]
    # Zero gradient: AdamW only shrinks w by lr * wd = 1 %...
    assert_steps(run_steps(AdamW(0.1, weight_decay=0.1), make_param(device), zero, device), [W0 * 0.99])
    # ...while Adam's L2 term wd * w is normalised like a gradient: a step of lr against sign(w).
    assert_steps(run_steps(Adam(0.1, weight_decay=0.1), make_param(device), zero, device),
                 [W0 - 0.1 * np.sign(W0)])
    # With a gradient: AdamW = shrink then lr * sign(g); Adam = lr * sign(g + wd * w) (same sign here).
    g = [np.array([[0.5, -1.0], [0.25, 2.0]])]
    assert_steps(run_steps(AdamW(0.1, weight_decay=0.1), make_param(device), g, device),
                 [W0 * 0.99 - 0.1 * np.sign(g[0])])
    assert_steps(run_steps(Adam(0.1, weight_decay=0.1), make_param(device), g, device), [W0 - 0.1 * np.sign(g[0])])


def test_params_without_grad_are_skipped_and_zero_grad_clears(device):
    opt = Adam(0.1)
    a, b = make_param(device, name="a"), make_param(device, name="b")
    a.grad = backend.to_device(GRADS[0], device, dtype="float32")
    opt.step([a, b])
    np.testing.assert_array_equal(backend.to_numpy(b.value), W0.astype(np.float32))
    assert set(opt.state) == {"a"}
    opt.zero_grad([a, b])
    assert a.grad is None and b.grad is None


def test_float64_hyperparameters_keep_float32(device):
    opt = Adam(np.float64(0.1), betas=(np.float64(0.9), np.float64(0.999)), eps=np.float64(1e-8),
               weight_decay=np.float64(0.01))
    assert type(opt.lr) is float and all(type(b) is float for b in opt.betas)
    run_steps(opt, make_param(device), GRADS, device)  # asserts float32 after every step


def test_duplicate_parameter_names_are_refused(device):
    a, b = make_param(device, name="weight"), make_param(device, name="weight")
    for p in (a, b):
        p.grad = backend.to_device(GRADS[0], device, dtype="float32")
    with pytest.raises(ValueError, match=r"Adam: parameter names must be unique.*repeated: \['weight'\]"):
        Adam().step([a, b])
    SGD(0.1).step([a, b])  # plain SGD keeps no state, so names do not matter


# --------------------------------------------------------------------------- state round trip

@pytest.mark.parametrize("case", ["momentum", "nesterov-wd", "adam", "adamw", "rmsprop-momentum-wd"])
def test_state_dict_round_trip_continues_identically(device, case):
    make, _ = CASES[case]
    opt = make()
    base = opt.lr
    opt.lr = StepDecay(base, step_size=1, gamma=0.5)
    opt.set_epoch(1)
    param = make_param(device, name="0.weight")
    run_steps(opt, param, GRADS[:2], device)

    saved = opt.state_dict()
    json.dumps(saved, default=lambda a: a.tolist() if isinstance(a, np.ndarray) else None)
    arrays = [v for entries in saved["state"].values() for v in entries.values() if not isinstance(v, int)]
    assert arrays and all(isinstance(a, np.ndarray) for a in arrays)
    snapshot = [a.copy() for a in arrays]

    resumed = get_optimizer(saved["name"], **json.loads(json.dumps(saved["config"])))
    twin = make_param(device, backend.to_numpy(param.value).copy(), name="0.weight")
    resumed.load_state_dict(saved, [twin])
    assert resumed.epoch == 1 and resumed.lr == opt.lr == base / 2

    rest = [GRADS[2], GRADS[0]]
    expected = run_steps(opt, param, rest, device)
    got = run_steps(resumed, twin, rest, device)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    for before, after in zip(snapshot, arrays):  # neither optimizer writes into the saved arrays
        np.testing.assert_array_equal(before, after)


def test_load_state_dict_errors(device):
    opt = Adam(0.1)
    param = make_param(device, name="0.weight")
    run_steps(opt, param, GRADS[:1], device)
    saved = opt.state_dict()
    with pytest.raises(ValueError, match=r"RMSprop.load_state_dict: the state is from a 'adam' optimizer, "
                                         r"this one is 'rmsprop'"):
        RMSprop().load_state_dict(saved, [param])
    with pytest.raises(ValueError, match=r"state for parameters \['0.weight'\] that are not among the parameters "
                                         r"given \(\['1.weight'\]\)"):
        Adam().load_state_dict(saved, [make_param(device, name="1.weight")])
    with pytest.raises(ValueError, match=r"parameter '0.weight' has state \['exp_avg', 'exp_avg_sq', 'step'\], "
                                         r"expected \['momentum_buffer'\]"):
        SGD(momentum=0.9).load_state_dict({**saved, "name": "sgd"}, [param])


def _adam_after_two_steps(device):
    """An Adam that stepped a body and a head ("0.weight", "1.weight") twice, with both."""
    opt = Adam(0.1)
    head, body = make_param(device, name="1.weight"), make_param(device, name="0.weight")
    for grad in GRADS[:2]:
        for p in (head, body):
            p.grad = backend.to_device(grad, device, dtype="float32")
        opt.step([body, head])
    return opt, head, body


def test_state_that_no_longer_fits_its_parameter_is_dropped(device):
    """A head replaced under the same name starts from fresh state; the other parameters keep theirs."""
    opt, head, body = _adam_after_two_steps(device)
    saved = opt.state_dict()
    new_head = make_param(device, np.ones(3), name="1.weight")
    resumed = Adam(0.1)
    resumed.load_state_dict(saved, [body, new_head])
    assert sorted(resumed.state) == ["0.weight"]
    np.testing.assert_array_equal(backend.to_numpy(resumed.state["0.weight"]["exp_avg"]),
                                  saved["state"]["0.weight"]["exp_avg"])
    new_head.grad = backend.to_device(np.ones(3), device, dtype="float32")
    resumed.step([new_head])
    assert resumed.state["1.weight"]["step"] == 1


def test_the_same_optimizer_reused_after_a_new_head_drops_its_stale_state(device):
    """Not through load_state_dict: the optimizer that trained the old head steps the new one
    (another shape, same name) from fresh state, exactly as a new optimizer would."""
    opt, head, body = _adam_after_two_steps(device)
    kept = backend.to_numpy(opt.state["0.weight"]["exp_avg"]).copy()
    new_head, fresh_head = (make_param(device, np.arange(3.0), name="1.weight") for _ in range(2))
    for p in (new_head, fresh_head, body):
        p.grad = backend.to_device(np.ones(p.shape), device, dtype="float32")
    opt.step([body, new_head])
    Adam(0.1).step([fresh_head])
    assert opt.state["1.weight"]["step"] == 1 and opt.state["0.weight"]["step"] == 3
    np.testing.assert_array_equal(backend.to_numpy(new_head.value), backend.to_numpy(fresh_head.value))
    assert not np.array_equal(backend.to_numpy(opt.state["0.weight"]["exp_avg"]), kept)


# --------------------------------------------------------------------------- schedules

def test_schedule_values():
    step = StepDecay(0.1, step_size=2, gamma=0.5)
    assert [step(e) for e in range(5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    exp = ExponentialDecay(0.1, gamma=0.5)
    assert [exp(e) for e in range(3)] == pytest.approx([0.1, 0.05, 0.025])
    c = math.cos(math.pi / 4)
    cosine = CosineDecay(1.0, epochs=4)
    assert [cosine(e) for e in (0, 1, 2, 3, 4, 10)] == pytest.approx([1.0, (1 + c) / 2, 0.5, (1 - c) / 2, 0.0, 0.0])
    floor = CosineDecay(1.0, epochs=4, min_lr=0.2)
    assert [floor(e) for e in (0, 2, 4)] == pytest.approx([1.0, 0.6, 0.2])
    warm = CosineDecay(1.0, epochs=6, warmup_epochs=2)
    assert [warm(e) for e in range(7)] == pytest.approx([1 / 3, 2 / 3, 1.0, (1 + c) / 2, 0.5, (1 - c) / 2, 0.0])
    assert all(type(s(3)) is float for s in (step, exp, cosine, warm))


def test_optimizer_follows_schedule_per_epoch(device):
    opt = SGD(StepDecay(0.1, step_size=1, gamma=0.5))
    assert opt.lr == pytest.approx(0.1)
    opt.set_epoch(2)
    assert opt.lr == pytest.approx(0.025)
    got = run_steps(opt, make_param(device, np.ones(1)), [np.ones(1)], device)
    assert_steps(got, [[0.975]])
    opt.lr = 0.5  # a plain float replaces the schedule
    opt.set_epoch(3)
    assert opt.lr == 0.5 and opt.schedule is None


def test_config_rebuilds_optimizers_and_schedules():
    for opt in (SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), Adam(CosineDecay(0.01, 10, warmup_epochs=2)),
                AdamW(), RMSprop(momentum=0.5), SGD(ExponentialDecay(0.1, 0.9))):
        record = json.loads(json.dumps({"name": opt.name, **opt.config()}))
        twin = get_optimizer(record)
        assert type(twin) is type(opt) and twin.config() == opt.config()
        assert type(twin).__name__ in repr(twin)
    schedule = CosineDecay(0.1, 5, min_lr=0.01)
    assert get_schedule({"name": "cosine", **schedule.config()}).config() == schedule.config()
    assert get_schedule("step", lr=0.1, step_size=3)(3) == pytest.approx(0.01)


def test_get_optimizer_names():
    momentum = get_optimizer("momentum", lr=0.05)
    assert type(momentum) is SGD and momentum.momentum == 0.9 and momentum.lr == 0.05
    assert type(get_optimizer(" AdamW ")) is AdamW and get_optimizer("adamw").weight_decay == 0.01
    assert type(get_optimizer("rmsprop")) is RMSprop and type(get_optimizer("sgd")) is SGD
    adam = Adam()
    assert get_optimizer(adam) is adam
    assert isinstance(adam, Optimizer)


# --------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("build, message", [
    (lambda: SGD(-0.1), r"SGD: lr must be a finite number >= 0, got -0.1"),
    (lambda: Adam(float("nan")), r"Adam: lr must be a finite number >= 0, got nan"),
    (lambda: Adam("0.1"), r"Adam: lr must be a finite number >= 0, got '0.1'"),
    (lambda: Adam(lambda e: 0.1), r"Adam: lr must be a number or a Schedule"),
    (lambda: Adam(betas=(1.0, 0.999)), r"Adam: betas\[0\] must be a number in \[0, 1\), got 1.0"),
    (lambda: AdamW(betas=(0.9, -0.1)), r"AdamW: betas\[1\] must be a number in \[0, 1\), got -0.1"),
    (lambda: Adam(betas=(0.9, 0.99, 0.999)), r"Adam: betas must be a pair \(beta1, beta2\), got \(0.9, 0.99, 0.999\)"),
    (lambda: Adam(eps=-1e-8), r"Adam: eps must be a finite number >= 0, got -1e-08"),
    (lambda: SGD(0.1, momentum=1.5), r"SGD: momentum must be a number in \[0, 1\), got 1.5"),
    (lambda: SGD(0.1, nesterov=True), r"SGD: nesterov=True needs a momentum > 0"),
    (lambda: SGD(0.1, weight_decay=-1e-4), r"SGD: weight_decay must be a finite number >= 0, got -0.0001"),
    (lambda: RMSprop(alpha=1.0), r"RMSprop: alpha must be a number in \[0, 1\), got 1.0"),
    (lambda: get_optimizer("adagrad"), r"unknown optimizer 'adagrad'; known: adam, adamw, momentum, rmsprop, sgd"),
    (lambda: get_optimizer({"lr": 0.1}), r"get_optimizer: the record needs a 'name' key, got keys \['lr'\]"),
    (lambda: get_optimizer(Adam(), lr=0.1), r"get_optimizer: got an instance Adam\(.*\) and arguments \['lr'\]"),
    (lambda: StepDecay(0.1, step_size=0), r"StepDecay: step_size must be a positive integer, got 0"),
    (lambda: ExponentialDecay(0.1, gamma=0.0), r"ExponentialDecay: gamma must be a number in \(0, 1\], got 0.0"),
    (lambda: CosineDecay(0.1, epochs=5, warmup_epochs=5),
     r"CosineDecay: warmup_epochs \(5\) must be less than epochs \(5\)"),
    (lambda: CosineDecay(0.1, epochs=5, min_lr=0.2), r"CosineDecay: min_lr \(0.2\) must not exceed lr \(0.1\)"),
    (lambda: get_schedule("linear"), r"unknown schedule 'linear'; known: constant, cosine, exponential, step"),
    (lambda: StepDecay(0.1, 2)(-1), r"StepDecay: epoch must be an integer >= 0, got -1"),
    (lambda: SGD(0.1).set_epoch(1.5), r"SGD: epoch must be an integer >= 0, got 1.5"),
])
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------- against torch.optim

TORCH_CASES = {
    "momentum-wd": (lambda: SGD(0.1, momentum=0.9, weight_decay=0.05),
                    lambda t, ps: t.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05)),
    "nesterov": (lambda: SGD(0.1, momentum=0.9, nesterov=True),
                 lambda t, ps: t.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    "adam-l2": (lambda: Adam(0.1, weight_decay=0.1), lambda t, ps: t.optim.Adam(ps, lr=0.1, weight_decay=0.1)),
    "adamw": (lambda: AdamW(0.1, weight_decay=0.1), lambda t, ps: t.optim.AdamW(ps, lr=0.1, weight_decay=0.1)),
    "rmsprop": (lambda: RMSprop(0.01, momentum=0.5, weight_decay=0.1),
                lambda t, ps: t.optim.RMSprop(ps, lr=0.01, momentum=0.5, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_optim(case):
    torch = pytest.importorskip("torch")
    make, make_torch = TORCH_CASES[case]
    tw = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float32))
    topt = make_torch(torch, [tw])
    expected = []
    for g in GRADS:
        tw.grad = torch.tensor(g, dtype=torch.float32)
        topt.step()
        expected.append(tw.detach().numpy().copy())
    # Ours on NumPy, and on torch tensors through array-api-compat (in place on a plain tensor).
    for spec in ("cpu", "torch:cpu"):
        with backend.use_device(spec) as device:
            assert_steps(run_steps(make(), make_param(device), GRADS, device), expected)


def test_schedules_match_torch_lr_schedulers():
    torch = pytest.importorskip("torch")

    def torch_lrs(make_scheduler, epochs):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler, lrs = make_scheduler(opt), []
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return lrs

    sched = torch.optim.lr_scheduler
    pairs = [(StepDecay(0.1, 3, 0.5), lambda o: sched.StepLR(o, 3, 0.5)),
             (ExponentialDecay(0.1, 0.8), lambda o: sched.ExponentialLR(o, 0.8)),
             (CosineDecay(0.1, 8, min_lr=0.01), lambda o: sched.CosineAnnealingLR(o, 8, eta_min=0.01))]
    for ours, theirs in pairs:
        assert [ours(e) for e in range(8)] == pytest.approx(torch_lrs(theirs, 8), rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- flat buffers

def _params(device, names=("0.weight", "0.bias", "2.weight")):
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (4,), (4, 2)]
    return [Parameter(backend.to_device(rng.standard_normal(s), device, dtype="float32"), n)
            for s, n in zip(shapes, names)]


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(np.float32) for p in params]


@pytest.mark.parametrize("case", ["adam", "momentum", "rmsprop-momentum-wd"])
def test_flat_update_equals_one_optimizer_per_parameter_as_the_trainable_set_changes(device, case):
    """One optimizer over a changing set of parameters (a block frozen, then unfrozen) gives what
    separate optimizers, one per parameter stepped only when passed, give; the state of a
    parameter left out is not touched."""
    make, _ = CASES[case]
    together, alone = _params(device), _params(device)
    opt, singles = make(), [make() for _ in alone]
    schedule = [(0, 1, 2), (0, 1, 2), (0, 2), (0, 2), (0, 1, 2), (1,)]
    for step, chosen in enumerate(schedule):
        grads = _grads(together, step)
        for i in chosen:
            together[i].grad = backend.to_device(grads[i], device)
            alone[i].grad = backend.to_device(grads[i], device)
        frozen_state = {k: backend.to_numpy(v).copy() for k, v in opt.state.get("0.bias", {}).items()
                        if not isinstance(v, int)}
        opt.step([together[i] for i in chosen])
        for i in chosen:
            singles[i].step([alone[i]])
            together[i].grad = alone[i].grad = None
        if 1 not in chosen:
            for key, value in frozen_state.items():
                np.testing.assert_array_equal(backend.to_numpy(opt.state["0.bias"][key]), value)
        for a, b in zip(together, alone):
            np.testing.assert_allclose(backend.to_numpy(a.value), backend.to_numpy(b.value), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{a.name} after step {step + 1}")
    for single, p in zip(singles, alone):
        for key, value in single.state[p.name].items():
            if isinstance(value, int):
                assert opt.state[p.name][key] == value
            else:
                np.testing.assert_allclose(backend.to_numpy(opt.state[p.name][key]), backend.to_numpy(value),
                                           rtol=1e-6, atol=1e-7)


def test_flat_buffers_follow_replaced_parameter_arrays(device, tmp_path):
    """Loading weights (new arrays), moving or casting the model after steps repacks: the next step
    starts from the loaded values; a model file saved from the packed views loads back exactly."""
    import xpnn
    from xpnn import layers

    model = xpnn.Sequential([layers.Linear(4, 3), layers.ReLU(), layers.Linear(3, 2)])
    model.to(device)
    x = backend.to_device(np.random.default_rng(0).standard_normal((5, 4)), device, dtype="float32")
    opt = Adam(0.05)

    def step():
        out, backprop = model(x, train=True)
        backprop(out * 1.0)
        opt.step(model.parameters())
        model.zero_grad()

    step()
    saved = model.state_dict()
    step()
    assert not np.array_equal(model.state_dict()["0.weight"], saved["0.weight"])
    model.load_state_dict(saved)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], saved["0.weight"])
    before = model.state_dict()
    step()
    after = model.state_dict()
    assert not np.array_equal(after["0.weight"], before["0.weight"]), "the loaded arrays must be the ones updated"
    xpnn.save(model, tmp_path / "packed.npz")
    loaded = xpnn.load(tmp_path / "packed.npz")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    model.to("cpu")
    x_cpu = backend.to_device(backend.to_numpy(x), "cpu")
    out, backprop = model(x_cpu, train=True)
    backprop(out)
    opt.step(model.parameters())
    model.zero_grad()
    assert all(backend.device_of(v) == "cpu" for s in opt.state.values() for v in s.values() if not isinstance(v, int))
    model.to(device, dtype="float64")
    x = backend.to_device(backend.to_numpy(x), device, dtype="float64")
    step()
    assert model.dtype == "float64"
    assert all(v.dtype == backend.dtype_of(device.xp, "float64") for s in opt.state.values() for v in s.values()
               if not isinstance(v, int))
