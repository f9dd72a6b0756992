"""Run a notebook's code cells in this process, as papermill runs them in a kernel: the parameters cell,
then the given values over it (papermill's injected cell), then the rest in order.

    namespace = cells.run("05", {"run_dir": "runs/x", "max_steps": 8})

What a notebook shows is what runs: `tools.train` runs 05's cells this way in each of several processes
(one per GPU), and the tests run the notebooks' cells this way to check what they build, without a
kernel to start. Cell outputs are not kept; an error carries a note naming the notebook and the cell.
"""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def notebook(name: str) -> Path:
    """`05` or `05_train_and_save` -> the notebook's path."""
    found = sorted(NOTEBOOK_DIR.glob(f"{name[:2]}_*.ipynb"))
    if len(found) != 1:
        raise FileNotFoundError(f"no notebook {name!r} in {NOTEBOOK_DIR}")
    return found[0]


def code_cells(path: Path) -> list[tuple[str, set]]:
    """(source, tags) of every code cell, in order."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return [("".join(c["source"]), set(c.get("metadata", {}).get("tags", []))) for c in cells if c["cell_type"] == "code"]


def run(name: str | Path, values: dict, namespace: dict | None = None, after_cell=None) -> dict:
    """Execute notebook `name`'s code cells in `namespace` (a new one by default) with `values` injected
    after its parameters cell; `after_cell(namespace)` is called after each cell. Returns the namespace."""
    path = name if isinstance(name, Path) else notebook(name)
    namespace = {"__name__": "__main__", "display": lambda *objects, **kwargs: None} if namespace is None else namespace
    for number, (source, tags) in enumerate(code_cells(path), start=1):
        try:
            exec(compile(source, f"{path.name}, code cell {number}", "exec"), namespace)
        except BaseException as e:
            e.add_note(f"in {path.name}, code cell {number}: {source.strip().splitlines()[0][:80]}")
            raise
        if "parameters" in tags:
            namespace.update(values)
        if after_cell is not None:
            after_cell(namespace)
    return namespace
