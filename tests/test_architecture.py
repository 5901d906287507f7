"""The package's shape: no import cycles, every import arrow pointing down DESIGN.md's layers
(checked by ci/import_graph.py), and every module importable on its own."""
from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import xpnn

REPO = Path(__file__).resolve().parent.parent


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "ci" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cycles_and_no_arrow_points_up(capsys):
    code = _import_graph().report()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cycles at import time: 0" in out and "cycles counting late imports: 0" in out
    assert "arrows pointing up: 0" in out and "not in any layer" not in out


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "xpnn" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "xpnn"


def test_the_checker_reports_a_cycle_and_an_arrow_up(tmp_path, capsys):
    package = _write(tmp_path, {
        "__init__.py": "",
        "backend.py": "def f():\n    from .train import loop\n",  # late, and up: foundation -> training
        "io.py": "from .model import Sequential\n",
        "model.py": "from . import io\n",  # io <-> model: a cycle at import time, and model -> io points up
        "train/__init__.py": "",
        "train/loop.py": "from ..backend import f\n",
    })
    graph = _import_graph()
    assert graph.report(root=package) == 1
    out = capsys.readouterr().out
    assert "cycles at import time: 1\n  xpnn.io <-> xpnn.model" in out
    assert "cycles counting late imports: 2" in out and "xpnn.backend <-> xpnn.train.loop" in out
    assert ("arrows pointing up: 2\n  xpnn.backend (foundation) -> xpnn.train.loop (training loop) (late)\n"
            "  xpnn.model (model) -> xpnn.io (model files)\n") in out
    assert graph.edges(graph.find_modules(package)) == {
        ("xpnn.backend", "xpnn.train.loop", True), ("xpnn.io", "xpnn.model", False),
        ("xpnn.model", "xpnn.io", False), ("xpnn.train.loop", "xpnn.backend", False)}


def test_every_module_imports_on_its_own():
    """Each module in a fresh interpreter, so none depends on another having been imported first."""
    modules = sorted(_import_graph().find_modules())
    procs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name in modules if name != "xpnn.__main__"}
    failed = {name: proc.communicate(timeout=120)[0] for name, proc in procs.items()}
    failed = {name: out for name, out in failed.items() if procs[name].returncode != 0}
    assert not failed, failed


def test_the_checker_runs_as_a_command():
    result = subprocess.run([sys.executable, str(REPO / "ci" / "import_graph.py")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "arrows pointing up: 0" in result.stdout and "declared late delegation" not in result.stdout


_RESOLVE = """
import functools, json, sys
import xpnn
eager = sorted(name for name in sys.modules if name.startswith("xpnn."))
unresolved = {}
for name in json.loads(sys.argv[1]):
    try:
        found = functools.reduce(getattr, name.split(".")[1:], xpnn)
    except AttributeError as exc:
        unresolved[name] = str(exc)
    else:
        if found is not sys.modules.get(name):
            unresolved[name] = repr(found)
print(json.dumps({"eager": eager, "unresolved": unresolved}))
"""


def test_every_public_module_is_an_attribute_after_import_xpnn():
    """In a fresh interpreter ``import xpnn`` imports no submodule (the command starts fast), and then
    every module without a private part in its name resolves as attributes from the package
    (``xpnn.data.images``, ``xpnn.cli.train``); the top-level ones are listed in ``__all__`` and ``dir()``."""
    names = sorted(info.name for info in pkgutil.walk_packages(xpnn.__path__, "xpnn.")
                   if not any(part.startswith("_") for part in info.name.split(".")))
    assert {"xpnn.data", "xpnn.zoo", "xpnn.metrics", "xpnn.distributed", "xpnn.io", "xpnn.data.images"} <= set(names)
    done = subprocess.run([sys.executable, "-c", _RESOLVE, json.dumps(names)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"eager": [], "unresolved": {}}
    top_level = {name.split(".")[1] for name in names}
    assert top_level <= set(xpnn.__all__) and top_level <= set(dir(xpnn)), top_level - set(xpnn.__all__)
