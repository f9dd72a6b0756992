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
FRESH = "To train from the start in this run folder (its checkpoints are deleted), set resume False; or use another run_dir."


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
    """The checkpoint to continue from, as `resume` asks: `auto` the newest complete one of an unfinished
    training, True the same but it must exist, False none. A ParameterError, before anything is changed,
    where continuing would mix two trainings: an unfinished one of other inputs, or a finished one."""
    from helpers.params import ParameterError

    record = rundir.read_json(Path(checkpoints) / "run.json", default={})
    newest = whole(checkpoints)
    if mode is False or (newest is None and mode == "auto"):
        return None
    if newest is None:
        raise ParameterError(f"Parameter 'resume' = True, but {checkpoints} holds no complete checkpoint "
                             f"to continue from. Use resume 'auto' or False.")
    if record.get("finished"):
        if mode is True:
            raise ParameterError(f"Parameter 'resume' = True, but the training in {checkpoints} finished "
                                 f"({newest.name}): there is nothing to continue. {FRESH}")
        return None
    changed = changes(record.get("trains") or {}, trains)
    if changed:
        raise ParameterError(f"Parameter 'resume' = {mode!r}: {checkpoints} holds an unfinished training "
                             f"({newest.name}) of other inputs, and continuing it would mix two trainings. "
                             f"Changed: {'; '.join(changed)}. {FRESH}")
    return newest


def whole(checkpoints) -> Path | None:
    """The newest complete checkpoint whose files are whole (one cut short on disk is passed over, saying so)."""
    for path in reversed(complete(checkpoints)):
        if problem := rundir.damage(path):
            print(f"{path.name} cannot be resumed from: {problem}. Trying the checkpoint before it.")
            continue
        return path
    return None


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two `what_trains` records, in words (at most eight)."""
    found = []
    for part, name in (("sft_config", "04's SFTConfig"), ("lora", "02's LoRA config")):
        a, b = old.get(part) or {}, new.get(part) or {}
        found += [f"{name} {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old.get("lora_weights") != new.get("lora_weights"):
        found.append("02's initial LoRA weights (lora/adapter_model.safetensors)")
    if old.get("rows") != new.get("rows"):
        found.append("03's training rows (data/train.arrow)")
    return found[:8]


def start(checkpoints: Path, resuming: bool, trains: dict, params: dict) -> None:
    """Before training: a fresh training clears old checkpoints (saying so), then records what it trains."""
    checkpoints = Path(checkpoints)
    if not resuming and complete(checkpoints):
        old = rundir.read_json(checkpoints / "run.json", default={})
        changed = changes(old.get("trains") or {}, trains)
        print(f"Training from the start: the {'finished' if old.get('finished') else 'earlier'} training's "
              f"checkpoints ({', '.join(p.name for p in complete(checkpoints))}) are deleted"
              f"{'; changed since: ' + '; '.join(changed) if changed else ''}.")
    if not resuming:
        shutil.rmtree(checkpoints, ignore_errors=True)
    data = rundir.find_file(params.get("dataset", ""))  # its content, which the runner compares before resuming
    rundir.write_json(checkpoints / "run.json", {"trains": trains, "finished": False,
                                                 "dataset file": fingerprint(data) if data and data.is_file() else None})


def fingerprint(path: Path) -> dict:
    return {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns, "digest": digest(path)}


def finish(checkpoints: Path) -> None:
    path = Path(checkpoints) / "run.json"
    rundir.write_json(path, {**rundir.read_json(path, default={}), "finished": True})


def callback(counts):
    """A TrainerCallback that marks each saved checkpoint complete, with what `counts()` says this process
    has trained so far (its tokens and seconds: a resumed run adds them to its own, see `counted`), and
    turns SIGINT/SIGTERM into 'save a checkpoint at the end of this step, then stop'."""
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
                # each process its own file (rundir.write_json writes on the main process only)
                (path / f"counts-{args.process_index}.json").write_text(json.dumps(counts()))
                if state.is_world_process_zero:
                    (path / MARKER).write_text(f"step {state.global_step}\n")
                self.saved_at = path
            return control

    return SafeStop()


def counted(checkpoint, process_index: int = 0) -> dict:
    """What this process had trained when `checkpoint` was saved: {"train_tokens", "train_runtime_s"}
    (zeros without a checkpoint)."""
    zero = {"train_tokens": 0, "train_runtime_s": 0.0}
    if checkpoint is None:
        return zero
    return {**zero, **rundir.read_json(Path(checkpoint) / f"counts-{process_index}.json", default={})}


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
