"""What the README and docs/*.md show runs: Sybil (a maintained doc-testing library) reads the Markdown.

Each document's blocks run in order, in one fresh folder holding the small data they name (see
:func:`document_folder`): the ```python blocks in one shared namespace, as written; the ```console
blocks line by line, each ``$ xpnn ...`` as a subprocess that must exit 0 (2 where the block shows
an ``xpnn: error:`` line) and print every line the block shows under it. ``xpnn train`` gets
``--epochs 1 --limit 100`` where the line does not set them, to stay quick; a ``~$`` prompt runs in
the home folder the README calls /home/me; ``pip install "xpnn[EXTRA]"`` lines are not run, their
extra must exist in pyproject.toml.

A block that cannot run here is marked in the Markdown right before it with Sybil's skip
directive and a reason, which the test reports: ``<!-- skip: next "needs a GPU" -->``, or
``<!-- skip: next if(missing_module("onnx"), reason="needs onnx") -->`` for a block that runs
where an optional package is installed (``missing_module`` is the one name the test adds to the
blocks' namespace).
"""
from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from test_cli import xpnn_cmd
from xpnn import backend

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import _common  # noqa: E402

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROMPT = re.compile(r"^(~?)\$ (.*)$")
HOME = "/home/me"
QUICK_TRAINING = {"--epochs": "1", "--limit": "100"}
EXTRAS = set(re.findall(r"^([\w-]+) = \[", (ROOT / "pyproject.toml").read_text()
                        .split("[project.optional-dependencies]")[1].split("\n[")[0], re.M))


def _console_lines(text: str) -> list[tuple[bool, str, list[str]]]:
    """(run in the home folder, command, the output lines shown under it) per prompt."""
    commands: list[tuple[bool, str, list[str]]] = []
    for line in text.splitlines():
        match = PROMPT.match(line)
        if match:
            commands.append((match[1] == "~", match[2], []))
        elif line.strip():
            assert commands, f"output before any command: {line!r}"
            commands[-1][2].append(line.strip())
    return commands


def _run_xpnn(words: list[str], shown: list[str], home: bool) -> None:
    args = [match for word in words[1:] for match in (sorted(glob.glob(word)) if "*" in word else [word])]
    if args[0] == "train":
        args += [item for option, value in QUICK_TRAINING.items() if option not in args for item in (option, value)]
    proc = xpnn_cmd(*args, cwd=Path.cwd(), check=False)
    output = proc.stdout + proc.stderr
    if home:
        output = output.replace(str(Path.cwd().resolve()), HOME)
    status = 2 if any(line.startswith("xpnn: error:") for line in shown) else 0
    assert proc.returncode == status, f"xpnn {' '.join(args)} exited {proc.returncode}, not {status}:\n{output}"
    for line in shown:
        assert line in output, f"xpnn {' '.join(args)} no longer prints {line!r}; it printed:\n{output}"


def run_console(example) -> None:
    """Sybil's evaluator for ```console blocks."""
    for home, command, shown in _console_lines(example.parsed):
        words = shlex.split(command, comments=True)
        if words[:2] == ["pip", "install"]:
            extras = [extra for word in words[2:] for extra in re.findall(r"^xpnn\[(.+)\]$", word)]
            assert extras and set(",".join(extras).split(",")) <= set(EXTRAS), f"unknown extra in {command!r}"
        elif words[0] == "xpnn":
            _run_xpnn(words, shown, home)
        else:
            raise AssertionError(f"the test runs `xpnn` and checks `pip install` lines; it cannot run {command!r}")


DOCS = Sybil(parsers=[PythonCodeBlockParser(), CodeBlockParser("console", evaluator=run_console), SkipParser()])
EXAMPLES = [example for path in DOCUMENTS for example in DOCS.parse(path).examples()]


def _gray(pixels, rng):
    return Image.fromarray(pixels, "L")


def _rgb(pixels, rng):
    return Image.fromarray(pixels, "L").convert("RGB")


def _prepare(folder: Path) -> None:
    """What the README's blocks name: image folders of a few Fashion classes (``path/to/folder``,
    ``data/``, ``pets/``, ``photos/`` with one class), single images, and the run
    ``runs/20250101-120000`` (the default network trained on ``path/to/folder``, 28x28 gray) with
    a copy of its model as ``model.npz``."""
    clothes = _common.write_sample_folder(folder / "path/to/folder", {"bag": "Bag", "shirt": "Shirt", "shoe": "Sneaker"},
                                          _gray, per_class=40)
    _common.write_sample_folder(folder / "data", {"bag": "Bag", "shoe": "Sneaker"}, _rgb, per_class=10)
    _common.write_sample_folder(folder / "pets", {"cat": "Sandal", "dog": "Sneaker"}, _rgb, per_class=30)
    _common.write_sample_folder(folder / "photos", {"cats": "Sandal"}, _rgb, per_class=1)
    shutil.copy(clothes / "shoe" / "0000.png", folder / "shoe.png")
    Image.open(clothes / "shirt" / "0000.png").save(folder / "shirt.jpg")
    run = folder / "runs/20250101-120000"
    xpnn_cmd("train", "--quiet", "--epochs", "1", "--data", clothes, "--color", "gray", "--image-size", "28",
             "--out", run)
    shutil.copy(run / "model.npz", folder / "model.npz")


def missing_module(name: str) -> bool:
    return importlib.util.find_spec(name) is None


@pytest.fixture(scope="module")
def document_folder(tmp_path_factory):
    """The folder of each document, prepared on its first block."""
    folders: dict[str, Path] = {}

    def folder_for(document) -> Path:
        if document.path not in folders:
            folders[document.path] = tmp_path_factory.mktemp(Path(document.path).stem)
            _prepare(folders[document.path])
            document.namespace["missing_module"] = missing_module
        return folders[document.path]

    return folder_for


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{Path(e.path).name}:{e.line}" for e in EXAMPLES])
def test_block_runs_as_written(example, document_folder, monkeypatch):
    """One block (or skip marker), after the blocks above it; a block may change the device, the next starts
    on the one the test found."""
    monkeypatch.chdir(document_folder(example.document))
    with backend.use_device(backend.get_device()):
        example.evaluate()


def test_every_block_is_collected():
    """Each python and console block and each skip marker of the documents is one example here."""
    for path in DOCUMENTS:
        text = path.read_text()
        blocks = len(re.findall(r"^```(?:python|console)$", text, re.M)) + len(re.findall(r"^<!-- skip: ", text, re.M))
        assert len([example for example in EXAMPLES if example.path == str(path)]) == blocks, path
