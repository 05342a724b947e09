"""The package's layering, read from the source with ``ast`` (nothing is imported):

* no import cycle between the package's components (a component is a top-level module or
  subpackage: ``bundle``, ``export``, ``runtime`` ...), counting imports inside functions too and
  leaving out ``if TYPE_CHECKING:`` blocks;
* the stages ``export``, ``quantize``, ``builders`` and ``bench`` never import each other, nor
  ``train``, ``pipeline`` or ``remote`` (they meet only through files, :mod:`edgetransfer.bundle`,
  and the shared leaf modules: parity, onnx_inspect, host, runtime, data, artifacts ...);
* ``runtime`` never imports ``train``;
* only ``cli``, ``api`` (the public Python API, the same code path as the CLI), ``benchmarks/``
  and ``tests/`` import ``pipeline``;
* the bundle's file names (``model.pt``, ``model.onnx``, ``bundle.json``, ``report.json`` ...) are
  spelled only in ``bundle.py`` (as string constants; prose in messages and docstrings is free);
* no package module is over ``MAX_LINES`` lines.

``check(root)`` returns the violations as text, so the test shows them all at once (and
``python tests/test_layering.py`` prints them for a working tree).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "edgetransfer"
MAX_LINES = 450
STAGES = ("export", "quantize", "builders", "bench")
STAGE_FORBIDDEN = set(STAGES) | {"train", "pipeline", "remote"}
PIPELINE_USERS = {"cli", "api", "pipeline"}

ALLOW_LONG: set[str] = set()  # relative paths of modules allowed over MAX_LINES (none)
ALLOW_NAMES: set[str] = set()  # modules allowed to spell bundle file names besides bundle.py (none)
ALLOW_EDGES: set[tuple[str, str, tuple[str, ...]]] = set()  # (component, imported component, names) exceptions (none)


def bundle_names(root: Path) -> set[str]:
    """The fixed file names bundle.py defines (its module-level UPPER_CASE string constants that
    look like files, and the values of FORMAT_FILES)."""
    tree = ast.parse((root / PACKAGE / "bundle.py").read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not all(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
                continue
            for c in ast.walk(value):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and "." in c.value and " " not in c.value:
                    names.add(c.value)
    return names


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def component(module: str) -> str:
    """``edgetransfer.builders.tensorrt`` -> ``builders``; ``edgetransfer`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


class _Imports(ast.NodeVisitor):
    """Absolute module names imported by one module (with the names taken), TYPE_CHECKING blocks left out."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, tuple[str, ...], int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for n in node.orelse:
                self.visit(n)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.found.append((a.name, (), node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = tuple(a.name for a in node.names)
        if node.module is None or mod == PACKAGE:  # from . import x / from edgetransfer import x: submodules
            for n in names:
                self.found.append((f"{mod}.{n}", (), node.lineno))
        else:
            self.found.append((mod, names, node.lineno))


def package_modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py")) if "__pycache__" not in p.parts}


def import_edges(root: Path) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(importing module, imported module, names, "file:line") for imports inside the package."""
    out = []
    for mod, path in package_modules(root).items():
        v = _Imports(mod, path.name == "__init__.py")
        v.visit(ast.parse(path.read_text()))
        for target, names, line in v.found:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                out.append((mod, target, names, f"{path.relative_to(root)}:{line}"))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _allowed(src: str, dst: str, names: tuple[str, ...]) -> bool:
    return any(src == s and dst == d and names and set(names) <= set(n) for s, d, n in ALLOW_EDGES)


def _string_constants(tree: ast.AST):
    """(value, line) of every str constant that is not a docstring."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.value, node.lineno


def check(root: Path = REPO) -> list[str]:
    problems: list[str] = []
    edges = import_edges(root)
    graph: dict[str, set[str]] = {}
    for src, dst, names, where in edges:
        a, b = component(src), component(dst)
        if a == b or a == "__init__" or _allowed(a, b, names):
            continue  # the package __init__ only re-exports (it may import anything, lazily)
        graph.setdefault(a, set()).add(b)
        if a in STAGES and b in STAGE_FORBIDDEN:
            problems.append(f"{where}: stage {a} imports {dst} (stages meet only through the bundle's files)")
        if a == "runtime" and b == "train":
            problems.append(f"{where}: runtime imports {dst}")
        if b == "pipeline" and a not in PIPELINE_USERS:
            problems.append(f"{where}: {a} imports pipeline (only cli, api, benchmarks and tests may)")
    for comp in _cycles(graph):
        problems.append("import cycle between components: " + " -> ".join(comp)
                        + " (" + "; ".join(f"{a} -> {b}" for a in comp for b in sorted(graph.get(a, ())) if b in comp) + ")")
    names = bundle_names(root)
    for mod, path in package_modules(root).items():
        rel = path.relative_to(root).as_posix()
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and rel not in ALLOW_LONG:
            problems.append(f"{rel}: {n} lines (> {MAX_LINES}); split it along its seams")
        if rel == f"{PACKAGE}/bundle.py" or rel in ALLOW_NAMES:
            continue
        for value, line in _string_constants(ast.parse(text)):
            if value in names or any(value.endswith("/" + x) for x in names):
                problems.append(f"{rel}:{line}: spells the bundle file name {value!r}; use the constant from edgetransfer.bundle")
    return problems


def test_layering():
    problems = check(REPO)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_checker_sees_a_planted_violation(tmp_path):
    """A copy of the package with one violation of each rule: every one is reported."""
    import shutil

    shutil.copytree(REPO / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    pkg = tmp_path / PACKAGE
    (pkg / "export" / "planted.py").write_text(
        "from ..pipeline import stage_build\n"           # a stage importing the pipeline
        "def f():\n    from ..quantize import int8\n"    # a stage importing another (inside a function)
        "NAME = 'model.onnx'\n")                          # a bundle file name outside bundle.py
    (pkg / "runtime" / "planted.py").write_text("from ..train import TrainConfig\n")
    (pkg / "data_planted.py").write_text("\n" * (MAX_LINES + 5))
    (pkg / "host.py").write_text((pkg / "host.py").read_text() + "\ndef _c():\n    from .bundle import Bundle\n")
    (pkg / "bundle.py").write_text((pkg / "bundle.py").read_text() + "\ndef _d():\n    from .host import cpu_info\n")
    got = "\n".join(check(tmp_path))
    assert "stage export imports edgetransfer.pipeline" in got
    assert "stage export imports edgetransfer.quantize" in got
    assert "spells the bundle file name 'model.onnx'" in got
    assert "runtime imports edgetransfer.train" in got and "export imports pipeline" in got
    assert "data_planted.py: 455 lines" in got
    cycle = next((ln for ln in got.splitlines() if ln.startswith("import cycle between components: ")), "")
    assert "host -> bundle" in cycle and "bundle -> host" in cycle, got  # the planted edges (the cycle lists every member)


if __name__ == "__main__":
    found = check(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
    print("\n".join(found) or "layering: ok")
    sys.exit(1 if found else 0)
