"""Values a learner changed inside a shown call (02's get_peft_model, 04's SFTConfig), so that step 5,
which builds the model and the trainer again from the run folder, trains with them too.

A step saves what its call built beside what the parameters asked (`record`); the keys that differ
are the cell's edits, kept in `edits.json` under the step's number, in parameter names. Step 5 applies
them over the parameters (`applied`). A value that only the parameters cell may set (another step
uses it too) is refused, with where to set it instead."""
from __future__ import annotations

import json
from pathlib import Path

from helpers.machinery import rundir
from helpers.machinery.errors import ParameterError

FILE = "edits.json"


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def record(run_dir, step: str, call: str, built: dict, asked: dict, refused: dict[str, str]) -> dict:
    """The keys where `built` (what the cell's call holds) differs from `asked` (what the parameters
    gave it), saved in run_dir/edits.json under `step` (replacing that step's earlier edits) and said in
    the cell. A key in `refused` raises ParameterError with its message instead: nothing is saved then."""
    edits = {k: built[k] for k in asked if k in built and not _same(built[k], asked[k])}
    for key in edits:
        if key in refused:
            raise ParameterError(f"{call}({key}={edits[key]!r}) in this cell, but the parameters give "
                                 f"{asked[key]!r}: {refused[key]}")
    path = Path(rundir.resolve(run_dir)) / FILE
    saved = rundir.read_json(path, default={})
    saved[step] = {k: {"value": v, "parameters": asked[k], "call": call} for k, v in edits.items()}
    rundir.write_json(path, json.loads(json.dumps(saved, default=str)))
    if edits:
        print(f"Step 5 trains with what this cell built: {', '.join(f'{k}={v!r}' for k, v in edits.items())} "
              f"(the parameters cell says {', '.join(f'{k}={asked[k]!r}' for k in edits)}).")
    return edits


def saved(run_dir) -> dict:
    """{parameter: {"value", "parameters", "call"}} over every step that recorded edits."""
    found = {}
    for edits in rundir.read_json(Path(run_dir) / FILE, default={}).values():
        found.update(edits)
    return found


def applied(params: dict) -> dict:
    """`params` with the edits of earlier steps' calls over them (what step 5 trains with)."""
    return {**params, **{k: e["value"] for k, e in saved(params["run_dir"]).items()}}

