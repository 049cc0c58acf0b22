"""The import graph of vlutils and vlmodel, built from the source with ``ast``: no cycles (a
function-level or TYPE_CHECKING import counts: it is still a dependency), and no module
imports another module's private (``_name``) names."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vlutils", "vlmodel")


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {_module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def _imports(module: str, path: pathlib.Path, known: set[str]):
    """Yield ``(target_module, imported_name_or_None, line)`` for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    yield submodule, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def import_graph(root: pathlib.Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """``(edges, private_imports)``: module -> the project modules it imports, and one
    ``"module:line imports target.name"`` per private name taken from another module."""
    sources = _sources(root)
    known = set(sources)
    edges: dict[str, set[str]] = {m: set() for m in sources}
    private = []
    for module, path in sources.items():
        for target, name, line in _imports(module, path, known):
            if target in known and target != module:
                edges[module].add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                if target.split(".")[0] in PACKAGES:
                    private.append(f"{module}:{line} imports {target}.{name}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycles():
    edges, _ = import_graph()
    assert len(edges) > 100  # the whole tree was read
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_imports_of_another_modules_private_names():
    _, private = import_graph()
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_checks_catch_a_cycle_and_a_private_import(tmp_path):
    package = tmp_path / "vlutils"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("def f():\n    from . import a\nthing = 1\n")  # function-level counts
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import _hidden\nfrom .. import b\n")
    (tmp_path / "vlmodel").mkdir()
    (tmp_path / "vlmodel" / "__init__.py").write_text("import vlutils.sub.c\n")
    edges, private = import_graph(tmp_path)
    assert cycles(edges) == [["vlutils.a", "vlutils.b"]]
    assert private == ["vlutils.sub.c:1 imports vlutils.a._hidden"]
    assert edges["vlmodel"] == {"vlutils.sub.c"} and edges["vlutils.sub.c"] == {"vlutils.a", "vlutils.b"}


@pytest.mark.parametrize("module", ["vlutils", "vlutils.families", "vlutils.grounding"])
def test_light_modules_do_not_pull_in_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
