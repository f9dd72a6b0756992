"""Step 4: the SFTTrainer configuration: the post's arguments, adapted to the machine where needed."""
from __future__ import annotations

from pathlib import Path

# What the post passes to TrainingArguments, and which workbook parameter carries it.
SEED_ARGUMENTS = ["per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "max_steps",
                  "learning_rate", "weight_decay", "optim", "lr_scheduler_type", "seed", "logging_steps"]


def passes(params: dict, model_config=None) -> tuple[int, int, str | None]:
    """(rows a pass, passes a step, why) for `rows_per_pass`: the rows of an optimizer step stay
    per_device_train_batch_size x gradient_accumulation_steps, grouped into fewer, larger passes where
    asked. `model_config` (the loaded model's, else read from model_name) sizes "auto"'s passes."""
    import torch

    from helpers import lora
    from helpers.machinery.machine import choose_backend
    from helpers.machinery.memory import choose_rows_per_pass
    from helpers.params import pick

    batch, steps = params["per_device_train_batch_size"], params["gradient_accumulation_steps"]
    requested, config, gc, backend = params["rows_per_pass"], None, None, "hf"
    if requested == "auto" and torch.cuda.is_available():  # on a CPU, auto needs no config to decide
        config = model_config if model_config is not None else _read_config(params)
        if config is None:
            return batch, steps, "the model's config.json could not be read to size the passes: the post's passes"
        # what a pass holds depends on the checkpointing step 2 chose (the same rule, the same inputs)
        backend = choose_backend(params["backend"])
        gc, _ = lora.checkpointing_for(config, backend, **pick(params, lora.checkpointing_for))
    rows, why = choose_rows_per_pass(requested, config, batch * steps, batch, params["max_seq_length"], gc,
                                     backend=backend)
    return rows, batch * steps // rows, why


def _read_config(params: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(params["model_name"], trust_remote_code=params["trust_remote_code"])
    except (OSError, ValueError):
        return None


def training_config(params: dict, run_dir: Path, model_config=None) -> tuple[dict, list]:
    """Keyword arguments for `trl.SFTConfig`, and the differences from what was asked (with reasons).

    Returned as a plain dict so that notebook 04 can show and save it without building a trainer.
    `model_config`: the loaded model's, for sizing `rows_per_pass="auto"` (else read from model_name).
    """
    import importlib.util

    import torch

    gpu = torch.cuda.is_available()
    differences = []
    kwargs = {name: params[name] for name in SEED_ARGUMENTS}
    kwargs.update(
        output_dir=str(Path(run_dir) / "checkpoints"),
        per_device_eval_batch_size=params["per_device_eval_batch_size"],
        max_length=params["max_seq_length"],
        packing=params["packing"],  # TRL's best-fit packing: padding-free rows with per-sample positions
        # The post enables checkpointing through get_peft_model (step 02), not in the trainer;
        # TRL's own default (on) would add a second, slower layer of recomputation.
        gradient_checkpointing=False,
        save_strategy="steps",  # checkpoints for resuming (helpers.machinery.checkpoints marks them complete)
        save_steps=params["save_steps"],
        save_total_limit=params["save_total_limit"],
        eval_strategy="no",  # 05 evaluates explicitly, before and after training
        report_to=params["report_to"],  # tensorboard logs go to run_dir/tensorboard (see tensorboard_into)
        ddp_find_unused_parameters=False,  # several GPUs: every LoRA weight gets a gradient every step
        disable_tqdm=False,
        # 03 already cut the rows to token ids, so TRL's own preparation (a Python pass over every row:
        # minutes at 210k rows) is skipped, except with packing, which TRL does in Arrow.
        dataset_kwargs={"skip_prepare_dataset": not params["packing"]},
    )
    rows, steps, why = passes(params, model_config)
    if rows != params["per_device_train_batch_size"]:
        # The loss stays the post's: transformers sums it over the answer tokens of every pass and divides
        # by the count of those tokens in the whole optimizer step, however the step's rows are grouped.
        # Padding is left to the backend as in the post's passes: unsloth pads rows it cannot cut itself
        # (step 3 did), and on the H200 a padded pass of 8 short rows ran as fast as a padding-free one
        # (docs/benchmarks.md), which runs uncompiled blocks and one attention call per row.
        kwargs.update(per_device_train_batch_size=rows, gradient_accumulation_steps=steps)
        differences.append(("rows a pass x passes a step",
                            f"{params['per_device_train_batch_size']} x {params['gradient_accumulation_steps']}",
                            f"{rows} x {steps}",
                            f"rows_per_pass={params['rows_per_pass']!r}: {why}; the same "
                            f"{rows * steps} rows a step and the same loss"))
    elif why and params["rows_per_pass"] == "auto":
        differences.append(("rows a pass x passes a step", "auto",
                            f"{rows} x {steps} (the post's)", why))
    if gpu:
        bf16 = torch.cuda.is_bf16_supported()
        kwargs.update(bf16=bf16, fp16=not bf16)  # the post: fp16 = not is_bfloat16_supported()
        if params["optim"].endswith("8bit") and importlib.util.find_spec("bitsandbytes") is None:
            kwargs["optim"] = "adamw_torch"
            differences.append(("optim", params["optim"], "adamw_torch", "bitsandbytes is not installed"))
    else:
        kwargs.update(bf16=False, fp16=False, use_cpu=True, loss_type="nll")
        differences.append(("precision", "bf16 (or fp16)", "fp32",
                            "this CPU has no fast bf16/fp16 matrix units: mixed precision would run many times slower"))
        differences.append(("loss_type", "chunked_nll (TRL default)", "nll",
                            "chunking saves GPU memory; on CPU the plain loss is about 10% faster"))
        if params["optim"].endswith("8bit"):
            kwargs["optim"] = "adamw_torch"
            differences.append(("optim", params["optim"], "adamw_torch",
                                "8-bit optimizers (bitsandbytes) need an NVIDIA GPU"))
    return kwargs, differences


# The SFTConfig arguments that notebook 04 spells out (the post's TrainingArguments, with
# max_seq_length now SFTConfig's max_length); the rest is workbook plumbing.
SPELLED_OUT = [*SEED_ARGUMENTS, "fp16", "bf16", "output_dir", "max_length"]


def arguments(params: dict, run_dir: Path):
    """`training_config` as attributes for notebook 04's SFTConfig call: the spelled-out arguments, and
    `workbook` (checkpoint saving, evaluation off, CPU settings) passed as **. Returns (a, differences)."""
    from types import SimpleNamespace

    kwargs, differences = training_config(params, run_dir)
    spelled = {k: kwargs[k] for k in SPELLED_OUT}
    return SimpleNamespace(**spelled, workbook={k: v for k, v in kwargs.items() if k not in spelled},
                           kwargs=kwargs), differences


# SFTConfig arguments that 04 spells out but only the parameters (or the machine) may set: why, and where.
ONLY_FROM_PARAMETERS = {
    "max_length": "it is max_seq_length, set in 01's parameters cell: step 3 already cut the rows to it.",
    "fp16": "the precision follows this machine (bf16 where the GPU has it, else fp16; fp32 on a CPU).",
    "bf16": "the precision follows this machine (bf16 where the GPU has it, else fp16; fp32 on a CPU).",
    "output_dir": "the checkpoints stay in the run folder (run_dir/checkpoints), where step 5 resumes from them.",
}


def save_config(params: dict, args, a) -> dict:
    """After 04's `SFTConfig(...)` call: the values the cell built where they differ from the parameters'
    (`a`), saved in the run folder so that step 5 trains with them (`cell_edits`). Edits of arguments
    that only the parameters may set are refused with where to set them."""
    from helpers.machinery import cell_edits

    asked = {k: a.kwargs[k] for k in SPELLED_OUT}
    return cell_edits.record(params["run_dir"], "04", "SFTConfig", args.to_dict(), asked, ONLY_FROM_PARAMETERS)


def config_table(kwargs: dict):
    import pandas as pd

    rows = [(k, kwargs[k]) for k in SEED_ARGUMENTS]
    rows += [("precision", "bf16" if kwargs.get("bf16") else "fp16" if kwargs.get("fp16") else "fp32"),
             ("max_length (max_seq_length)", kwargs["max_length"]),
             ("effective batch size", effective_batch_size(kwargs)),
             ("samples seen in training", effective_batch_size(kwargs) * kwargs["max_steps"])]
    return pd.DataFrame(rows, columns=["argument", "value"]).set_index("argument")


def effective_batch_size(kwargs: dict, world_size: int = 1) -> int:
    """Samples behind each optimizer step: batch per device x accumulation steps x devices."""
    return kwargs["per_device_train_batch_size"] * kwargs["gradient_accumulation_steps"] * world_size


def lr_schedule(kwargs: dict) -> list[float]:
    """The learning rate at every optimizer step, computed with the same scheduler the trainer uses."""
    import torch
    from transformers import get_scheduler

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=kwargs["learning_rate"])
    scheduler = get_scheduler(kwargs["lr_scheduler_type"], optimizer, num_warmup_steps=kwargs["warmup_steps"],
                              num_training_steps=kwargs["max_steps"])
    rates = []
    for _ in range(kwargs["max_steps"]):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def plot_lr_schedule(rates: list[float], kwargs: dict, path=None):
    from helpers.machinery import plots

    fig, ax = plots.new_figure()
    ax.plot(range(1, len(rates) + 1), rates, color="#2563eb")
    # step k (1-based) runs at the rate the scheduler holds after k-1 updates: the peak is at warmup + 1
    ax.axvline(kwargs["warmup_steps"] + 1, color="#9ca3af", linestyle=":",
               label=f"end of warm-up ({kwargs['warmup_steps']} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{kwargs['lr_scheduler_type']} schedule, peak {kwargs['learning_rate']:g}")
    ax.legend()
    return plots.finish(fig, path)


def build(model, tokenizer, train, kwargs: dict, callbacks=()):
    """The `SFTTrainer` that notebook 05 spells out, for the command line and the tests: over the
    prepared split's token ids (`input_ids`, and `labels` where some tokens stay out of the loss; see
    `storage.training_dataset`), so that TRL and unsloth train on exactly the same tokens. Held-out loss
    is measured by the workbook itself (token_loss.mean_token_loss), not by the trainer."""
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train, args=SFTConfig(**kwargs),
                      callbacks=list(callbacks))


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
    while 05 trains (helpers.machinery.progress)."""
    import time

    from transformers import TrainerCallback

    from helpers.machinery import progress

    class Progress(TrainerCallback):
        start = first_step = None

        def on_log(self, args, state, control, logs=None, **kwargs):
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
        return getattr(self.collate, name)
