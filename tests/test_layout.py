"""The import graph: one core (sonodistill), stages import only downward, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# downstream -> pretrain -> shards -> sonodistill: what each package may import
ALLOWED = {
    "sonodistill": {"sonodistill"},
    "shards": {"shards", "sonodistill"},
    "pretrain": {"pretrain", "shards", "sonodistill"},
    "downstream": {"downstream", "pretrain", "shards", "sonodistill"},
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ALLOWED:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (top level and inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def test_no_stage_imports_upward():
    bad = [
        f"{a} -> {b}" for a, deps in graph().items() for b in deps if b.split(".")[0] not in ALLOWED[a.split(".")[0]]
    ]
    assert not bad, "upward imports: " + ", ".join(bad)


def test_no_import_cycles():
    g = graph()
    # a module importing its own package (the package's __init__ runs first anyway) is not an arrow of
    # the design; the __init__ importing its submodules is, and is kept
    edges = {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_graph_sees_the_imports_it_checks():
    g = graph()
    assert "sonodistill.errors" in g["shards.build"]  # top-level import
    assert "sonodistill.dinov3" in g["downstream.encoders"]  # import inside a function
    assert all(
        not deps - {d for d in deps if d.startswith("sonodistill")}
        for n, deps in g.items()
        if n.startswith("sonodistill")
    )
