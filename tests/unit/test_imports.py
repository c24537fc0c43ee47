"""No import cycles inside ebpfguard: every import counts, at module level, inside functions (the lazy
ones) and under TYPE_CHECKING, because a cycle hidden by a lazy import is still two modules that
cannot be understood one without the other."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "ebpfguard"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    edges[mod].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    edges = graph()
    assert len(edges) > 40 and "ebpfguard.runtime.engine" in edges["ebpfguard.service.agent"]
    assert cycles(edges) == []


# The layers, bottom first: a module may import its own package and those before it, never one after.
# ebpfguard/__init__.py (the surface) and testing.py (a test double) stand outside the order.
LAYERS = ["errors", "common", "manifest", "kernel", "forensics", "sandbox", "instance", "pipeline", "runtime",
          "governance", "observability", "service", "client", "notify", "lab", "cli"]
OUTSIDE = {"ebpfguard", "ebpfguard.testing"}


def layer(mod: str) -> int:
    return LAYERS.index(mod.split(".")[1])


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer (or into the test double), as 'importer -> imported'."""
    out = []
    for mod, targets in edges.items():
        if mod in OUTSIDE:
            continue
        for t in targets:
            if t == "ebpfguard.testing" or (t not in OUTSIDE and layer(t) > layer(mod)):
                out.append(f"{mod} -> {t}")
    return sorted(out)


def test_the_layer_checker_finds_an_import_going_up() -> None:
    edges = {"ebpfguard.pipeline.decide": {"ebpfguard.sandbox.landlock", "ebpfguard.lab.simulate"},
             "ebpfguard.runtime.engine": {"ebpfguard.testing"}}
    assert upward(edges) == ["ebpfguard.pipeline.decide -> ebpfguard.lab.simulate",
                             "ebpfguard.runtime.engine -> ebpfguard.testing"]


def test_every_package_has_a_layer_and_says_its_job() -> None:
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert sorted(set(packages) - set(LAYERS)) == []
    for name in packages:
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"ebpfguard/{name}/__init__.py has no docstring saying its job"
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "errors.py", "testing.py"], flat


def test_no_import_goes_up_a_layer() -> None:
    assert upward(graph()) == []


def test_the_wheel_lists_every_package() -> None:
    import tomllib  # noqa: PLC0415

    listed = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = sorted(".".join(p.parent.relative_to(PKG.parent).parts) for p in PKG.rglob("__init__.py")
                   if "__pycache__" not in p.parts)
    missing = sorted(set(found) - set(listed))
    assert not missing, f"pyproject.toml's [tool.setuptools] packages leaves out {missing}: the wheel and the .deb " \
                        "would not have them"
