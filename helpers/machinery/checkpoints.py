"""Crash-safe training: checkpoints that are known to be complete, resuming from the newest one, and a
checkpoint saved on SIGINT/SIGTERM before the process stops.

The trainer writes `checkpoints/checkpoint-N/` (adapter, optimizer, scheduler, RNG states,
trainer_state.json) every `save_steps`. A process killed while writing one leaves a folder that
looks like a checkpoint but is not; so after each save this module adds a `COMPLETE` marker, and
resuming only considers folders that have it. `checkpoints/run.json` records the training
parameters the checkpoints belong to, and whether that training finished.
"""
from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

from helpers.machinery import rundir

MARKER = "COMPLETE"
# Parameters that change what a checkpoint means: resuming across a change would mix two trainings.
TRAINING_KEYS = ["model_name", "max_seq_length", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                 "use_rslora", "dataset", "dataset_format", "max_rows", "eval_fraction", "train_on_responses_only",
                 "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "max_steps",
                 "learning_rate", "weight_decay", "optim", "lr_scheduler_type", "seed", "packing"]


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the training after saving a checkpoint."""


def folder(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def complete(run_dir) -> list[Path]:
    """Checkpoint folders with their marker, oldest first."""
    found = []
    for path in folder(run_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / MARKER).exists():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def resume_from(params: dict) -> Path | None:
    """The checkpoint to continue from, as `resume` asks:
    `auto`: the newest complete one if an unfinished training with the same parameters left it;
    True: the newest complete one, which must exist; False: none (older checkpoints are removed)."""
    run_dir, mode = params["run_dir"], params["resume"]
    record = rundir.read_json(folder(run_dir) / "run.json", default={})
    same = record.get("params") == {k: params.get(k) for k in TRAINING_KEYS}
    newest = (complete(run_dir) or [None])[-1]
    if mode is True:
        if newest is None:
            from helpers.machinery.errors import ParameterError

            raise ParameterError(f"Parameter 'resume' = True, but {folder(run_dir)} holds no complete checkpoint "
                                 f"to continue from. Use resume 'auto' or False.")
        return newest
    if mode == "auto" and newest is not None and same and not record.get("finished"):
        return newest
    return None


def start(params: dict, resuming: bool) -> None:
    """Before training: a fresh training clears old checkpoints, then records what it trains."""
    if not resuming:
        shutil.rmtree(folder(params["run_dir"]), ignore_errors=True)
    rundir.write_json(folder(params["run_dir"]) / "run.json",
                      {"params": {k: params.get(k) for k in TRAINING_KEYS}, "finished": False})


def finish(run_dir) -> None:
    path = folder(run_dir) / "run.json"
    rundir.write_json(path, {**rundir.read_json(path, default={}), "finished": True})


def callback():
    """A TrainerCallback that marks each saved checkpoint complete and turns SIGINT/SIGTERM into
    'save a checkpoint at the end of this step, then stop'."""
    from transformers import TrainerCallback

    class SafeStop(TrainerCallback):
        def __init__(self):
            self.signal = None
            self.saved_at = None

        def handler(self, signum, frame):
            self.signal = signal.Signals(signum).name

        def on_step_end(self, args, state, control, **kwargs):
            if self.signal:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                (path / MARKER).write_text(f"step {state.global_step}\n")
                self.saved_at = path
            return control

    return SafeStop()


class signals_to(object):
    """Within the block, SIGINT and SIGTERM call `stopper.handler` instead of killing the process."""

    def __init__(self, stopper):
        self.stopper = stopper
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.stopper.handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        return False
