"""xpnn's module graph, read from the source with ``ast``: import cycles and arrows that point up.

    python ci/import_graph.py            # summary: layers, largest modules, cycles, up-arrows
    python ci/import_graph.py --edges    # every edge, "a -> b" ("(late)" for one inside a function)

An edge is an ``import`` or ``from ... import`` of another xpnn module, resolved to the module it
names (``from .layers import Conv2D`` is an edge to ``xpnn.layers``; ``from . import backend`` to
``xpnn.backend``). A parent package's ``__init__`` that Python runs on the way is not counted, as
in import-linter and pydeps. An import at module level (inside ``if``/``try`` too) is an
import-time edge; one inside a function or method is a late edge, taken when the function runs.

The layers below are DESIGN.md's picture, bottom first. The package root ``xpnn/__init__.py``
sits at the bottom: it holds ``__version__`` and imports no xpnn module (its public names are
resolved by name on first use). An arrow, import-time or late, must point to the same layer or
a lower one; both graphs, import-time and import-time plus late, must have no cycle. Exit status 1 if either rule is broken.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "xpnn"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Bottom first; a module belongs to the layer of the longest prefix that names it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("xpnn", "xpnn.backend", "xpnn.errors", "xpnn.files", "xpnn.instrumented", "xpnn.precision")),
    ("host data, checks, initializers", ("xpnn.init", "xpnn.validation", "xpnn.metrics", "xpnn.testing",
                                         "xpnn.data", "xpnn.datasets")),
    ("layers", ("xpnn.layers",)),
    ("losses, optimizers", ("xpnn.losses", "xpnn.optim")),
    ("distributed", ("xpnn.distributed",)),
    ("training loop", ("xpnn.train.loop", "xpnn.train.session", "xpnn.train.callbacks", "xpnn.train.progress",
                       "xpnn.train.history", "xpnn.train.inputs", "xpnn.train.monitor", "xpnn.train.weights")),
    ("model", ("xpnn.model", "xpnn.zoo")),
    ("model files", ("xpnn.io", "xpnn.onnx_export")),
    ("training", ("xpnn.train", "xpnn.train.checkpoint")),
    ("command line", ("xpnn.cli", "xpnn.__main__")),
)



def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package at ``root``."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target>`` inside ``importer``."""
    if level == 0:
        return target or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, modules: set[str]) -> None:
        self.name, self.is_package, self.modules = name, is_package, modules
        self.depth = 0
        self.edges: set[tuple[str, str, bool]] = set()

    def _add(self, target: str) -> None:
        if target in self.modules and target != self.name:
            self.edges.add((self.name, target, self.depth > 0))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = _resolve(self.name, self.is_package, node.level, node.module)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._add(submodule if submodule in self.modules else source)


def edges(modules: dict[str, Path]) -> set[tuple[str, str, bool]]:
    """``(importer, imported, late)`` for every xpnn-to-xpnn import."""
    found: set[tuple[str, str, bool]] = set()
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py", set(modules))
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found |= collector.edges
    return found


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    return level


def cycles(nodes: set[str], graph: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    successors: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in graph:
        successors[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in successors[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(found)


def report(show_edges: bool = False, root: Path = ROOT) -> int:
    """Print the summary (and every edge if asked); 1 if there is a cycle, an up-arrow or an unplaced module."""
    modules = find_modules(root)
    found = edges(modules)
    unplaced = sorted(m for m in modules if layer_of(m) < 0)
    import_time = {(a, b) for a, b, late in found if not late}
    everything = {(a, b) for a, b, _ in found}
    up = sorted((a, b, late) for a, b, late in found
                if layer_of(b) > layer_of(a))
    cycles_now, cycles_late = cycles(set(modules), import_time), cycles(set(modules), everything)
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules.items()}

    print(f"{len(modules)} modules, {len(import_time)} import-time edges, "
          f"{len(everything - import_time)} late-only edges")
    print("layers, bottom first:")
    for index, (title, _) in enumerate(LAYERS):
        members = sorted(m for m in modules if layer_of(m) == index)
        print(f"  {index} {title}: {', '.join(members)}")
    print("largest modules (lines):")
    for name in sorted(lines, key=lambda n: -lines[n])[:8]:
        print(f"  {lines[name]:5d} {name}")
    if show_edges:
        print("edges:")
        for a, b, late in sorted(found):
            print(f"  {a} -> {b}{' (late)' if late else ''}")
    print(f"cycles at import time: {len(cycles_now)}")
    for component in cycles_now:
        print("  " + " <-> ".join(component))
    print(f"cycles counting late imports: {len(cycles_late)}")
    for component in cycles_late:
        print("  " + " <-> ".join(component))
    print(f"arrows pointing up: {len(up)}")
    for a, b, late in up:
        print(f"  {a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]}){' (late)' if late else ''}")
    for name in unplaced:
        print(f"not in any layer: {name}")
    return 1 if cycles_now or cycles_late or up or unplaced else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="list every edge")
    return report(parser.parse_args(argv).edges)


if __name__ == "__main__":
    sys.exit(main())
