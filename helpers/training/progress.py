"""Where a long step is, for whoever watches from outside the notebook (the runner prints it).

A notebook's step writes `progress.json` into the run folder now and then (at most every few
seconds): what it is doing, how far along, and an estimate of the time left. `python -m tools.run`
reads it while the notebook runs, so a batch run of a 10-minute training is not silent.
The run folder comes from the environment variable WORKBOOK_PROGRESS, which the runner sets; without
it (JupyterLab, tests) nothing is written.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import rundir

ENV = "WORKBOOK_PROGRESS"
EVERY_S = 2.0
_last = 0.0


def path() -> Path | None:
    folder = os.environ.get(ENV)
    return Path(folder) / "progress.json" if folder else None


def note(force: bool = False, **fields) -> None:
    """Record the current position (e.g. rows=..., of=..., or step=..., of=..., loss=..., left_s=...)."""
    global _last
    target = path()
    now = time.time()
    if target is None or (not force and now - _last < EVERY_S):
        return
    _last = now
    rundir.write_json(target, {**fields, "time": now})
