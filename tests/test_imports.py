"""The imports point one way (function-level imports included: an arrow hidden in a function is still
an arrow):
- no module imports, directly or through others, a module that imports it back;
- `helpers.machinery` (what the steps rest on) imports no step module;
- a step module imports the machinery, the shared modules (`params`, `generate`) and earlier steps
  only: 05 may use what 01-04 built, 03 never reaches into 05;
- nothing under `helpers` imports the command-line tools (`tools`) or the test fixtures (`fixtures`)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("helpers", "tools", "fixtures")
STEPS = {"model": 1, "lora": 2, "data": 3, "trainer": 4, "train": 5, "evaluate": 6, "export": 7, "chat": 8}
SHARED = {"params", "generate"}  # used by several steps; they import the machinery alone


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in files:  # `from helpers.x import name` -> helpers.x
                    target = target.rpartition(".")[0]
                if target and target.split(".")[0] in PACKAGES and files[target].name != "__init__.py":
                    deps.add(target)
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


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow that breaks the rules above, as 'a -> b (why)'."""
    wrong = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if module.startswith("helpers") and dep.split(".")[0] in ("tools", "fixtures"):
                wrong.append(f"{module} -> {dep} (the package imports no tool or fixture)")
            elif module.startswith("helpers.machinery") and not dep.startswith("helpers.machinery"):
                wrong.append(f"{module} -> {dep} (the machinery imports no step)")
            elif module.count(".") == 1 and module.startswith("helpers.") and dep.count(".") == 1 \
                    and dep.startswith("helpers."):
                here, there = module.split(".")[1], dep.split(".")[1]
                if here in SHARED and there not in SHARED:
                    wrong.append(f"{module} -> {dep} (a shared module imports no step)")
                elif here in STEPS and there in STEPS and STEPS[there] >= STEPS[here]:
                    wrong.append(f"{module} -> {dep} (a step imports earlier steps only)")
    return wrong


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_rules_refuse_arrows_the_wrong_way():
    graph = {"helpers.data": {"helpers.train", "helpers.model", "helpers.machinery.rundir"},
             "helpers.machinery.rundir": {"helpers.params"}, "helpers.generate": {"helpers.data"},
             "helpers.export": {"tools.run"}, "helpers.train": {"helpers.data", "helpers.machinery.rundir"},
             "tools.run": {"helpers.train", "fixtures.synthetic"}}
    assert wrong_way(graph) == [
        "helpers.data -> helpers.train (a step imports earlier steps only)",
        "helpers.export -> tools.run (the package imports no tool or fixture)",
        "helpers.generate -> helpers.data (a shared module imports no step)",
        "helpers.machinery.rundir -> helpers.params (the machinery imports no step)"]


def test_the_graph_sees_the_layout():
    graph = import_graph()
    assert {"helpers.params", "helpers.machinery.checks", "helpers.model", "tools.run",
            "fixtures.synthetic"} <= graph.keys()
    assert "helpers.machinery.rundir" in graph["helpers.params"]
    assert "helpers.train" in graph["tools.train"] and "helpers.params" in graph["tools.run"]


def test_imports_point_one_way():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert wrong_way(graph) == []
