"""The package's modules import each other without a cycle. The graph is read from the source (ast), with every
`import` and `from ... import` at any level, the ones inside functions too: a lazy import that only hides a
cycle is still one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rvdeploy"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """NAME or its longest prefix that is one of the package's modules (`a.b.func` -> `a.b`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules MODULE imports, wherever in the file the import statement is."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level-1 more
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import name`: NAME is a submodule when one exists by that name, else an attribute of pkg
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        for target in filter(None, (_resolve(n, known) for n in names)):
            out.update(_with_packages(target, module, known))
    return out


def _with_packages(target: str, module: str, known: dict[str, Path]) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those too, except to the packages the
    importing module sits in (they are already being imported when it runs)."""
    parts = target.split(".")
    chain = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known.keys()
    inside = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    return chain - inside


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [_path_within(g, set(c)) for c in components]


def _path_within(g: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A closed import path inside one strongly connected component: start -> ... -> start."""
    start = min(comp)
    prev = {start: None}
    frontier = [start]
    while frontier:  # breadth-first: the shortest way back to START
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & comp):
                if w == start:  # v is not START: no module imports itself (imports() leaves those out)
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(comp)} is no cycle")


def test_no_import_cycle():
    g = graph()
    found = cycles(g)
    assert not found, "import cycles: " + "; ".join(
        f"{' -> '.join(c)} (tangled with it: {', '.join(sorted(_tangle(g, c[0]) - set(c))) or 'nothing else'})"
        for c in found
    )


def _tangle(g: dict[str, set[str]], start: str) -> set[str]:
    """Every module that START reaches and that reaches START back."""

    def reach(v: str, edges) -> set[str]:
        seen, todo = {v}, [v]
        while todo:
            for w in edges(todo.pop()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    def back(v):
        return [u for u, ws in g.items() if v in ws]

    return reach(start, lambda v: g[v]) & reach(start, back)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: a cycle closed only by a function-level import, a relative `from . import x`, an
    absolute import and `from pkg.mod import name` are all edges, and a cycle is named."""
    pkg = tmp_path / "rvdeploy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import rvdeploy.d\n")
    (pkg / "d.py").write_text("from rvdeploy.a import thing\n")
    (pkg / "e.py").write_text("from .a import x\n")  # into the cycle, not part of it
    g = graph(pkg)
    assert g["rvdeploy.a"] == {"rvdeploy.sub", "rvdeploy.sub.b"}  # the package's __init__ runs first
    assert g["rvdeploy.sub.b"] == {"rvdeploy.c"}  # not rvdeploy.sub: it is being imported already
    assert g["rvdeploy.c"] == {"rvdeploy.d"}
    assert g["rvdeploy.d"] == {"rvdeploy.a"}
    assert cycles(g) == [["rvdeploy.a", "rvdeploy.sub.b", "rvdeploy.c", "rvdeploy.d", "rvdeploy.a"]]
    (pkg / "sub" / "__init__.py").write_text("from .. import e\n")  # a package __init__ can close a cycle
    (pkg / "d.py").write_text("")
    assert cycles(graph(pkg)) == [["rvdeploy.a", "rvdeploy.sub", "rvdeploy.e", "rvdeploy.a"]]
    (pkg / "e.py").write_text("")
    assert cycles(graph(pkg)) == []
