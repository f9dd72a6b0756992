"""The helpers' imports point one way: no module imports, directly or through others, a module that
imports it back (function-level imports included: a cycle hidden in a function is still a cycle)."""
import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in HELPERS.glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((HELPERS / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "helpers":
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [node, dep] if dep in path else path + [node, dep]
            if dep not in state and (cycle := visit(dep, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_helpers_import_each_other_one_way():
    graph = import_graph()
    assert {"params", "checks", "model", "errors"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(f"helpers.{m}" for m in cycle)
