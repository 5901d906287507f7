"""The ``xpnn`` command, run for real in subprocesses (``python -m xpnn``) on small data.

One short training run on the shipped Fashion-MNIST sample and one on a generated image folder
are shared by the tests (module-scoped fixtures); the rest are quick error cases.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xpnn
from xpnn import metrics
from xpnn.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "XPNN_DEVICE": "cpu", "OMP_NUM_THREADS": "2"}
SMALL = ["--limit", "600", "--quiet"]


def xpnn_cmd(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "xpnn", *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"xpnn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and exactly one `xpnn: error:` line naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xpnn: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("model/")}


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """The default network (2-conv CNN) trained 2 epochs on 600 sample images."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = xpnn_cmd("train", "--epochs", "2", *SMALL, "--out", out)
    return out, proc


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 20x20 RGB PNGs: reddish 'cat' and bluish 'dog', with noise."""
    root = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for name, channel in (("cat", 0), ("dog", 2)):
        (root / name).mkdir()
        for i in range(24):
            a = rng.integers(0, 120, (20, 20, 3), dtype=np.uint8)
            a[..., channel] += 120
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def catdog_run(tmp_path_factory, image_folder):
    out = tmp_path_factory.mktemp("cli") / "catdog"
    xpnn_cmd("train", "--data", image_folder, "--model", "catdog", "--image-size", "24", "--epochs", "2",
             "--batch-size", "8", "--quiet", "--out", out)
    return out


# --------------------------------------------------------------------------- train


def test_train_writes_the_run_folder(fashion_run):
    out, proc = fashion_run
    for name in ("model.npz", "checkpoint.npz", "history.csv", "history.json", "loss.png", "accuracy.png",
                 "confusion_matrix.png", "confusion_matrix.txt", "run.json"):
        assert (out / name).is_file(), name
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.5  # chance is 0.1
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == f"xpnn train --epochs 2 --limit 600 --quiet --out {out}"
    assert run["status"] == "completed" and run["epochs_completed"] == 2 and run["device"] == "cpu"
    assert set(run["versions"]) >= {"xpnn", "numpy", "array-api-compat", "python"}
    assert run["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert run["settings"]["model"] == "cnn" and run["data"]["train"] == 540 and run["data"]["validation"] == 60
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert all(0 < v < 5 for v in history["val_loss"])  # validation inputs are scaled like training inputs
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    assert len(re.findall(r"^epoch \d/2: loss", proc.stdout, re.M)) == 2  # --quiet: one line per epoch
    assert "Shirt" in (out / "confusion_matrix.txt").read_text()


def test_model_file_keeps_what_predict_needs(fashion_run):
    out, _ = fashion_run
    model = xpnn.load(out / "model.npz")
    assert model.metadata["classes"] == list(FASHION_MNIST_CLASSES)
    assert model.metadata["input"] == {"size": [28, 28], "color": "gray", "channels": 1, "scale": "unit"}
    assert [layer["type"] for layer in model.config()["layers"]] == [
        "Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Linear", "ReLU", "Linear"]


def test_evaluate_reproduces_the_test_accuracy(fashion_run):
    out, _ = fashion_run
    result = json.loads(xpnn_cmd("evaluate", out / "model.npz", "--limit", "600", "--json").stdout)
    run = json.loads((out / "run.json").read_text())
    assert result["images"] == 600 and result["accuracy"] == pytest.approx(run["test"]["accuracy"])
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 600 and len(result["precision"]) == 10
    text = xpnn_cmd("evaluate", out / "model.npz", "--limit", "600").stdout
    assert "precision" in text and f"accuracy: {run['test']['accuracy']:.4f}" in text


def test_predict_png_files(fashion_run, tmp_path):
    out, _ = fashion_run
    (_, _), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    files = []
    for i in range(4):
        files.append(tmp_path / f"sample{i}.png")
        Image.fromarray(x_test[i, 0]).save(files[-1])
    results = json.loads(xpnn_cmd("predict", out / "model.npz", *files, "--top-k", "3", "--json").stdout)
    model = xpnn.load(out / "model.npz")
    expected = metrics.probabilities(model.predict(x_test[:4], scale="unit"))
    assert [r["image"] for r in results] == [str(f) for f in files]
    for result, probs in zip(results, expected):
        top = result["predictions"]
        assert len(top) == 3 and top[0]["index"] == int(np.argmax(probs))
        assert top[0]["class"] == FASHION_MNIST_CLASSES[top[0]["index"]]
        assert top[0]["probability"] == pytest.approx(probs[top[0]["index"]], abs=1e-5)
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    lines = xpnn_cmd("predict", out / "model.npz", files[0]).stdout.splitlines()
    assert len(lines) == 1 and results[0]["predictions"][0]["class"] in lines[0]


def test_info_and_devices(fashion_run):
    out, _ = fashion_run
    info = xpnn_cmd("info", out / "checkpoint.npz").stdout
    assert "Conv2D" in info and "Total parameters: 421,642" in info and "Adam" in info
    assert "classes (10): T-shirt/top" in info and "2 of 2 epoch(s)" in info
    assert "test accuracy" in xpnn_cmd("info", out / "model.npz").stdout
    devices = xpnn_cmd("devices").stdout
    assert "numpy" in devices and "--device auto picks:" in devices
    assert json.loads(xpnn_cmd("devices", "--json").stdout)["devices"][0] == "cpu"


def test_image_folder_rgb_model(catdog_run, image_folder):
    model = xpnn.load(catdog_run / "model.npz")
    assert model.metadata["classes"] == ["cat", "dog"] and model.input_shape == (3, 24, 24)
    assert json.loads((catdog_run / "run.json").read_text())["data"]["test"] == 10  # 20% of 48, stratified
    results = json.loads(xpnn_cmd("predict", catdog_run / "model.npz", image_folder / "dog" / "0.png",
                                  "--top-k", "5", "--json").stdout)
    assert {p["class"] for p in results[0]["predictions"]} == {"cat", "dog"}  # top-k capped at 2 classes


def test_tutorial_mlp_is_binary_for_two_classes(image_folder, tmp_path):
    out = tmp_path / "mlp"
    xpnn_cmd("train", "--data", image_folder, "--model", "tutorial-mlp", "--image-size", "8", "--epochs", "1",
             "--quiet", "--out", out)
    model = xpnn.load(out / "model.npz")
    assert model.config()["layers"][-1]["config"]["out_features"] == 1 and model.loss.task == "binary"
    result = json.loads(xpnn_cmd("predict", out / "model.npz", image_folder / "cat" / "1.png", "--top-k", "2",
                                 "--json").stdout)
    assert sum(p["probability"] for p in result[0]["predictions"]) == pytest.approx(1.0)


def test_fine_tuning_from_a_trained_model(fashion_run, image_folder, tmp_path):
    """The Fashion CNN (10 classes) starts a 2-class gray model: everything but the head loads and stays
    frozen; run.json records the source; the info tree shows the frozen layers."""
    source = fashion_run[0] / "model.npz"
    out = tmp_path / "tuned"
    proc = xpnn_cmd("train", "--data", image_folder, "--color", "gray", "--image-size", "28", "--epochs", "1",
                    "--batch-size", "8", "--quiet", "--init-from", source, "--freeze", "--out", out)
    assert f"init from {source}: loaded 6 arrays (3 layers: 0, 3, 7); frozen" in proc.stdout
    assert "left as initialised: 9.weight (saved (128, 10), model (128, 2)), 9.bias (saved (10,), model (2,))" \
        in proc.stdout
    assert "training cnn (420,610 parameters, 420,352 frozen)" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["init_from"]["file"] == str(source.resolve()) and run["init_from"]["frozen"] == ["0", "3", "7"]
    assert run["settings"]["init_from"] == str(source) and run["settings"]["freeze"] is True
    before, after = weights(source), weights(out / "model.npz")
    for key in ("model/0.weight", "model/3.bias", "model/7.weight"):
        np.testing.assert_array_equal(after[key], before[key])
    assert after["model/9.weight"].shape == (128, 2)
    info = xpnn_cmd("info", out / "model.npz").stdout
    assert "Conv2D(in_channels=1, out_channels=32" in info and "(frozen)" in info and "frozen: 420,352" in info


def test_resnet_trains_and_info_shows_its_tree(image_folder, tmp_path):
    out = tmp_path / "resnet"
    xpnn_cmd("train", "--data", image_folder, "--model", "resnet", "--image-size", "16", "--epochs", "1",
             "--batch-size", "16", "--quiet", "--out", out)
    info = xpnn_cmd("info", out / "model.npz").stdout
    assert "Residual(projection shortcut, then ReLU())" in info and "\n5.shortcut.0 " in info
    assert "(N, 256, 2, 2)" in info and "Trainable parameters: 1,226,914  frozen: 0" in info


def test_error_fine_tuning_from_a_file_that_matches_nothing(fashion_run, tmp_path):
    proc = xpnn_cmd("train", "--model", "mlp", "--limit", "50", "--quiet", "--init-from",
                    fashion_run[0] / "model.npz", "--out", tmp_path / "mlp", check=False)
    assert_user_error(proc, f"--init-from {fashion_run[0] / 'model.npz'}: weights do not match the architecture: "
                            f"nothing in the state matches the model")
    assert not (tmp_path / "mlp").exists()
    assert_user_error(xpnn_cmd("train", "--freeze", "--out", tmp_path / "f", check=False),
                      "--freeze needs --init-from MODEL.npz")


# --------------------------------------------------------------------------- checkpoints


def test_resume_matches_an_uninterrupted_run(tmp_path):
    # mlp has dropout and --augment draws random flips/crops: both need the RNG state restored
    common = ["--model", "mlp", "--augment", "--limit", "300", "--quiet"]
    xpnn_cmd("train", *common, "--epochs", "2", "--out", tmp_path / "straight")
    xpnn_cmd("train", *common, "--epochs", "1", "--out", tmp_path / "resumed")
    proc = xpnn_cmd("train", "--resume", tmp_path / "resumed", "--epochs", "2", "--quiet")
    assert "resuming after epoch 1" in proc.stdout
    a, b = weights(tmp_path / "straight" / "checkpoint.npz"), weights(tmp_path / "resumed" / "checkpoint.npz")
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    h1 = json.loads((tmp_path / "straight" / "history.json").read_text())
    h2 = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert h1["loss"] == h2["loss"] and h2["epoch"] == [1, 2]
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert len(run["commands"]) == 2 and run["commands"][1].startswith("xpnn train --resume")
    again = xpnn_cmd("train", "--resume", tmp_path / "resumed", check=False)
    assert_user_error(again, "already trained 2 epoch(s)", "--epochs")


RECIPE = ["--model", "mlp", "--limit", "200", "--quiet", "--lr", "1.0", "--schedule", "constant", "--warmup-epochs", "0.5",
          "--clip-norm", "0.5", "--plateau", "1", "--label-smoothing", "0.1", "--class-weight", "balanced",
          "--weight-decay", "0.001"]


def test_training_options_are_recorded_shown_and_resumed_exactly(tmp_path):
    xpnn_cmd("train", *RECIPE, "--epochs", "4", "--out", tmp_path / "straight")
    xpnn_cmd("train", *RECIPE, "--epochs", "3", "--out", tmp_path / "resumed")
    xpnn_cmd("train", "--resume", tmp_path / "resumed", "--epochs", "4", "--quiet")
    a, b = weights(tmp_path / "straight" / "checkpoint.npz"), weights(tmp_path / "resumed" / "checkpoint.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert history == json.loads((tmp_path / "resumed" / "history.json").read_text()) | {
        "seconds": history["seconds"], "samples_per_second": history["samples_per_second"]}
    assert history["lr"][0] == pytest.approx(1.0 / 2.5) and history["lr"][0] < history["lr_last"][0]  # the warmup
    assert history["lr"][2:] == pytest.approx([1.0, 0.1])  # the plateau lowered the rate after epoch 3
    settings = json.loads((tmp_path / "resumed" / "run.json").read_text())["settings"]
    assert {k: settings[k] for k in ("schedule", "warmup_epochs", "clip_norm", "plateau", "label_smoothing",
                                     "class_weight", "weight_decay")} == {
        "schedule": "constant", "warmup_epochs": 0.5, "clip_norm": 0.5, "plateau": 1, "label_smoothing": 0.1,
        "class_weight": "balanced", "weight_decay": 0.001}
    info = xpnn_cmd("info", tmp_path / "resumed" / "checkpoint.npz").stdout
    assert ("warmup 0.5 epoch(s), weight decay 0.001, clip norm 0.5, label smoothing 0.1, balanced "
            "class weights, lr x0.1 after 1 epoch(s) without improvement") in info
    assert "global_clipnorm=0.5" in info and "CrossEntropy(label_smoothing=0.1)" in info
    meta = json.loads(xpnn_cmd("info", tmp_path / "resumed" / "checkpoint.npz", "--json").stdout)["metadata"]
    assert meta["callbacks"]["plateau"]["wait"] == 0 and meta["epoch"] == 4
    changed = xpnn_cmd("train", "--resume", tmp_path / "resumed", "--epochs", "5", "--clip-norm", "2", check=False)
    assert_user_error(changed, "--clip-norm 2.0 differs from the run being resumed (0.5)")


def test_mixed_float16_runs_record_their_precision_and_resume_exactly_with_the_loss_scale(tmp_path):
    common = ["--model", "mlp", "--limit", "200", "--quiet", "--precision", "mixed_float16"]
    xpnn_cmd("train", *common, "--epochs", "2", "--out", tmp_path / "straight")
    proc = xpnn_cmd("train", *common, "--epochs", "1", "--out", tmp_path / "resumed")
    assert "mixed_float16 precision" in proc.stdout
    xpnn_cmd("train", "--resume", tmp_path / "resumed", "--epochs", "2", "--quiet")
    a, b = weights(tmp_path / "straight" / "checkpoint.npz"), weights(tmp_path / "resumed" / "checkpoint.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert all(value.dtype == np.float32 for value in a.values())
    model, optimizer, meta = xpnn.load_checkpoint(tmp_path / "resumed" / "checkpoint.npz")
    _, straight, _ = xpnn.load_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    assert isinstance(optimizer, xpnn.optim.LossScaleOptimizer) and meta["settings"]["precision"] == "mixed_float16"
    assert (optimizer.scale, optimizer.good_steps) == (straight.scale, straight.good_steps)
    changed = xpnn_cmd("train", "--resume", tmp_path / "resumed", "--epochs", "3", "--precision", "float32",
                       check=False)
    assert_user_error(changed, "--precision float32 differs from the run being resumed (mixed_float16)")


def test_a_checkpoint_from_before_the_training_options_resumes_with_their_defaults(tmp_path):
    run = tmp_path / "old"
    xpnn_cmd("train", "--model", "mlp", "--limit", "100", "--quiet", "--epochs", "1", "--out", run)
    model, optimizer, meta = xpnn.load_checkpoint(run / "checkpoint.npz")
    for key in ("schedule", "warmup_epochs", "weight_decay", "clip_norm", "label_smoothing", "class_weight", "plateau"):
        del meta["settings"][key]
    xpnn.save(model, run / "checkpoint.npz", optimizer=optimizer, metadata=meta)
    xpnn_cmd("train", "--resume", run, "--epochs", "2", "--quiet")
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["schedule"] == "constant" and settings["clip_norm"] is None and settings["label_smoothing"] == 0


def test_bad_training_options_write_nothing(tmp_path):
    proc = xpnn_cmd("train", "--limit", "100", "--schedule", "cosine", "--epochs", "2", "--warmup-epochs", "2",
                    "--out", tmp_path / "run", check=False)
    assert_user_error(proc, "--warmup-epochs 2 must be less than --epochs 2")
    assert not (tmp_path / "run").exists()
    for option, value, message in (("--label-smoothing", "1.5", "expected a number in [0, 1], got '1.5'"),
                                   ("--clip-norm", "0", "expected a number in (0, inf), got '0'"),
                                   ("--weight-decay", "nan", "expected a number in [0, inf), got 'nan'"),
                                   ("--class-weight", "even", "invalid choice: 'even'")):
        proc = xpnn_cmd("train", option, value, "--out", tmp_path / "run", check=False)
        assert proc.returncode == 2 and f"argument {option}: {message}" in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()


def _default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt even if this test run ignores SIGINT (as a
    background job of a non-interactive shell does, and its children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_and_can_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "xpnn", "train", "--model", "tutorial-cnn", "--limit", "200",
                             "--epochs", "10000", "--quiet", "--out", str(out)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60
    history = out / "history.csv"
    while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # 2 epochs done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and f"xpnn train --resume {out}" in err and "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    done = xpnn.load(out / "checkpoint.npz").metadata["epoch"]
    assert done >= 2 and xpnn.load(out / "model.npz").metadata["interrupted"]
    xpnn_cmd("train", "--resume", out, "--epochs", str(done + 1), "--quiet")
    assert xpnn.load(out / "model.npz").metadata["epoch"] == done + 1


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = xpnn_cmd("train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e8", "--limit", "300", "--quiet",
                    "--out", out, check=False)
    assert proc.returncode == 1
    assert "xpnn: error: the loss became nan" in proc.stderr and "checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and "warning" not in proc.stderr
    assert xpnn.load(out / "checkpoint.npz").metadata["epoch"] == 0
    assert all(np.isfinite(v).all() for v in weights(out / "checkpoint.npz").values())
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"


# --------------------------------------------------------------------------- errors a user can fix


def test_error_missing_paths(tmp_path):
    assert_user_error(xpnn_cmd("train", "--data", tmp_path / "nope", check=False), "no such file or folder")
    assert_user_error(xpnn_cmd("evaluate", tmp_path / "nope.npz", check=False), "does not exist")
    assert_user_error(xpnn_cmd("info", tmp_path / "nope.npz", check=False), "does not exist")
    assert_user_error(xpnn_cmd("train", "--resume", tmp_path, check=False), "no checkpoint.npz")


def test_error_one_class_folder(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    assert_user_error(xpnn_cmd("train", "--data", tmp_path, check=False), "one class folder", "at least two")


def test_error_unreadable_image(fashion_run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert_user_error(xpnn_cmd("predict", fashion_run[0] / "model.npz", bad, check=False), str(bad),
                      "cannot read as an image")
    assert_user_error(xpnn_cmd("predict", fashion_run[0] / "model.npz", tmp_path / "none.png", check=False),
                      "does not exist")
    debug = xpnn_cmd("predict", fashion_run[0] / "model.npz", bad, "--debug", check=False)
    assert "Traceback" in debug.stderr and "DataError" in debug.stderr


def _rewrite_header(src: Path, dst: Path, change) -> None:
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["__xpnn__"]))
    change(header)
    arrays["__xpnn__"] = np.array(json.dumps(header))
    np.savez(dst, **arrays)


def test_error_model_files_that_do_not_fit(fashion_run, catdog_run, tmp_path):
    model = fashion_run[0] / "model.npz"
    newer = tmp_path / "newer.npz"
    _rewrite_header(model, newer, lambda h: h.update(format_version=99))
    assert_user_error(xpnn_cmd("info", newer, check=False), "newer xpnn", "upgrade")

    def unknown_layer(header):
        header["architecture"]["config"]["layers"][0]["type"] = "Conv3D"
    alien = tmp_path / "alien.npz"
    _rewrite_header(model, alien, unknown_layer)
    assert_user_error(xpnn_cmd("evaluate", alien, check=False), "cannot rebuild the architecture", "Conv3D")

    other = xpnn_cmd("evaluate", catdog_run / "model.npz", "--data", "fashion-mnist-sample", check=False)
    assert_user_error(other, "(3, 24, 24)", "(1, 28, 28)")
    resumed = xpnn_cmd("train", "--resume", fashion_run[0], "--model", "mlp", "--epochs", "3", check=False)
    assert_user_error(resumed, "--model mlp differs from the run being resumed (cnn)")


def test_the_optimizer_registry_is_what_the_command_line_offers(monkeypatch, capsys):
    """--optimizer and the check of a resumed run's settings read optim.OPTIMIZERS: an optimizer
    registered there is offered, one taken out is refused, and the loss-scale wrapper is no choice."""
    from xpnn.cli.command import build_parser
    from xpnn.cli.settings import SETTING_CHECKS
    from xpnn.optim import OPTIMIZERS, SGD

    def chosen(name: str) -> str | None:
        try:
            return build_parser().parse_args(["train", "--optimizer", name]).optimizer
        except SystemExit:
            return None

    what, accepts = SETTING_CHECKS["optimizer"]
    assert [chosen(name) for name in OPTIMIZERS] == list(OPTIMIZERS)
    assert what == "one of sgd, momentum, adam, adamw, rmsprop"
    monkeypatch.setitem(OPTIMIZERS, "plain", SGD)
    monkeypatch.delitem(OPTIMIZERS, "rmsprop")
    assert chosen("plain") == "plain" and accepts("plain")
    assert chosen("rmsprop") is None and not accepts("rmsprop")
    assert chosen("lossscaleoptimizer") is None and not accepts("lossscaleoptimizer")
    assert "invalid choice: 'lossscaleoptimizer'" in capsys.readouterr().err


def test_error_gpu_that_is_not_there():
    if len(xpnn.devices()) > 1:
        pytest.skip("this machine has a GPU")
    assert_user_error(xpnn_cmd("train", "--device", "gpu:0", check=False), "gpu:0", "--device cpu")


def test_devices_shows_a_gpu_that_fails_the_availability_check(monkeypatch, capsys, failing_cupy):
    """A GPU whose CUDA libraries are missing is listed as unusable, with the library, and auto picks the CPU."""
    import importlib.util
    import types

    from xpnn import backend, cli

    failing = failing_cupy("libnvrtc.so.12")
    monkeypatch.setitem(sys.modules, "cupy", failing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cupy" else None)
    monkeypatch.setattr(backend, "_import_cupy", lambda spec: failing)
    monkeypatch.setattr(backend, "_working_gpus", set())
    monkeypatch.setattr(cli.devices, "library_versions", lambda: {"xpnn": "test"})
    assert cli.cmd_devices(types.SimpleNamespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "gpu:0   Test GPU, 80.0 GiB (70.0 GiB free): UNUSABLE: device 'gpu:0': CuPy found gpu:0 but cannot " \
           "compute on it: NVRTC (libnvrtc)" in out
    assert "--device auto picks: cpu (device 'gpu:0': CuPy found gpu:0 but cannot compute on it: NVRTC" in out


@pytest.mark.parametrize("nccl_loads, expected", [
    (True, "multi-GPU all-reduce: NCCL"),
    (False, "multi-GPU all-reduce: MPI through host memory (NCCL unusable: ImportError: CuPy was installed without "
            "NCCL (pip install nvidia-nccl-cu12); for NCCL: pip install \"xpnn[gpu-dist]\")"),
])
def test_devices_says_which_all_reduce_a_multi_gpu_run_would_use(monkeypatch, capsys, fake_cupy, nccl_loads, expected):
    import importlib.util
    import types

    from xpnn import cli
    from xpnn.distributed import transports

    def load():
        if not nccl_loads:
            raise ImportError("CuPy was installed without NCCL (pip install nvidia-nccl-cu12)")
        return types.SimpleNamespace()

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(gpus=2))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cupy" else None)
    monkeypatch.setattr(transports, "_load_nccl", load)
    monkeypatch.setattr(cli.devices, "library_versions", lambda: {"xpnn": "test"})
    try:
        assert cli.cmd_devices(types.SimpleNamespace(json=False)) == 0
        assert cli.cmd_devices(types.SimpleNamespace(json=True)) == 0
    finally:
        xpnn.set_device("cpu")
    out = capsys.readouterr().out
    assert "gpu:1   Test GPU, 80.0 GiB (70.0 GiB free): kernel, matmul and random draw ran" in out
    assert expected in out
    assert json.loads(out[out.index("{"):])["allreduce"] == ("nccl" if nccl_loads else "mpi")


def test_devices_without_a_gpu_says_data_parallel_runs_use_mpi(monkeypatch, capsys):
    import types

    from xpnn import cli

    monkeypatch.setattr(cli.devices, "_gpus", lambda: [])
    monkeypatch.setattr(cli.devices, "library_versions", lambda: {"xpnn": "test"})
    assert cli.cmd_devices(types.SimpleNamespace(json=False)) == 0
    assert "multi-GPU all-reduce: none (no usable GPU; data-parallel runs on CPUs all-reduce through MPI)" in \
        capsys.readouterr().out
