"""The imports point one way (function-level imports included: an arrow hidden in a function is still
an arrow):
- no module imports, directly or through others, a module that imports it back;
- the base modules (`errors`, `params`, `rundir`, `show`) import no domain;
- a domain imports the base, itself and the domains before it only, in the order of the lessons: the
  model (01-02), the data (03), the held-out measures (05-06, 08), the training (04-05), the export (07);
- nothing under `helpers` imports the command-line tools (`tools`) or the test fixtures (`fixtures`)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("helpers", "tools", "fixtures")
DOMAINS = {"model": 1, "data": 2, "evaluation": 3, "training": 4, "export": 5}
BASE = {"errors", "params", "rundir", "show"}  # what every domain rests on


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
            here, there = module.split(".")[1:2], dep.split(".")[1:2]
            if module.startswith("helpers") and dep.split(".")[0] in ("tools", "fixtures"):
                wrong.append(f"{module} -> {dep} (the package imports no tool or fixture)")
            elif not (module.startswith("helpers.") and dep.startswith("helpers.")):
                continue
            elif here[0] in BASE and there[0] not in BASE:
                wrong.append(f"{module} -> {dep} (a base module imports no domain)")
            elif here[0] in DOMAINS and there[0] in DOMAINS and DOMAINS[there[0]] > DOMAINS[here[0]]:
                wrong.append(f"{module} -> {dep} (a domain imports the domains before it only)")
    return wrong


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_rules_refuse_arrows_the_wrong_way():
    graph = {"helpers.data.rows": {"helpers.training.loop", "helpers.model.loading", "helpers.rundir"},
             "helpers.rundir": {"helpers.params", "helpers.data.split"}, "helpers.evaluation.loss": {"helpers.data.split"},
             "helpers.export.merge": {"tools.run"}, "helpers.training.loop": {"helpers.data.split", "helpers.rundir"},
             "tools.run": {"helpers.training.loop", "fixtures.synthetic"}}
    assert wrong_way(graph) == [
        "helpers.data.rows -> helpers.training.loop (a domain imports the domains before it only)",
        "helpers.export.merge -> tools.run (the package imports no tool or fixture)",
        "helpers.rundir -> helpers.data.split (a base module imports no domain)"]


def test_the_graph_sees_the_layout():
    graph = import_graph()
    assert {"helpers.params", "helpers.checks", "helpers.model.loading", "tools.run",
            "fixtures.synthetic"} <= graph.keys()
    assert "helpers.rundir" in graph["helpers.params"]
    assert "tools.cells" in graph["tools.train"] and "helpers.params" in graph["tools.run"]


def test_imports_point_one_way():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert wrong_way(graph) == []
