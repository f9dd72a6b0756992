"""What step 5 shows and keeps of its training: what trains, the figures of the run, the loss curve, what
the numbers mean, the answers before and after, and the run's record (`metrics.json`, `log_history.json`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from helpers import rundir, show
from helpers.evaluation.loss import loss_record
from helpers.evaluation.questions import answers_table
from helpers.model.loading import shown
from helpers.show import Sentences
from helpers.training.evaluating import evaluations
from helpers.training.loop import loss_history


def summary(model, base, args, train, held_out, checkpointing):
    """What trains: the model and its LoRA, the rows, the steps and how a step's rows are grouped."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = [("backend", base.backend), ("model", shown(base.model_name)), ("device", base.record["device"]),
            ("trainable parameters", f"{trainable:,}"), ("training rows", len(train)), ("held-out rows", len(held_out)),
            ("optimizer steps", args.max_steps), ("learning rate", args.learning_rate),
            ("rows a pass x passes a step", f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}"),
            ("gradient checkpointing", checkpointing)]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def stats_table(stats: dict):
    rows = [("training time", f"{stats['train_runtime_s']:.1f} s"), ("optimizer steps", stats["train_steps"]),
            ("tokens trained on", stats["train_tokens"]), ("tokens / s", f"{stats['tokens_per_s']:.1f}")]
    if stats["peak_memory_kind"] == "cuda_max_memory_reserved":
        rows += [("GPU", stats["gpu_name"]),
                 ("peak reserved GPU memory", f"{stats['peak_memory_gib']:.2f} GiB"),
                 ("share of the card", f"{100 * stats['peak_memory_share']:.1f}% of {stats['gpu_memory_gib']:.1f} GiB")]
    else:
        rows += [("peak process memory (RSS)", f"{stats['peak_memory_gib']:.2f} GiB")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def explain(stats: dict, args, before: float | None, after: float | None, train_rows: int):
    """What the training's numbers mean, in sentences: how much of the data it saw (`args`: the SFTConfig
    that trained), and how the last training loss and the held-out loss relate."""
    rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    seen = rows_per_step * stats["train_steps"]
    text = (f"{stats['train_steps']} optimizer steps of {rows_per_step} rows each: "
            f"**{seen:,} rows, {seen / train_rows:.2f} of an epoch** (one pass over the {train_rows:,} "
            f"training rows)")
    text += (": most rows were never seen, so what the model learned is the data's common shape, not "
             "the rows themselves." if seen < train_rows else ".")
    if before is not None and after is not None:
        last = stats["final_step_loss"]
        moved = "fell" if after < before else "did not fall: it went" if after > before else "stayed the same, going"
        text += (f"\n\nThe held-out loss {moved} from **{before:.3f} to {after:.3f}** nats per token. The last "
                 f"step's training loss was {last:.3f}, on the {rows_per_step} rows of that one "
                 f"step, with the weights still moving; the held-out figure uses the final weights on the "
                 f"held-out rows.")
        if after < last:
            text += (" That the held-out loss is the lower one is no sign of a bug: the final weights are "
                     "better than those of the last step's forward pass, and a single step's rows vary.")
        if after > before:
            text += (" Training made the model worse on rows it did not train on: a learning rate too high for "
                     "this model (the loss curve above jumps) or too many steps on too few rows (it overfits).")
    return Sentences(text)


def plot_loss(log_history, before: float | None, after: float | None, kept: int | None = None, path=None):
    """Training loss per step and, on the same axes, the held-out loss measured while training (`kept`:
    the step whose adapter was saved, marked where it is not the last)."""
    steps, losses = loss_history(log_history)
    fig, ax = show.new_figure()
    ax.plot(steps, losses, color="#2563eb", label="training loss")
    if done := evaluations(log_history):
        ax.plot(*zip(*done), color="#ea580c", marker="o", label="held-out loss, while training")
        if kept is not None and kept != done[-1][0]:
            ax.plot([kept], [dict(done)[kept]], color="#16a34a", marker="*", markersize=16, linestyle="none",
                    label=f"adapter kept: step {kept}")
    if before is not None:
        ax.axhline(before, color="#9ca3af", linestyle="--", label=f"held-out loss before: {before:.2f}")
    if after is not None:
        ax.axhline(after, color="#16a34a", linestyle="--", label=f"held-out loss after: {after:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    return show.finish(fig, path)


def before_after_table(prompts, before: list[str], after: list[str], common=None, path=None):
    """prompts: (question, prompt text, reference) as questions.prompts gives them; `common`:
    questions.common_words of the training rows, for the fact columns. Saved as CSV at `path`."""
    table = answers_table(prompts, {"before": before, "after": after}, common)
    if path is not None:
        with rundir.replacing(Path(path)) as tmp:
            table.to_csv(tmp, index=False)
    return table


def record(run_dir, trainer, stats: dict, before: float | None, after: float | None, rows_measured: int,
           evaluation: dict | None = None) -> dict:
    """The run's record, after the adapter is saved: the trainer's log (loss per step, learning rate,
    held-out losses, for tools.compare) as log_history.json, and in metrics.json the figures of the
    training, the held-out losses before and after, which 06 shows rather than measuring them again (they
    belong to the adapter saved at `adapter_saved_at`), and `evaluation` (HeldOutLoss.summary: the
    losses while training, early stopping, the step whose adapter was saved)."""
    rundir.write_json(Path(run_dir) / "log_history.json", trainer.state.log_history)
    return rundir.update_metrics(Path(run_dir), **stats, **loss_record(before, after, rows_measured),
                                 **(evaluation or {}), adapter_saved_at=rundir.adapter_stamp(run_dir))
