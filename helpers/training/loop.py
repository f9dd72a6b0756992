"""Step 5's training, around the post's `trainer.train()`: what it measures (time, tokens/s, memory),
crash safety (resuming from the newest complete checkpoint; Ctrl-C and SIGTERM save one first),
progress for the runner, and a guard against batches with nothing to learn. (Under several processes,
tools.train adds up what each trained.)

    with loop.measured(trainer, P) as m:
        trainer.train(resume_from_checkpoint=m.resume_from)
"""
from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from helpers.training import checkpoints, progress


@contextlib.contextmanager
def measured(trainer, params: dict):
    """Around `trainer.train(resume_from_checkpoint=m.resume_from)`: the figures people quote (time,
    tokens/s, peak memory) in `m.stats`, progress for the runner, a guard against batches with nothing
    to learn, and crash safety: `m.resume_from` is the newest complete checkpoint of this same training
    as `resume` asks (checkpoints.what_trains), and SIGINT/SIGTERM save a checkpoint, then raise
    TrainingInterrupted."""
    guard(trainer)
    folder, run_dir = Path(trainer.args.output_dir), Path(params["run_dir"])
    trains = checkpoints.what_trains(run_dir)
    resume = checkpoints.resume_from(folder, params["resume"], trains)
    trainer.accelerator.wait_for_everyone()  # every process has chosen before the main one clears old ones
    if trainer.is_world_process_zero():
        checkpoints.start(folder, resuming=resume is not None, trains=trains, params=params)
    trainer.accelerator.wait_for_everyone()
    if logs := tensorboard_into(trainer, run_dir):
        from helpers.model.loading import shown

        print(f"TensorBoard logs: {shown(str(logs))} (watch: tensorboard --logdir {shown(str(logs))})")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    count = TokenCount(trainer)
    # a resumed training counts what it trained before the checkpoint too: the figures are the whole run's
    earlier = checkpoints.counted(resume, trainer.args.process_index)
    start = time.perf_counter()
    stopper = checkpoints.callback(lambda: {"train_tokens": earlier["train_tokens"] + count.tokens,
                                            "train_runtime_s": earlier["train_runtime_s"] + time.perf_counter() - start})
    trainer.add_callback(stopper)
    # what the cell that trains gets: where to resume from, and afterwards the figures
    m = SimpleNamespace(resume_from=str(resume) if resume else None, stats={})
    with checkpoints.signals_to(stopper):
        yield m
    seconds = earlier["train_runtime_s"] + time.perf_counter() - start
    tokens = earlier["train_tokens"] + count.tokens
    trainer.remove_callback(stopper)
    if stopper.signal:
        raise checkpoints.TrainingInterrupted(
            f"{stopper.signal} at step {trainer.state.global_step}: checkpoint saved in {stopper.saved_at}. "
            f"Run the training again with this run_dir (resume 'auto') to continue from there.")
    if trainer.is_world_process_zero():
        checkpoints.finish(folder)
    _, losses = loss_history(trainer.state.log_history)
    m.stats = {"train_loss": sum(losses) / len(losses) if losses else math.nan,
               "final_step_loss": losses[-1] if losses else math.nan,
               "train_runtime_s": seconds, "train_steps": int(trainer.state.global_step), "train_tokens": tokens,
               "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
               "tokens_per_s_steady": count.steady_rate(), "resumed_from": m.resume_from, **peak_memory()}


def loss_history(log_history) -> tuple[list[int], list[float]]:
    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


def peak_memory() -> dict:
    """Peak memory: reserved GPU memory on CUDA (what `nvidia-smi` sees), else the process's peak RSS."""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        peak = torch.cuda.max_memory_reserved()
        return {"peak_memory_gib": peak / 2**30, "peak_memory_kind": "cuda_max_memory_reserved",
                "gpu_name": torch.cuda.get_device_name(0), "gpu_memory_gib": total / 2**30,
                "peak_memory_share": peak / total}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    return {"peak_memory_gib": rss_kib / 2**20, "peak_memory_kind": "process_peak_rss"}


class TokenCount:
    """Counts the non-padding tokens that reach `trainer.training_step` (TRL logs `num_tokens`, but
    unsloth's trainer does not, and a collator-side count would include the batch the data loader
    fetches ahead)."""

    def __init__(self, trainer):
        self.tokens = 0
        self.clock: list[tuple[float, int]] = []  # (time, tokens so far) after each micro-batch
        step = trainer.training_step

        def counted(model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            # padding-free / packed batches carry no attention mask: every token is real
            self.tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            out = step(model, inputs, *args, **kwargs)
            self.clock.append((time.perf_counter(), self.tokens))
            return out

        trainer.training_step = counted

    def steady_rate(self, skip: float = 0.2) -> float:
        """Tokens/s after the first `skip` share of the micro-batches (kernel compilation, caches and
        allocator warm-up land there), for comparing machines and GPU counts."""
        if len(self.clock) < 5:
            return math.nan
        (t0, n0), (t1, n1) = self.clock[int(len(self.clock) * skip)], self.clock[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else math.nan


def tensorboard_into(trainer, run_dir) -> Path | None:
    """With report_to='tensorboard': the logs go to run_dir/tensorboard, where the run's other results are
    (transformers' default is output_dir/runs/<time>_<host>, inside checkpoints/). Returns the folder."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is None:
            callback.logging_dir = str(Path(run_dir) / "tensorboard")
            return Path(callback.logging_dir)
    return None


def guard(trainer):
    """Progress for the runner, and a collator that stops on a batch with nothing to learn (once)."""
    if not isinstance(trainer.data_collator, LabelGuard):
        trainer.data_collator = LabelGuard(trainer.data_collator)
        trainer.add_callback(progress_callback())
    return trainer


def progress_callback():
    """A TrainerCallback that writes step N of M, the loss and the time left, for the runner to show
    while 05 trains (helpers.training.progress)."""
    from transformers import TrainerCallback


    class Progress(TrainerCallback):
        start = first_step = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" not in (logs or {}):  # a held-out loss (helpers.training.evaluating), not a step
                return
            if self.start is None:
                self.start, self.first_step = time.perf_counter(), state.global_step
            done = state.global_step - self.first_step
            elapsed = time.perf_counter() - self.start
            left = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
            progress.note(force=state.global_step == state.max_steps, step=state.global_step,
                          of=state.max_steps, loss=(logs or {}).get("loss"), left_s=left)

    return Progress()


class LabelGuard:
    """Wraps the data collator: a batch in which every label is masked would train on nothing (and
    make a NaN loss), so it stops the run with a message instead."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate(examples)
        labels = batch.get("labels")
        if labels is not None and bool((labels == -100).all()):
            raise ValueError(f"A training batch of {len(examples)} rows has every label masked (-100): nothing to "
                             f"learn from. With train_on_responses_only, check that the answers fit in "
                             f"max_seq_length (see 03_dataset's report).")
        return batch

    def __getattr__(self, name):  # the trainer and unsloth read attributes of the collator
        if name == "collate":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.collate, name)
