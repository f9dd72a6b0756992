"""Re-execute the committed notebooks in place, in order, with their own default parameters.

    make notebooks        (WORKBOOK_RUN_DIR keeps the run folder out of runs/lab)
    WORKBOOK_RUN_DIR=runs/notebooks python -m tools.refresh_outputs 07 08   (only these, on the
                          run folder that an earlier refresh left)

The stored outputs are what nbval compares (`# NBVAL_CHECK_OUTPUT` cells) and what readers see on
GitHub before running anything, so they must come from the default config.
"""
from __future__ import annotations

import sys
import time

from tools.run import NOTEBOOK_DIR, select


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
        nbformat.write(nb, path)
        print(f"ok ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
