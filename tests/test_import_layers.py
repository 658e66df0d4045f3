"""The package's import graph has layers: no circle between packages or between modules, the
models and everything else below the trainer never import it, and `trainer/` stays the loop.

Read from the source with `ast` (nothing is imported): every `import` / `from ... import` of a
g2rpo_fast module counts, the ones inside functions too. A lazy import keeps Python from
tripping over a circle, not a reader from walking it (docs/ARCHITECTURE.md, "Layers").
"""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "g2rpo_fast"
# setup.py's package_dir: the Triton sources are installed as g2rpo_fast.kernels
SOURCE_DIRS = {PACKAGE: ROOT / "g2rpo_fast", f"{PACKAGE}.kernels": ROOT / "kernels" / "triton"}
# Only the application layer builds a trainer (the package root names G2RPOTrainer lazily, by string).
TRAINER_USERS = {f"{PACKAGE}.cli", f"{PACKAGE}.demo"}
TRAINER_MAX_MODULES = 12
TRAINER_PY_MAX_LINES = 350


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for prefix, folder in SOURCE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([prefix, *(parts[:-1] if is_package else parts)])
            found[name] = (path, is_package)
    return found


def imported_names(name: str, path: Path, is_package: bool) -> set[str]:
    """The g2rpo_fast names `path` imports (a module, or a module's attribute), relative ones resolved."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in out if n == PACKAGE or n.startswith(PACKAGE + ".")}


def module_graph() -> dict[str, set[str]]:
    """module -> the g2rpo_fast modules it imports (an imported attribute counts as its module)."""
    mods = modules()
    graph = {}
    for name, (path, is_package) in mods.items():
        targets = set()
        for imported in imported_names(name, path, is_package):
            while imported not in mods:
                imported = imported.rpartition(".")[0]
            if imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def package_of(module: str) -> str:
    """The unit of the package graph: a subpackage or a package-level module (`g2rpo_fast.cli`)."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """package -> {package it imports: the module edges that make the import}."""
    out: dict[str, dict[str, list[str]]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = package_of(module), package_of(target)
            out.setdefault(a, {})
            out.setdefault(b, {})
            if a != b:
                out[a].setdefault(b, []).append(f"{module} -> {target}")
    return out


def find_cycle(graph) -> list[str] | None:
    """One circle of `graph` (node -> iterable of nodes) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read():
    graph = module_graph()
    assert f"{PACKAGE}.trainer.trainer" in graph and f"{PACKAGE}.kernels.launch" in graph
    assert f"{PACKAGE}.loss" in graph[f"{PACKAGE}.trainer.trainer"] or any(
        t.startswith(f"{PACKAGE}.loss") for t in reachable(graph, f"{PACKAGE}.trainer.trainer"))
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_no_import_circle_between_packages():
    packages = package_graph(module_graph())
    cycle = find_cycle(packages)
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle) + "; made of " + "; ".join(
        edge for a, b in itertools.pairwise(cycle) for edge in packages[a][b])


def test_no_import_circle_between_modules():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_models_import_nothing_from_the_trainer():
    graph = module_graph()
    for module in sorted(m for m in graph if m.startswith(f"{PACKAGE}.models")):
        above = sorted(t for t in reachable(graph, module) if t.startswith(f"{PACKAGE}.trainer"))
        assert not above, f"{module} reaches {above}"


def test_only_the_application_layer_imports_the_trainer():
    graph = module_graph()
    users = {m for m, targets in graph.items() if not m.startswith(f"{PACKAGE}.trainer")
             and any(t.startswith(f"{PACKAGE}.trainer") for t in targets)}
    assert users <= TRAINER_USERS, f"below the trainer, yet importing it: {sorted(users - TRAINER_USERS)}"


def test_the_trainer_package_holds_the_loop_only():
    folder = SOURCE_DIRS[PACKAGE] / "trainer"
    names = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
    assert len(names) <= TRAINER_MAX_MODULES, f"trainer/ has {len(names)} modules: {names}"
    lines = len((folder / "trainer.py").read_text(encoding="utf-8").splitlines())
    assert lines < TRAINER_PY_MAX_LINES, f"trainer/trainer.py has {lines} lines"
