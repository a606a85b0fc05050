"""The import graph: one way (isa -> emulator -> programs -> lpemu), with no cycles.

Every import counts, including those inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"isa": 0, "emulator": 1, "programs": 2, "lpemu": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            # ``from pkg import submodule`` imports the submodule; otherwise names of pkg
            targets = [s for s in subs if s in modules] or [base]
        for t in targets:
            parts = t.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(p, n, mods) for n, p in mods.items()}


def test_imports_flow_one_way():
    upward = [(a, b) for a, deps in _graph().items() for b in deps
              if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]]
    assert upward == []


def test_no_import_cycles():
    edges = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(path[path.index(m):] + [m])
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself: a module pair importing each other is found."""
    mods = {"emulator.a": tmp_path / "a.py", "emulator.b": tmp_path / "b.py"}
    mods["emulator.a"].write_text("from emulator.b import x\n")
    mods["emulator.b"].write_text("def f():\n    from emulator import a\n")
    assert _imports(mods["emulator.a"], "emulator.a", mods) == {"emulator.b"}
    assert _imports(mods["emulator.b"], "emulator.b", mods) == {"emulator.a"}
