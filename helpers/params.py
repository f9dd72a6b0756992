"""Every parameter of the workbook (helpers/parameters.yaml: its default, the step that owns it, its
help and the values it takes), how each value is checked, and how a notebook settles its values.

Each notebook's parameters cell holds the parameters of its step. When a notebook starts, `settle()`
merges, in order: the defaults, what earlier runs saved in the run folder (`params.json`), and the
parameters the notebook holds (its own cell, plus any that papermill injected); then it checks them and
saves the result. What earlier steps built, a step reads from the run folder (01's model, 02's LoRA,
03's rows, 04's SFTConfig), not from the parameters.
"""
from __future__ import annotations

import difflib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import rundir
from helpers.errors import ParameterError


SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    step: str  # the notebook that owns it
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


def _table() -> list[Param]:
    import yaml

    table = yaml.safe_load((Path(__file__).parent / "parameters.yaml").read_text(encoding="utf-8"))
    return [Param(name, **{**entry, "choices": tuple(entry["choices"]) if "choices" in entry else None})
            for name, entry in table.items()]


PARAMS: list[Param] = _table()
BY_NAME = {p.name: p for p in PARAMS}
DEFAULTS = {p.name: p.default for p in PARAMS}
STEPS = {"01": "01_load_model", "02": "02_lora", "03": "03_dataset", "04": "04_trainer",
         "05": "05_train_and_save", "06": "06_evaluate", "07": "07_export", "08": "08_chat"}


def owned_by(step: str) -> list[str]:
    return [p.name for p in PARAMS if p.step == step]


def check_names(names) -> None:
    """Unknown names are an error, with the closest known name suggested."""
    for name in names:
        if name not in BY_NAME:
            near = difflib.get_close_matches(name, BY_NAME, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ParameterError(f"Unknown parameter '{name}'.{hint} Known parameters: "
                                 f"{', '.join(sorted(BY_NAME))}.")


def _expected_type(default):
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, list):
        return (list,)
    return None  # None-defaulted parameters take several types


def check_value(name: str, value: Any) -> None:
    p = BY_NAME[name]
    if p.choices is not None:
        # compare type too, so that 1 is not taken for True
        if not any(value == c and type(value) is type(c) for c in p.choices):
            raise ParameterError(f"Parameter '{name}' = {value!r} is not allowed; expected one of "
                                 f"{', '.join(repr(c) for c in p.choices)}.")
        return
    types = _expected_type(p.default)
    if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise ParameterError(f"Parameter '{name}' = {value!r} has type {type(value).__name__}; expected "
                             f"{' or '.join(t.__name__ for t in types)}.")
    if name == "rows_per_pass" and value is not None and value != "auto" and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ParameterError(f"Parameter 'rows_per_pass' = {value!r}; expected None (the post's "
                             f"per_device_train_batch_size rows a pass), 'auto' or a whole number >= 1.")
    if name == "max_rows" and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                      or value < 1):
        raise ParameterError(f"Parameter 'max_rows' = {value!r}; expected None or a whole number >= 1.")
    if name == "target_modules" and (not value or not all(isinstance(m, str) and m for m in value)):
        raise ParameterError(f"Parameter 'target_modules' = {value!r}; expected a non-empty list of "
                             f"module names such as {SEVEN_PROJECTIONS}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"Parameter '{name}' = {value!r} is not a finite number (YAML reads .nan, .inf and "
                             f"1e999 so); expected a number such as {p.default!r}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if p.minimum is not None and value < p.minimum:
            raise ParameterError(f"Parameter '{name}' = {value!r} is below its minimum {p.minimum}.")
        if p.maximum is not None and value > p.maximum:
            raise ParameterError(f"Parameter '{name}' = {value!r} is above its maximum {p.maximum}.")


def check(params: dict) -> dict:
    check_names(params)
    for name, value in params.items():
        check_value(name, value)
    return params


def settle(run_dir: str | Path, namespace: dict) -> dict:
    """Merge defaults < saved run-folder params < this notebook's parameters; check; save; return all.

    `namespace` is the notebook's `globals()`. It holds this step's own parameters (its parameters
    cell) and, when papermill passed a whole config, other steps' parameters too (papermill injects
    every value it is given). Each value is checked alone here; the checks of several values together
    run in the step that uses them (helpers.checks). A step uses its own parameters; what earlier steps
    built it reads from the run folder (01's model, 02's LoRA, 03's rows, 04's SFTConfig).
    """
    global _SETTLED_AT
    _SETTLED_AT = time.perf_counter()
    folder = rundir.resolve(run_dir)
    saved = rundir.read_json(folder / "params.json", default={})
    given = {name: namespace[name] for name in BY_NAME if name in namespace and name != "run_dir"}
    merged = {**DEFAULTS, **{k: v for k, v in saved.items() if k in BY_NAME}, **given}
    merged["run_dir"] = str(folder)
    check(merged)
    if merged != saved:
        rundir.write_json(folder / "params.json", merged)
    return merged


_SETTLED_AT = None


def elapsed():
    """How long this notebook has run since its `settle` call, and on what, in a sentence: the time that
    each notebook's "You should see" points to, measured rather than stated."""
    import torch

    from helpers.show import Sentences

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"a {os.cpu_count()}-core CPU"
    if _SETTLED_AT is None:
        return Sentences("Not timed: `params.settle` did not run in this kernel.")
    return Sentences(f"This notebook took **{time.perf_counter() - _SETTLED_AT:.1f} s** on {where}, from "
                     f"`params.settle` to here.")
