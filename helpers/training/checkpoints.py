"""Crash-safe training: checkpoints that are known to be complete, resuming from the newest one, and a
checkpoint saved on SIGINT/SIGTERM before the process stops.

The trainer writes `checkpoints/checkpoint-N/` (adapter, optimizer, scheduler, RNG states,
trainer_state.json) every `save_steps`. A process killed while writing one leaves a folder that
looks like a checkpoint but is not; so after each save this module adds a `COMPLETE` marker, and
resuming only considers folders that have it. `checkpoints/run.json` records what the checkpoints
belong to (`what_trains`: 04's SFTConfig, 02's LoRA, 03's rows), and whether that training finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import signal
from pathlib import Path

from helpers import rundir


MARKER = "COMPLETE"


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the training after saving a checkpoint."""


def folder(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def complete(checkpoints) -> list[Path]:
    """Checkpoint folders with their marker, oldest first (`checkpoints`: the folder, or a run folder)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.name.startswith("checkpoint") and (checkpoints / "checkpoints").is_dir():
        checkpoints = folder(checkpoints)
    found = []
    for path in checkpoints.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / MARKER).exists():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def what_trains(run_dir) -> dict:
    """What a checkpoint belongs to: 04's SFTConfig (its output folder aside), 02's LoRA (its config and a
    digest of its initial weights) and a digest of 03's training rows. Resuming across a change would
    mix two trainings."""
    run_dir = Path(run_dir)
    config = {k: v for k, v in json.loads((run_dir / "sft_config.json").read_text()).items() if k != "output_dir"}
    lora = json.loads((run_dir / "lora" / "adapter_config.json").read_text())
    if isinstance(lora.get("target_modules"), list):  # peft writes a set: its order changes from run to run
        lora["target_modules"] = sorted(lora["target_modules"])
    return {"sft_config": config, "lora": lora, "lora_weights": digest(run_dir / "lora" / "adapter_model.safetensors"),
            "rows": digest(run_dir / "data" / "train.arrow")}


def digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def resume_from(checkpoints: Path, mode, trains: dict) -> Path | None:
    """The checkpoint to continue from, as `resume` asks:
    `auto`: the newest complete one if an unfinished training of the same `trains` left it;
    True: the newest complete one, which must exist; False: none (older checkpoints are removed)."""
    record = rundir.read_json(Path(checkpoints) / "run.json", default={})
    newest = (complete(checkpoints) or [None])[-1]
    if mode is True:
        if newest is None:
            from helpers.params import ParameterError

            raise ParameterError(f"Parameter 'resume' = True, but {checkpoints} holds no complete checkpoint "
                                 f"to continue from. Use resume 'auto' or False.")
        return newest
    if mode == "auto" and newest is not None and record.get("trains") == trains and not record.get("finished"):
        return newest
    return None


def start(checkpoints: Path, resuming: bool, trains: dict) -> None:
    """Before training: a fresh training clears old checkpoints, then records what it trains."""
    if not resuming:
        shutil.rmtree(checkpoints, ignore_errors=True)
    rundir.write_json(Path(checkpoints) / "run.json", {"trains": trains, "finished": False})


def finish(checkpoints: Path) -> None:
    path = Path(checkpoints) / "run.json"
    rundir.write_json(path, {**rundir.read_json(path, default={}), "finished": True})


def callback():
    """A TrainerCallback that marks each saved checkpoint complete and turns SIGINT/SIGTERM into
    'save a checkpoint at the end of this step, then stop'."""
    from transformers import TrainerCallback

    class SafeStop(TrainerCallback):
        signal = saved_at = None

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


@contextlib.contextmanager
def signals_to(stopper):
    """Within the block, SIGINT and SIGTERM call `stopper.handler` instead of killing the process."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, stopper.handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
