"""The package's layout rules: training/ and evaluation/ read other stages' outputs through
ptalign_ray.artifacts, never by importing synthesis/; module-level imports have no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ptalign_ray"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("ptalign_ray")}


def _files():
    return sorted(ROOT.rglob("*.py"))


def test_training_and_evaluation_do_not_import_synthesis():
    offenders = []
    for path in _files():
        mod = _module(path)
        if mod.startswith(("ptalign_ray.training", "ptalign_ray.evaluation")):
            offenders += [
                f"{mod} -> {m}" for m in _imports(path, top_level_only=False) if m.startswith("ptalign_ray.synthesis")
            ]
    assert not offenders, offenders


def test_no_module_level_import_cycles():
    modules = {_module(p): p for p in _files()}
    graph = {}
    for mod, path in modules.items():
        deps = set()
        for m in _imports(path, top_level_only=True):
            while m and m not in modules:  # 'from pkg.mod import name' -> pkg.mod
                m = m.rpartition(".")[0]
            if m and m != mod:
                deps.add(m)
        graph[mod] = deps
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])
    # a package __init__ importing its own submodules is not a cycle worth reporting
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, cycles
