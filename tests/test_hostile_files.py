"""A user's file is untrusted input: damaged and hostile model, IDX and image files.

Each case must end in one clear error naming the file (``ModelFileError``/``DataError`` from the
API, one ``xpnn: error:`` line and exit 2 from the CLI), with memory bounded by what the file
really holds, never by what it declares. Memory is measured with tracemalloc (NumPy reports
its allocations to it), so the bombs here are declared, never allocated.
"""
from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import xpnn
from xpnn import cli
from xpnn.data.idx import load_idx, save_idx
from xpnn.data.images import ImageFolder, load_image
from xpnn.errors import DataError, ModelFileError

MIB = 2**20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint written by `xpnn train` (MLP, Adam state, full metadata)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main(["train", "--model", "mlp", "--limit", "200", "--epochs", "1", "--quiet", "--val-split", "0",
                     "--out", str(out), "--device", "cpu"]) == 0
    return out / "checkpoint.npz"


def members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def rewrite(src: Path, dst: Path, header: Callable[[dict], Any] | None = None,
            arrays: Callable[[dict], None] | None = None) -> Path:
    """Copy model file ``src`` to ``dst``, changing its parsed header and/or its arrays."""
    data = members(src)
    head = json.loads(str(data.pop("__xpnn__")))
    if header is not None:
        head = header(head) or head
    if arrays is not None:
        arrays(data)
    text = head if isinstance(head, str) else json.dumps(head)
    np.savez(dst, __xpnn__=np.array(text), **data)
    return dst


def first_weight(data: dict) -> str:
    return next(k for k in data if k.startswith("model/") and k.endswith("weight"))


def drop_first_weight(data: dict) -> None:
    del data[first_weight(data)]


def optim_member(data: dict) -> str:
    return next(k for k in data if k.startswith("optim/") and data[k].ndim == 2)


def set_in(path: list, value: Any) -> Callable[[dict], None]:
    def change(head: dict) -> None:
        node = head
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def first_linear(head: dict) -> dict:
    return next(layer for layer in head["architecture"]["config"]["layers"] if layer["type"] == "Linear")


def huge_linear(n: int) -> Callable[[dict], None]:
    def change(head: dict) -> None:
        first_linear(head)["config"].update(in_features=n, out_features=n)
    return change


def nested(depth: int) -> Callable[[dict], None]:
    def change(head: dict) -> str:
        text = json.dumps(head)
        return text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    return change


# (id, header change, array change, fragment of the error)
DAMAGED_MODEL_FILES = [
    ("header-is-a-list", lambda h: [h], None, "must be a JSON object"),
    ("header-is-a-number", lambda h: "5", None, "must be a JSON object"),
    ("architecture-is-a-string", set_in(["architecture"], "mlp"), None, "architecture must be an object"),
    ("layers-is-a-number", set_in(["architecture", "config", "layers"], 5), None, "cannot rebuild the architecture"),
    ("layer-without-config", lambda h: first_linear(h).pop("config") and None, None,
     "cannot rebuild the architecture"),
    ("unknown-layer", lambda h: first_linear(h).update(type="Evil") or None, None, "unknown layer type 'Evil'"),
    ("format-version-is-a-string", set_in(["format_version"], "1"), None, "format_version must be"),
    ("input-shape-is-a-string", set_in(["input_shape"], "abc"), None, "input_shape must be null or a list"),
    ("metadata-is-a-list", set_in(["metadata"], [1]), None, "metadata must be an object"),
    ("loss-is-a-string", set_in(["loss"], "ce"), None, "loss must be null or an object"),
    ("unknown-loss", set_in(["loss", "type"], "EvilLoss"), None, "the saved loss cannot be rebuilt"),
    ("unknown-optimizer", set_in(["optimizer", "type"], "EvilOpt"), None, "the saved optimizer cannot be rebuilt"),
    ("optimizer-bad-config", set_in(["optimizer", "config"], {"no_such": 1}), None,
     "the saved optimizer cannot be rebuilt"),
    ("deeply-nested-header", nested(100_000), None, "model header"),
    ("nested-beyond-the-limit", nested(500), None, "nested more than"),
    ("missing-weight", None, drop_first_weight, "missing"),
    ("extra-weight", None, lambda d: d.update({"model/99.weight": np.zeros(3, np.float32)}), "unexpected"),
    ("weight-of-the-wrong-shape", None, lambda d: d.update({first_weight(d): d[first_weight(d)].T.copy()}),
     "weights do not match the architecture"),
    ("weight-too-large-for-the-budget", None,
     lambda d: d.update({first_weight(d): np.zeros((2, 2), np.float32)}), "larger than the weights stored"),
    ("optimizer-state-wrong-shape", None, lambda d: d.update({optim_member(d): np.zeros((3, 3), np.float32)}),
     "optimizer state"),
    ("missing-optimizer-array", None, lambda d: d.pop(optim_member(d)).shape and None, "is missing from the file"),
    ("array-reference-not-a-name", set_in(["metadata", "history"], {"__array__": 5}), None,
     "array reference must be a member name"),
    ("huge-linear-12000", huge_linear(12000), None, "larger than the weights stored"),
    ("huge-linear-100000", huge_linear(100000), None, "larger than the weights stored"),
    ("huge-input-size", set_in(["metadata", "input", "size"], [20000, 20000]), None, "metadata is damaged"),
    ("classes-not-a-list", set_in(["metadata", "classes"], 7), None, "classes must be a list"),
    ("test-accuracy-a-string", set_in(["metadata", "test"], {"accuracy": "high", "images": 3}), None,
     "test must give"),
    ("test-without-accuracy", set_in(["metadata", "test"], {"images": 3}), None, "test must give"),
    ("data-without-source", lambda h: h["metadata"]["data"].pop("source") and None, None, "data must give"),
    ("settings-without-data", lambda h: h["metadata"].pop("data") and None, None, "settings come without"),
    ("settings-of-the-wrong-type", set_in(["metadata", "settings", "epochs"], "many"), None, "wrong type"),
    ("frozen-is-null", set_in(["frozen"], None), None, "frozen must be a list of layer paths"),
    ("frozen-is-a-number", set_in(["frozen"], 5), None, "frozen must be a list of layer paths"),
    ("frozen-holds-a-list", set_in(["frozen"], [[1]]), None, "frozen must be a list of layer paths"),
    ("frozen-is-a-string", set_in(["frozen"], "7"), None, "frozen must be a list of layer paths"),
    ("frozen-names-no-layer", set_in(["frozen"], ["9"]), None, "frozen names layer '9'"),
    ("input-is-an-array", set_in(["metadata", "input"], {"__array__": "model/7.bias"}), None,
     "input must give size"),
    ("input-size-is-an-array", set_in(["metadata", "input", "size"], {"__array__": "model/7.bias"}), None,
     "input must give size"),
    ("fewer-class-names-than-outputs", set_in(["metadata", "classes"], ["a", "b", "c"]), None,
     "3 class names for a model with 10 outputs"),
    ("softmax-axis-beyond-the-rank", lambda h: h["architecture"]["config"]["layers"].append(
        {"type": "Softmax", "config": {"axis": 5}}) and None, None, "axis 5"),
]


@pytest.mark.parametrize("name, header, arrays, fragment", DAMAGED_MODEL_FILES,
                         ids=[case[0] for case in DAMAGED_MODEL_FILES])
def test_damaged_model_file_is_one_line_naming_it(checkpoint, tmp_path, capsys, name, header, arrays, fragment):
    path = rewrite(checkpoint, tmp_path / f"{name}.npz", header, arrays)
    tracemalloc.start()
    try:
        code = cli.main(["info", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("xpnn: error: "), err
    assert str(path) in lines[0] and fragment in lines[0], lines[0]
    assert peak < 20 * MIB, f"{peak / MIB:.0f} MiB to refuse a {path.stat().st_size:,}-byte file"


def corrupt_bytes(path: Path) -> None:
    """Zero 64 bytes inside the first weight array's data (its CRC no longer matches)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.startswith("model/"))
    raw = bytearray(path.read_bytes())
    inside = info.header_offset + info.compress_size // 2
    raw[inside:inside + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all" * 10)


def header_not_a_string(path: Path) -> None:
    data = members(path)
    data["__xpnn__"] = np.arange(4)
    np.savez(path, **data)


@pytest.mark.parametrize("damage", [corrupt_bytes, truncate, garbage, header_not_a_string])
def test_corrupt_bytes_are_one_line_naming_the_file(checkpoint, tmp_path, capsys, damage):
    path = tmp_path / "model.npz"
    path.write_bytes(checkpoint.read_bytes())
    damage(path)
    for command in (["info", str(path)], ["predict", str(path), str(tmp_path / "x.png")]):
        Image.new("L", (8, 8)).save(tmp_path / "x.png")
        code = cli.main(command)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err
    with pytest.raises(ModelFileError, match=str(path)):
        xpnn.load_checkpoint(path)


EXPORT_CASES = [case for case in DAMAGED_MODEL_FILES if case[0] in {
    "classes-not-a-list", "huge-input-size", "frozen-is-a-number", "frozen-is-a-string", "input-is-an-array",
    "fewer-class-names-than-outputs", "softmax-axis-beyond-the-rank"}] + [
    ("classes-a-string", set_in(["metadata", "classes"], "abc"), None, "classes must be a list"),
    ("input-a-number", set_in(["metadata", "input"], 5), None, "input must give size"),
]


@pytest.mark.parametrize("name, header, arrays, fragment", EXPORT_CASES, ids=[case[0] for case in EXPORT_CASES])
def test_export_checks_the_file_as_the_other_commands_do(checkpoint, tmp_path, capsys, name, header, arrays,
                                                        fragment):
    path = rewrite(checkpoint, tmp_path / f"{name}.npz", header, arrays)
    out = tmp_path / "model.onnx"
    code = cli.main(["export", str(path), str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xpnn: error: "), lines
    assert str(path) in lines[0] and fragment in lines[0], lines[0]
    assert not out.exists()


def test_export_never_writes_over_its_input_or_over_a_file_that_is_not_onnx(checkpoint, tmp_path, capsys):
    model = tmp_path / "model.npz"
    model.write_bytes(checkpoint.read_bytes())
    (tmp_path / "link.npz").symlink_to(model)
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    for target, fragment in ((model, "is the model file it exports"), (tmp_path / "link.npz", "is the model file"),
                             (notes, "is not an ONNX file")):
        code = cli.main(["export", str(model), str(target), "--force"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and fragment in lines[0] and str(target) in lines[0], lines
    assert model.read_bytes() == checkpoint.read_bytes() and notes.read_text() == "my notes"


def float64_beyond_float32(data: dict) -> None:
    key = first_weight(data)
    data[key] = data[key].astype(np.float64)
    data[key].flat[3] = 1e39


def test_float64_weights_beyond_float32s_range_are_refused(checkpoint, tmp_path, capsys):
    path = rewrite(checkpoint, tmp_path / "m.npz", arrays=float64_beyond_float32)
    message = r"1\.weight holds values too large for float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match=message):
            xpnn.load(path)
        model = xpnn.zoo.build("mlp", (1, 28, 28), 10)
        before = model.state_dict()
        with pytest.raises(ModelFileError, match=message):
            xpnn.io.load_weights(path, model)
        with pytest.raises(ValueError, match=message):
            model.load_state_dict({**before, "1.weight": np.full(before["1.weight"].shape, 1e39)})
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "mlp", "--limit", "50", "--epochs", "1", "--quiet", "--device", "cpu",
                     "--init-from", str(path), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(path) in lines[0] and "too large for float32" in lines[0], lines
    assert not out.exists()


def newer_format(head: dict) -> None:
    head["format_version"] = 99


def with_nan(data: dict) -> None:
    key = first_weight(data)
    data[key] = np.full_like(data[key], np.nan)


@pytest.mark.parametrize("header, arrays, damage, fragment", [
    (None, None, truncate, "is not a readable xpnn model file"),
    (None, with_nan, None, "holds NaN/inf values"),
    (newer_format, None, None, "newer xpnn"),
    (nested(10_000), None, None, "model header"),
], ids=["truncated", "nan", "newer-format", "10000-deep"])
def test_init_from_says_what_is_wrong_with_the_file_and_only_that(checkpoint, tmp_path, capsys, header, arrays,
                                                                  damage, fragment):
    path = rewrite(checkpoint, tmp_path / "source.npz", header, arrays)
    if damage is not None:
        damage(path)
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "mlp", "--limit", "50", "--epochs", "1", "--quiet", "--device", "cpu",
                     "--init-from", str(path), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xpnn: error: --init-from "), lines
    assert str(path) in lines[0] and fragment in lines[0] and "shares no layer" not in lines[0], lines[0]
    assert not out.exists()


def test_two_members_with_one_name_are_refused(checkpoint, tmp_path, capsys):
    """Zip readers disagree on which of two same-named members counts: such a file is not read."""
    path = tmp_path / "m.npz"
    path.write_bytes(checkpoint.read_bytes())
    key = first_weight(members(path))
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros_like(members(path)[key]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(f"{key}.npy", buffer.getvalue())
    with pytest.raises(ModelFileError, match=f"{path} is damaged: it holds two members named '{key}.npy'"):
        xpnn.load(path)
    code = cli.main(["info", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "two members named" in err, err


def add_member(path: Path, name: str, declared_shape: tuple[int, ...], payload: bytes) -> None:
    """Append a .npy member whose header declares ``declared_shape`` float32 but holds ``payload``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": declared_shape})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{name}.npy", buffer.getvalue() + payload)


def test_unused_member_is_never_read(checkpoint, tmp_path):
    """An unused member declaring 1 GiB (holding 16 bytes) costs nothing: it is not read."""
    path = tmp_path / "m.npz"
    path.write_bytes(checkpoint.read_bytes())
    add_member(path, "junk", (2**28,), bytes(16))
    tracemalloc.start()
    try:
        model = xpnn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.metadata["settings"]["model"] == "mlp"
    assert peak < 20 * MIB


def test_member_declaring_more_than_it_holds_is_refused_before_allocating(checkpoint, tmp_path):
    path = tmp_path / "m.npz"
    data = members(checkpoint)
    key = optim_member(data)
    del data[key]
    np.savez(path, **data)
    add_member(path, key, (2**28,), bytes(16))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"declares shape \(268435456,\) float32 = 1,073,741,824 bytes "
                                                 r"but holds 16 bytes"):
            xpnn.load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * MIB


def test_resume_from_damaged_checkpoint_or_run_record(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for key in ("rng_state", "epoch", "settings"):
        rewrite(checkpoint, run / "checkpoint.npz", lambda h: h["metadata"].pop(key) and None)
        code = cli.main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and f"{run / 'checkpoint.npz'}" in err and f"{key} is missing" in err, err
    for damage in (set_in(["metadata", "rng_state"], {"state": 5}),
                   set_in(["metadata", "history"], {"epoch": [1, 2], "loss": [0.5]}),
                   set_in(["metadata", "history"], {"epoch": [1], "loss": ["low"]})):
        rewrite(checkpoint, run / "checkpoint.npz", damage)
        code = cli.main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and "random-generator state, history or --plateau counters) is damaged" in err and err.count("\n") == 1, err
    rewrite(checkpoint, run / "checkpoint.npz")
    (run / "run.json").write_text('{"commands": [')
    code = cli.main(["train", "--resume", str(run), "--epochs", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"{run / 'run.json'} is not valid JSON" in err, err


def test_custom_initializer_model_saves_and_loads(tmp_path):
    def tiny(rng, shape, fan_in, fan_out):
        return rng.standard_normal(shape) * 0.001

    model = xpnn.Sequential([xpnn.layers.Linear(3, 2, init=tiny)])
    xpnn.save(model, tmp_path / "m.npz")
    loaded = xpnn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"])


# --------------------------------------------------------------------------- IDX files


def idx_header(dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()


def test_gzip_idx_is_decompressed_no_further_than_its_header_declares(tmp_path):
    """20 MiB of zeros behind a header declaring 10x28x28: refused after ~8 KB, not after 20 MiB."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((10, 28, 28)) + bytes(20 * MIB), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="longer than its header says"):
            load_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MIB


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dims, fragment", [
    ((2**32 - 1,) * 4, "more than this"),           # the product overflows int64
    ((2**16, 2**16), "more than this"),             # 4 GiB declared in a tiny file
])
def test_idx_declaring_more_than_the_file_holds(tmp_path, compress, dims, fragment):
    payload = idx_header(dims) + bytes(100)
    path = tmp_path / ("x-ubyte.gz" if compress else "x-ubyte")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataError, match=fragment if compress else "truncated"):
        load_idx(path)


def test_idx_multi_member_gzip_still_reads(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = tmp_path / "a-ubyte"
    save_idx(raw, array)
    data = raw.read_bytes()
    (tmp_path / "b-ubyte.gz").write_bytes(gzip.compress(data[:10]) + gzip.compress(data[10:]))
    np.testing.assert_array_equal(load_idx(tmp_path / "b-ubyte.gz"), array)


def test_gzip_idx_is_held_once(tmp_path):
    """An honest .gz declaring 32 MiB costs 32 MiB and a few chunks: inflated into the array it
    returns, no copies (three copies before: 96 MiB)."""
    path = tmp_path / "big-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((32, 1024, 1024)) + bytes(32 * MIB), compresslevel=1))
    tracemalloc.start()
    try:
        array = load_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.shape == (32, 1024, 1024) and array.dtype == np.uint8 and not array.any()
    assert peak < 40 * MIB, f"{peak / MIB:.0f} MiB to read 32 MiB"


_UNDER_A_MEMORY_CAP = """
import resource, sys
import xpnn.cli
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
sys.exit(xpnn.cli.main(sys.argv[1:]))
"""


def test_idx_too_large_for_the_memory_left_is_one_line(tmp_path):
    """A 1 MiB .gz declaring 1 GiB, under a memory cap: one line naming the file, exit 2."""
    import os
    import subprocess
    import sys
    data = tmp_path / "data"
    data.mkdir()
    images = data / "train-images-idx3-ubyte.gz"
    count = 2**30 // 784
    images.write_bytes(gzip.compress(idx_header((count, 28, 28)) + np.random.default_rng(0).bytes(MIB + 8192),
                                     compresslevel=0))
    for name, dims in (("train-labels-idx1-ubyte", (count,)), ("t10k-images-idx3-ubyte", (1, 28, 28)),
                       ("t10k-labels-idx1-ubyte", (1,))):
        save_idx(data / name, np.zeros(dims, np.uint8))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _UNDER_A_MEMORY_CAP, "train", "--data", str(data), "--device",
                           "cpu", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(images) in lines[0] and "memory" in lines[0], lines[0]


# --------------------------------------------------------------------------- images


def test_image_size_beyond_pillows_bomb_limit_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="decompression-bomb limit"):
            load_image(tmp_path / "x.png", size=(20000, 20000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MIB


def two_classes(root: Path, per_class: int = 2) -> Path:
    for name, value in (("cat", 40), ("dog", 200)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (6, 6), value + i).save(root / name / f"{i}.png")
    return root


def test_symlink_loop_adds_nothing(tmp_path):
    root = two_classes(tmp_path / "data")
    (root / "cat" / "loop").symlink_to(".")
    (root / "cat" / "up").symlink_to("..")
    (root / "dog" / "sub").mkdir()
    (root / "dog" / "sub" / "back").symlink_to("../..")
    folder = ImageFolder(root, size=4, workers=0)
    assert len(folder) == 4 and sorted(folder.y.tolist()) == [0, 0, 1, 1]


def test_fifo_named_like_an_image_is_not_opened(tmp_path, capsys):
    import os
    root = two_classes(tmp_path / "data")
    os.mkfifo(root / "cat" / "pipe.png")
    assert len(ImageFolder(root, size=4, workers=0)) == 4
    with pytest.raises(DataError, match="not a regular file"):
        load_image(root / "cat" / "pipe.png", size=4)


def test_walk_is_bounded(tmp_path, monkeypatch):
    from xpnn.data import images
    root = two_classes(tmp_path / "data", per_class=6)
    monkeypatch.setattr(images, "MAX_WALK_ENTRIES", 5)
    with pytest.raises(DataError, match="more than 5 files and folders"):
        ImageFolder(root, size=4, workers=0)
    monkeypatch.setattr(images, "MAX_WALK_ENTRIES", 1000)
    monkeypatch.setattr(images, "MAX_WALK_DEPTH", 2)
    deep = root / "cat" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    with pytest.raises(DataError, match="more than 2 levels deep"):
        ImageFolder(root, size=4, workers=0)


def test_proc_is_not_walked(tmp_path):
    """`/proc` (its pid folders as classes, /proc/self/root leading to /) ends in a DataError."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    with pytest.raises(DataError):
        ImageFolder("/proc", size=4, workers=0)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"garbage", lambda b: b""])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    root = two_classes(tmp_path / "data")
    first = ImageFolder(root, size=4, cache=True, workers=0)
    (cache,) = root.glob(".xpnn-cache-*.npz")
    cache.write_bytes(damage(cache.read_bytes()))
    again = ImageFolder(root, size=4, cache=True, workers=0)
    np.testing.assert_array_equal(again.x, first.x)
    with np.load(cache, allow_pickle=False) as f:
        assert f["x"].shape == first.x.shape  # rewritten whole


def test_cache_with_other_shapes_is_rebuilt(tmp_path):
    root = two_classes(tmp_path / "data")
    first = ImageFolder(root, size=4, cache=True, workers=0)
    (cache,) = root.glob(".xpnn-cache-*.npz")
    with np.load(cache, allow_pickle=False) as f:
        parts = {k: f[k] for k in f.files}
    np.savez(cache, **{**parts, "y": np.full(len(parts["y"]), 99)})
    np.testing.assert_array_equal(ImageFolder(root, size=4, cache=True, workers=0).y, first.y)


# --------------------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_special_files_are_refused_without_opening_them(tmp_path, capsys, kind):
    import os
    if kind == "fifo":
        path = tmp_path / "x.npz"
        os.mkfifo(path)
    elif kind == "folder":
        path = tmp_path / "x.npz"
        path.mkdir()
    else:
        path = Path("/dev/zero")
    with pytest.raises((ModelFileError, DataError), match="not a regular file"):
        xpnn.load(path)
    with pytest.raises(DataError, match="not a regular file"):
        load_idx(path)
    for command in (["info", str(path)], ["predict", str(path), str(path)]):
        code = cli.main(command)
        err = capsys.readouterr().err
        assert code == 2 and "not a regular file" in err and err.count("\n") == 1, err


def test_non_finite_weights_in_a_file_are_refused(checkpoint, tmp_path):
    def poison(data: dict) -> None:
        key = first_weight(data)
        data[key] = data[key].copy()
        data[key].flat[3] = np.inf
    path = rewrite(checkpoint, tmp_path / "m.npz", arrays=poison)
    with pytest.raises(ModelFileError, match="holds NaN/inf values"):
        xpnn.load(path)
    path = rewrite(checkpoint, tmp_path / "o.npz",
                   arrays=lambda d: d.update({optim_member(d): np.full_like(d[optim_member(d)], np.nan)}))
    xpnn.load(path)  # the weights are fine; the optimizer state is read only to resume
    with pytest.raises(ModelFileError, match="holds NaN/inf values"):
        xpnn.load_checkpoint(path)
