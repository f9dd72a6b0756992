"""Step 5: train, measure, plot the loss, save the adapter, compare before and after.

The same steps without notebooks, on one GPU or several: `python -m tools.train` (tools/train.py).
"""
from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path

from helpers.machinery import rundir, storage


class Session:
    """Steps 1-4 rebuilt from the run folder: model with LoRA, tokenizer, prepared rows (`train_ids`: the
    training rows as the trainer takes them) and the trainer's arguments (`config`). 05 builds the
    SFTTrainer itself, in sight; `trainer` builds the same one for the command line and the tests."""

    def __init__(self, params: dict):
        from helpers import lora, model, trainer
        from helpers.machinery import cell_edits

        params = cell_edits.applied(params)  # what 02's and 04's cells changed in their calls
        self.edits = cell_edits.saved(params["run_dir"])
        self.model, self.tokenizer, self.info = model.load(params)
        self.model, _ = lora.add_lora(self.model, params, self.info.backend)
        lora.refuse_unseen_edits(self.model, params)  # what 02's call set that peft does not record
        self.params = params
        self.train, self.held_out = storage.load_split(Path(params["run_dir"]), params)
        self.train_ids = storage.training_dataset(self.train, params["max_seq_length"])
        self.config, _ = trainer.training_config(params, Path(params["run_dir"]), self.model.config)
        self._trainer = None

    @property
    def trainer(self):
        from helpers import trainer

        if self._trainer is None:
            self._trainer = trainer.build(self.model, self.tokenizer, self.train_ids, self.config)
        return self._trainer

    def answer(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from helpers.generate import answer

        return answer(self.model, self.tokenizer, prompts, max_new_tokens, self.info.backend)

    def summary(self):
        import pandas as pd

        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        rows = [("backend", self.info.backend), ("model", self.info.model_name), ("device", self.info.device),
                ("trainable parameters", f"{trainable:,}"), ("training rows", len(self.train)),
                ("held-out rows", len(self.held_out)), ("optimizer steps", self.config["max_steps"]),
                ("rows a pass x passes a step", f"{self.config['per_device_train_batch_size']} x "
                                                f"{self.config['gradient_accumulation_steps']}")]
        rows += [(f"{name} (changed in {e['call']})", e["value"]) for name, e in self.edits.items()]
        return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def setup(params: dict) -> Session:
    return Session(params)


def eval_loss(session: Session) -> float | None:
    """Token-weighted held-out loss of the model as it is now (see token_loss.mean_token_loss), on at
    most `max_eval_rows` rows; None when nothing was held out."""
    from helpers.machinery.token_loss import held_out_loss

    return held_out_loss(session.model, session.held_out, session.params["max_eval_rows"],
                         session.params["per_device_eval_batch_size"])


def peak_memory() -> dict:
    """Peak memory: reserved GPU memory on CUDA (what `nvidia-smi` sees), else the process's peak RSS."""
    import torch

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


class Measured:
    """What `measured` hands the cell that trains: where to resume from, and afterwards the figures."""

    def __init__(self, resume_from):
        self.resume_from = resume_from
        self.stats: dict = {}


@contextlib.contextmanager
def measured(trainer, params: dict | None = None):
    """Around `trainer.train(resume_from_checkpoint=m.resume_from)`: the figures people quote (time,
    tokens/s, peak memory) in `m.stats`, progress for the runner, and a guard against batches with
    nothing to learn.

    With `params` (as 05 passes them) the training is crash-safe: `m.resume_from` is the newest complete
    checkpoint as `resume` asks, and SIGINT/SIGTERM save a checkpoint, then raise TrainingInterrupted."""
    import torch

    from helpers import trainer as trainers
    from helpers.machinery import checkpoints

    trainers.guard(trainer)
    if params:  # the checkpoints belong to what trains: the parameters with the cells' edits
        from helpers.machinery import cell_edits

        params = cell_edits.applied(params)
    resume = checkpoints.resume_from(params) if params else None
    if params:
        checkpoints.start(params, resuming=resume is not None)
        if logs := trainers.tensorboard_into(trainer, params["run_dir"]):
            from helpers.model import shown

            print(f"TensorBoard logs: {shown(str(logs))} (watch: tensorboard --logdir {shown(str(logs))})")
    stopper = checkpoints.callback()
    trainer.add_callback(stopper)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    count = TokenCount(trainer)
    m = Measured(str(resume) if resume else None)
    start = time.perf_counter()
    with checkpoints.signals_to(stopper):
        yield m
    seconds = time.perf_counter() - start
    trainer.remove_callback(stopper)
    if stopper.signal:
        raise checkpoints.TrainingInterrupted(
            f"{stopper.signal} at step {trainer.state.global_step}: checkpoint saved in {stopper.saved_at}. "
            f"Run the training again with this run_dir (resume 'auto') to continue from there.")
    if params:
        checkpoints.finish(params["run_dir"])
    tokens = count.tokens
    _, losses = loss_history(trainer.state.log_history)
    m.stats = {"train_loss": sum(losses) / len(losses) if losses else math.nan,
               "final_step_loss": losses[-1] if losses else math.nan,
               "train_runtime_s": seconds, "train_steps": int(trainer.state.global_step), "train_tokens": int(tokens),
               "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
               "tokens_per_s_steady": count.steady_rate(), "resumed_from": m.resume_from, **peak_memory()}


def run(trainer, params: dict | None = None) -> dict:
    """`trainer.train()` inside `measured`; returns its figures."""
    with measured(trainer, params) as m:
        trainer.train(resume_from_checkpoint=m.resume_from)
    return m.stats


def record(params: dict, session: Session, before: float | None, after: float | None, stats: dict) -> dict:
    """Metrics of the training (05): the run's figures and the held-out losses before and after, which
    06 shows rather than measuring them again (they belong to the adapter saved at `adapter_saved_at`)."""
    from helpers.machinery.token_loss import eval_rows, loss_record
    from helpers.machinery.rundir import adapter_stamp

    losses = loss_record(before, after, len(eval_rows(session.held_out, params["max_eval_rows"])))
    return rundir.update_metrics(Path(params["run_dir"]), **stats, **losses,
                                 adapter_saved_at=adapter_stamp(params["run_dir"]))


def stats_table(stats: dict):
    import pandas as pd

    rows = [("training time", f"{stats['train_runtime_s']:.1f} s"), ("optimizer steps", stats["train_steps"]),
            ("tokens trained on", stats["train_tokens"]), ("tokens / s", f"{stats['tokens_per_s']:.1f}")]
    if stats["peak_memory_kind"] == "cuda_max_memory_reserved":
        rows += [("GPU", stats["gpu_name"]),
                 ("peak reserved GPU memory", f"{stats['peak_memory_gib']:.2f} GiB"),
                 ("share of the card", f"{100 * stats['peak_memory_share']:.1f}% of {stats['gpu_memory_gib']:.1f} GiB")]
    else:
        rows += [("peak process memory (RSS)", f"{stats['peak_memory_gib']:.2f} GiB")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def explain(stats: dict, config: dict, before: float | None, after: float | None, train_rows: int):
    """What the training's numbers mean, in sentences: how much of the data it saw, and how the last
    training loss and the held-out loss relate."""
    from helpers.machinery.tables import Sentences
    from helpers.trainer import effective_batch_size

    seen = effective_batch_size(config) * stats["train_steps"]
    text = (f"{stats['train_steps']} optimizer steps of {effective_batch_size(config)} rows each: "
            f"**{seen:,} rows, {seen / train_rows:.2f} of an epoch** (one pass over the {train_rows:,} "
            f"training rows)")
    text += (": most rows were never seen, so what the model learned is the data's common shape, not "
             "the rows themselves." if seen < train_rows else ".")
    if before is not None and after is not None:
        last = stats["final_step_loss"]
        text += (f"\n\nThe held-out loss fell from **{before:.3f} to {after:.3f}** nats per token. The last "
                 f"step's training loss was {last:.3f}, on the {effective_batch_size(config)} rows of that one "
                 f"step, with the weights still moving; the held-out figure uses the final weights on the "
                 f"held-out rows.")
        if after < last:
            text += (" That the held-out loss is the lower one is no sign of a bug: the final weights are "
                     "better than those of the last step's forward pass, and a single step's rows vary.")
    return Sentences(text)


def loss_history(log_history) -> tuple[list[int], list[float]]:
    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


def plot_loss(log_history, before: float | None, after: float | None, path=None):
    from helpers.machinery import plots

    steps, losses = loss_history(log_history)
    fig, ax = plots.new_figure()
    ax.plot(steps, losses, color="#2563eb", label="training loss")
    if before is not None:
        ax.axhline(before, color="#9ca3af", linestyle="--", label=f"held-out loss before: {before:.2f}")
    if after is not None:
        ax.axhline(after, color="#16a34a", linestyle="--", label=f"held-out loss after: {after:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    return plots.finish(fig, path)


def save_log_history(trainer, run_dir: Path) -> Path:
    """The trainer's log (loss per step, learning rate, ...) as log_history.json, for tools.compare."""
    path = Path(run_dir) / "log_history.json"
    rundir.write_json(path, trainer.state.log_history)
    return path


def save_adapter(model, tokenizer, run_dir: Path) -> Path:
    """adapter_model.safetensors + adapter_config.json + tokenizer files in run_dir/adapter, atomically."""
    final = Path(run_dir) / "adapter"
    with rundir.building(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final


def before_after_table(prompts: list[tuple[str, str, str]], before: list[str], after: list[str], common=None):
    """prompts: (question, prompt text, reference) as data_report.held_out_prompts gives them; `common`:
    data_report.common_words of the training rows, for the fact columns."""
    from helpers.machinery.data_report import answers_table

    return answers_table(prompts, {"before": before, "after": after}, common)
