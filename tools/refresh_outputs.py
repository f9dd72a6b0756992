"""Re-execute the committed notebooks in place, in order, with their own default parameters.

    make notebooks        (WORKBOOK_RUN_DIR keeps the run folder out of runs/lab)
    WORKBOOK_RUN_DIR=runs/notebooks python -m tools.refresh_outputs 07 08   (only these, on the
                          run folder that an earlier refresh left)

The stored outputs are what nbval compares (`# NBVAL_CHECK_OUTPUT` cells) and what readers see on
GitHub before running anything, so they must come from the default config and from the code as it is:
each notebook keeps in its metadata (`workbook.code_hash`) a digest of the code it ran, its own cells
and the `helpers` package, which tests/test_lessons.py recomputes.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from helpers import rundir
from tools.run import NOTEBOOK_DIR, select


def code_hash(path: Path) -> str:
    """A digest of what running `path` executes: its code cells, and every module of `helpers`."""
    h = hashlib.sha256()
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    for source in ("".join(c["source"]) for c in cells if c["cell_type"] == "code"):
        h.update(source.encode() + b"\0")
    for module in sorted((rundir.REPO_ROOT / "helpers").rglob("*.py")):
        h.update(str(module.relative_to(rundir.REPO_ROOT)).encode() + b"\0" + module.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    for path in select(sys.argv[1:] if argv is None else argv):
        start = time.perf_counter()
        print(f"{path.name} ...", end=" ", flush=True)
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1800, kernel_name="python3", extra_arguments=["--log-level=ERROR"],
                       resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
        for cell in nb.cells:  # execution timestamps only make diffs noisy
            cell.get("metadata", {}).pop("execution", None)
        nb.metadata.setdefault("workbook", {})["code_hash"] = code_hash(path)
        nbformat.write(nb, path)
        print(f"ok ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
