"""Failing runs and hostile inputs: what a run writes must be trustworthy, whatever goes wrong.

Divergence that the per-batch loss check cannot see, strict JSON, inputs that only look
numeric, problems found before training rather than after it, outputs never overwritten or
half-written, and Ctrl-C at any point. The CLI runs in this process (``cli.main``) on a few
hundred sample images, so each case takes about a second.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import xpnn
from xpnn import cli
from xpnn.errors import TrainingDivergedError


def strict_json(path: Path) -> object:
    """Parse ``path`` refusing the bare NaN/Infinity tokens that are not JSON."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds the non-JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def all_finite(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as f:
        return all(np.isfinite(f[k]).all() for k in f.files if k.startswith(("model/", "optim/")))


# --------------------------------------------------------------------------- 1. divergence


@pytest.mark.parametrize("lr, epochs", [(1.9, 1), (1.9, 5), (2.3, 5)])
def test_diverging_run_exits_1_and_keeps_only_finite_files(capsys, tmp_path, lr, epochs):
    """The issue's cases: NaN (1.9) and exploded (2.3) weights after an epoch's last update."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "1000", "--optimizer", "sgd", "--lr", lr,
                           "--seed", 3, "--epochs", epochs, "--out", out, "--quiet", "--device", "cpu")
    assert code == 1, err
    assert "xpnn: error: the weights became NaN/inf or exploded" in err
    run = strict_json(out / "run.json")
    assert run["status"] == "diverged"
    strict_json(out / "history.json")
    assert not (out / "model.npz").exists()
    assert all_finite(out / "checkpoint.npz")


def test_update_after_the_last_batch_is_checked_before_callbacks_see_it(tmp_path):
    """Full batch: the loss is finite, the one update makes the weights explode; no checkpoint."""
    xpnn.seed(0)
    model = xpnn.mlp([4, 3])
    x = np.ones((8, 4), dtype=np.float32)
    y = np.zeros(8, dtype=np.int64)
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "ckpt.npz")
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        model.fit(x, y, optimizer=xpnn.optim.SGD(lr=1e30), batch_size=None, verbose=0, callbacks=[checkpoint])
    assert not (tmp_path / "ckpt.npz").exists()


def test_running_statistics_that_overflowed_stop_training_before_a_checkpoint(tmp_path):
    """A batch variance beyond float32's range: BatchNorm's outputs (and the loss) stay finite,
    its running variance becomes inf; the run stops before a checkpoint could hold it."""
    xpnn.seed(0)
    model = xpnn.Sequential([xpnn.layers.BatchNorm1D(2), xpnn.layers.Linear(2, 1)])
    x = np.zeros((8, 2), dtype=np.float32)
    x[::2, 0], x[1::2, 0] = 3e19, -3e19
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "ckpt.npz")
    with pytest.raises(TrainingDivergedError, match=r"running statistics 0\.running_var became NaN/inf in epoch 1"):
        model.fit(x, np.ones((8, 1), np.float32), loss="mse", batch_size=None, verbose=0, callbacks=[checkpoint])
    assert not (tmp_path / "ckpt.npz").exists()


def test_non_finite_validation_loss_stops_training(tmp_path):
    xpnn.seed(0)
    model = xpnn.mlp([2, 1])
    x = np.ones((8, 2), dtype=np.float32)
    y = np.ones((8, 1), dtype=np.float32)
    x_val = np.full((4, 2), 1e30, dtype=np.float32)
    with pytest.raises(TrainingDivergedError, match="validation loss became inf"):
        model.fit(x, y, loss="mse", validation_data=(x_val, y[:4]), verbose=0)


def test_save_refuses_non_finite_weights(tmp_path):
    model = xpnn.mlp([3, 2])
    model.parameters()[0].value[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        xpnn.save(model, tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_json_written_by_xpnn_is_strict(tmp_path):
    history = xpnn.History()
    history.append(1, {"loss": math.nan, "val_loss": math.inf})
    history.append(2, {"loss": 0.5})
    history.to_json(str(tmp_path / "h.json"))
    assert strict_json(tmp_path / "h.json") == {"epoch": [1, 2], "loss": [None, 0.5], "val_loss": [None, None]}
    back = xpnn.History.from_dict(strict_json(tmp_path / "h.json"))
    assert math.isnan(back["loss"][0]) and back["loss"][1] == 0.5
    model = xpnn.mlp([3, 2])
    xpnn.save(model, tmp_path / "m.npz", metadata={"logs": {"val_loss": math.nan}})
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        header = str(f["__xpnn__"])
    json.loads(header, parse_constant=lambda t: pytest.fail(f"bare {t} in the model header"))
    assert xpnn.load(tmp_path / "m.npz").metadata == {"logs": {"val_loss": None}}


# --------------------------------------------------------------------------- 4. device strings


@pytest.mark.parametrize("spec", ["this:x", "os:x", "os", "antigravity", "subprocess:cpu", "xpnn.cli:x"])
def test_device_string_never_imports_an_arbitrary_module(spec, capsys, monkeypatch):
    import sys
    module = spec.split(":")[0]
    already = module in sys.modules
    with pytest.raises(xpnn.DeviceError, match="not a known array library"):
        xpnn.set_device(spec)
    monkeypatch.setenv("XPNN_DEVICE", spec)
    code, out, err = run_cli(capsys, "evaluate", "missing.npz")
    assert code == 2 and out == "" and err.startswith("xpnn: error: unknown device") and err.count("\n") == 1, err
    code, out, err = run_cli(capsys, "evaluate", "missing.npz", "--device", spec)
    assert code == 2 and out == "", err
    assert (module in sys.modules) == already


def test_registered_array_library_is_allowed(monkeypatch):
    from xpnn import backend
    monkeypatch.setattr(backend, "ARRAY_LIBRARIES", set(backend.ARRAY_LIBRARIES))
    with pytest.raises(xpnn.DeviceError):
        backend.use_device("array_api_compat.numpy:cpu").__enter__()
    backend.register_array_library("array_api_compat.numpy")
    with backend.use_device("array_api_compat.numpy:cpu") as device:
        assert device.name == "cpu"
    with pytest.raises(ValueError, match="module name"):
        backend.register_array_library("os; rm -rf")


# --------------------------------------------------------------------------- 6. inputs


def _xy(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 4)).astype(np.float32), np.arange(n) % 3


BAD_INPUTS = [
    ("complex-x", lambda x, y: (x + 1j, y), "x is complex"),
    ("float64-beyond-float32", lambda x, y: (np.where(np.arange(4) == 2, 1e39, x.astype(np.float64)), y),
     "too large for float32"),
    ("one-hot-negative", lambda x, y: (x, np.eye(3)[y] * -50), "must hold probabilities in [0, 1]"),
    ("one-hot-above-one", lambda x, y: (x, np.eye(3)[y] * 2), "must hold probabilities in [0, 1]"),
    ("complex-y", lambda x, y: (x, y + 0j), "y is complex"),
]


@pytest.mark.parametrize("name, damage, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_are_refused_before_any_step(name, damage, message):
    xpnn.seed(0)
    model = xpnn.mlp([4, 3])
    before = model.state_dict()
    x, y = damage(*_xy())
    with pytest.raises(ValueError, match=re.escape(message)):
        model.fit(x, y, verbose=0)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    if name in ("complex-x", "float64-beyond-float32"):
        with pytest.raises(ValueError, match=re.escape(message)):
            model.predict(x)


def test_float64_model_accepts_what_float32_cannot_hold():
    model = xpnn.mlp([4, 3]).to(dtype="float64")
    x, _ = _xy()
    x = x.astype(np.float64) * 1e39
    assert np.isfinite(model.predict(x)).all()


# --------------------------------------------------------------------------- 7. found before training


def test_idx_train_and_test_of_different_sizes_fail_before_training(tmp_path, capsys):
    from xpnn.data.idx import save_idx
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 255, (20, 27, 27), dtype=np.uint8))
    save_idx(folder / "train-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8))
    save_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28), dtype=np.uint8))
    save_idx(folder / "t10k-labels-idx1-ubyte", (np.arange(10) % 10).astype(np.uint8))
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--data", folder, "--model", "mlp", "--out", out, "--quiet",
                                "--device", "cpu")
    assert code == 2 and "27x27 images" in err and "28x28 images" in err and err.count("\n") == 1, err
    assert "epoch" not in stdout and not out.exists()


def _image_classes(root: Path, names: list[bytes], per_class: int = 6) -> Path:
    import os
    from PIL import Image
    for index, name in enumerate(names):
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(per_class):
            Image.new("L", (8, 8), 40 * index + i).save(os.path.join(folder, f"{i}.png".encode()))
    return root


def test_class_folder_name_not_utf8_fails_before_training(tmp_path, capsys):
    root = _image_classes(tmp_path / "data", [b"caf\xe9", b"dog"])
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--data", root, "--model", "mlp", "--image-size", "8", "--out", out,
                                "--quiet", "--device", "cpu")
    assert code == 2 and "not valid UTF-8" in err and "caf\\xe9" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_failing_plot_never_loses_a_finished_run(tmp_path, capsys, monkeypatch):
    from xpnn import metrics

    def broken(*args, **kwargs):
        raise RuntimeError("no display font")

    monkeypatch.setattr(metrics, "plot_confusion_matrix", broken)
    monkeypatch.setattr(xpnn.History, "plot", broken)
    root = _image_classes(tmp_path / "data", [b"cat", b"dog"])
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="could not write confusion_matrix.png: RuntimeError: no display font"):
        code, _, err = run_cli(capsys, "train", "--data", root, "--model", "mlp", "--image-size", "8", "--out", out,
                               "--quiet", "--device", "cpu", "--epochs", "1")
    assert code == 0, err
    assert strict_json(out / "run.json")["status"] == "completed"
    assert (out / "model.npz").is_file() and (out / "confusion_matrix.txt").is_file()


# --------------------------------------------------------------------------- 8. never overwritten


@pytest.mark.parametrize("held", [["model.npz", "history.csv"], ["notes.txt"], ["run.json"]])
def test_foreign_out_folder_is_refused_and_left_alone(tmp_path, capsys, held):
    out = tmp_path / "theirs"
    out.mkdir()
    for name in held:
        (out / name).write_bytes(b"someone else's " + name.encode())
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "50", "--epochs", "1", "--out", out,
                           "--quiet", "--device", "cpu")
    assert code == 2 and "is not empty and holds no xpnn run" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == sorted(held)
    for name in held:
        assert (out / name).read_bytes() == b"someone else's " + name.encode()


def test_run_outputs_are_written_atomically(tmp_path, monkeypatch, capsys):
    """Every file a run writes goes through atomic_write (so a crash leaves the old file or none)."""
    from xpnn import files
    written = []
    real = files.atomic_write

    def spy(path, mode="wb"):
        written.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(files, "atomic_write", spy)
    for module in ("xpnn.io", "xpnn.train.history", "xpnn.cli.reporting", "xpnn.metrics"):
        import importlib
        mod = importlib.import_module(module)
        if hasattr(mod, "atomic_write"):
            monkeypatch.setattr(mod, "atomic_write", spy)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".hidden").write_text("")  # an empty folder (hidden files aside) is fine for --out
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "50", "--epochs", "1", "--out", out,
                           "--quiet", "--device", "cpu")
    assert code == 0, err
    assert strict_json(out / "run.json")["status"] == "completed"
    on_disk = {p.name for p in out.iterdir()} - {".hidden"}
    assert on_disk <= set(written), on_disk - set(written)


def test_ctrl_c_in_the_test_pass_keeps_the_trained_weights_and_resume_tests_them(tmp_path, capsys, monkeypatch):
    """The training is finished when the test pass starts: Ctrl-C there writes model.npz (marked
    interrupted), run.json says so, and --resume runs only the test pass."""
    from xpnn.cli import train as train_command

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(train_command, "model_scores", interrupt)
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "50", "--epochs", "1", "--out", out,
                           "--quiet", "--device", "cpu")
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted while testing" in err and f"xpnn train --resume {out}" in err, err
    saved = xpnn.load(out / "model.npz")
    assert saved.metadata["interrupted"] is True and saved.metadata["epoch"] == 1 and "test" not in saved.metadata
    for key, value in xpnn.load(out / "checkpoint.npz").state_dict().items():
        np.testing.assert_array_equal(saved.state_dict()[key], value)
    assert strict_json(out / "run.json")["status"] == "interrupted"
    monkeypatch.undo()
    code, stdout, err = run_cli(capsys, "train", "--resume", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert "test accuracy" in stdout
    tested = xpnn.load(out / "model.npz")
    assert tested.metadata["test"]["images"] == 50 and "interrupted" not in tested.metadata
    assert strict_json(out / "run.json")["status"] == "completed"
    code, _, err = run_cli(capsys, "train", "--resume", out, "--quiet", "--device", "cpu")
    assert code == 2 and "already trained 1 epoch(s)" in err, err


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
    from xpnn.cli import train as train_command

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(train_command, "training_data", exhausted)
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "50", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xpnn: error: out of memory"), err


# --------------------------------------------------------------------------- 9. Ctrl-C at start-up

_INTERRUPT_WHILE_IMPORTING = """
import os, runpy, signal, sys

TARGET = sys.argv[1]

class InterruptOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == TARGET:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, InterruptOnImport())
sys.argv = ["xpnn", "devices"]
runpy.run_module("xpnn", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["numpy", "array_api_compat", "xpnn.cli"])
def test_ctrl_c_while_importing_is_one_line_and_130(module):
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_WHILE_IMPORTING, module], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "xpnn: interrupted" and proc.stdout == ""
