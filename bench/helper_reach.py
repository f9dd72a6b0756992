"""How much helper code a reader of each notebook meets: a table.

    python bench/helper_reach.py [--package helpers] [--json FILE]

For every notebook, the helper definitions its code cells name (`export.merge_and_save`, or a name
imported `from helpers.x import y`), then everything those definitions name in turn (function and
class bodies, followed through the package: the whole call closure). A reached definition counts its
lines (a class whole); module-level statements are not counted. Also: lines per package folder, the
largest modules, and how many top-level definitions some notebook reaches directly.
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Package:
    """Every module of `root` (a package folder): its top-level definitions and what names what."""

    def __init__(self, root: Path):
        self.root, self.name = root, root.name
        self.modules = {}  # dotted name -> ast.Module
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            dotted = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.modules[dotted] = ast.parse(path.read_text(encoding="utf-8"))
        self.lines = {m: len(path.read_text(encoding="utf-8").splitlines())
                      for m, path in ((m, self._path(m)) for m in self.modules)}
        self.defs = {}  # (module, name) -> node
        for module, tree in self.modules.items():
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.defs[(module, node.name)] = node

    def _path(self, module: str) -> Path:
        rel = Path(*module.split("."))
        file = self.root.parent / rel.with_suffix(".py")
        return file if file.exists() else self.root.parent / rel / "__init__.py"

    def aliases(self, tree: ast.AST, module: str | None) -> tuple[dict, dict]:
        """(name -> module it stands for, name -> (module, definition)) from every import in `tree`."""
        modules, names = {}, {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level and module:  # relative import
                    base = ".".join(module.split(".")[:-node.level] + [node.module])
                if not base.split(".")[0] == self.name:
                    continue
                for a in node.names:
                    target = f"{base}.{a.name}"
                    if target in self.modules:
                        modules[a.asname or a.name] = target
                    elif (base, a.name) in self.defs:
                        names[a.asname or a.name] = (base, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == self.name and a.name in self.modules and a.asname:
                        modules[a.asname] = a.name
        return modules, names

    def named(self, tree: ast.AST, module: str | None) -> set:
        """The package's definitions that `tree` names."""
        modules, names = self.aliases(tree, module)
        if module is not None:
            modules = {**self.aliases(self.modules[module], module)[0], **modules}
            names = {**self.aliases(self.modules[module], module)[1], **names}
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                key = (modules[node.value.id], node.attr)
                if key in self.defs:
                    found.add(key)
            elif isinstance(node, ast.Name):
                if node.id in names:
                    found.add(names[node.id])
                elif module is not None and (module, node.id) in self.defs:
                    found.add((module, node.id))
        return found

    def closure(self, start: set) -> set:
        seen, todo = set(), list(start)
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            todo.extend(self.named(self.defs[key], key[0]) - seen)
        return seen

    def size(self, keys: set) -> int:
        return sum(self.defs[k].end_lineno - self.defs[k].lineno + 1
                   + len(getattr(self.defs[k], "decorator_list", [])) for k in keys)


def notebook_code(path: Path) -> ast.Module:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return ast.parse(source)


def measure(package: str = "helpers") -> dict:
    pkg = Package(REPO / package)
    reach, direct = {}, set()
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        named = pkg.named(notebook_code(nb), None)
        direct |= named
        reached = pkg.closure(named)
        reach[nb.stem] = {"lines": pkg.size(reached), "modules": len({m for m, _ in reached}),
                          "definitions": len(reached)}
    folders = {}
    for module, lines in pkg.lines.items():
        folder = str(pkg._path(module).parent.relative_to(REPO))
        folders[folder] = folders.get(folder, 0) + lines
    largest = sorted(pkg.lines.items(), key=lambda kv: -kv[1])[:8]
    return {"package": package, "lines": sum(pkg.lines.values()), "modules": len(pkg.modules),
            "folders": folders, "top_level_definitions": len(pkg.defs), "named_by_a_notebook": len(direct),
            "reach": reach, "largest": dict(largest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="helpers")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    m = measure(args.package)
    print(f"{m['package']}: {m['lines']:,} lines in {m['modules']} modules; {m['named_by_a_notebook']} of "
          f"{m['top_level_definitions']} top-level definitions named by a notebook\n")
    print("| folder | lines |\n| --- | --- |")
    for folder, lines in sorted(m["folders"].items()):
        print(f"| {folder} | {lines:,} |")
    print("\n| notebook | helper lines reached | modules | definitions |\n| --- | --- | --- | --- |")
    for nb, r in m["reach"].items():
        print(f"| {nb} | {r['lines']:,} | {r['modules']} | {r['definitions']} |")
    print("\n| largest modules | lines |\n| --- | --- |")
    for module, lines in m["largest"].items():
        print(f"| {module} | {lines} |")
    if args.json:
        args.json.write_text(json.dumps(m, indent=2) + "\n")


if __name__ == "__main__":
    main()
