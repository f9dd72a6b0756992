"""Step 4: the SFTTrainer's arguments: the post's values, adapted to this machine where needed.

04 spells out `SFTConfig(...)` with them and saves exactly that object in the run folder
(`sft_config.json`); step 5 trains with `SFTConfig(**saved)`, so every argument 04's call is given
reaches training.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from helpers import checks, rundir, show
from helpers.model import lora
from helpers.model.machine import choose_backend
from helpers.model.memory import choose_rows_per_pass


# What the post passes to TrainingArguments, and which workbook parameter carries it.
SEED_ARGUMENTS = ["per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "max_steps",
                  "learning_rate", "weight_decay", "optim", "lr_scheduler_type", "seed", "logging_steps"]


def passes(params: dict, model_config=None) -> tuple[int, int, str | None]:
    """(rows a pass, passes a step, why) for `rows_per_pass`: the rows of an optimizer step stay
    per_device_train_batch_size x gradient_accumulation_steps, grouped into fewer, larger passes where
    asked. `model_config` (the loaded model's, else read from model_name) sizes "auto"'s passes."""
    batch, steps = params["per_device_train_batch_size"], params["gradient_accumulation_steps"]
    requested, config, gc, backend = params["rows_per_pass"], None, None, "hf"
    if requested == "auto" and torch.cuda.is_available():  # on a CPU, auto needs no config to decide
        config = model_config if model_config is not None else _read_config(params)
        if config is None:
            return batch, steps, "the model's config.json could not be read to size the passes: the post's passes"
        # what a pass holds depends on the checkpointing step 2 chose (the same rule, the same inputs)
        backend = choose_backend(params["backend"])
        gc, _ = lora.checkpointing(config, backend, params)
    rows, why = choose_rows_per_pass(requested, config, batch * steps, batch, params["max_seq_length"], gc,
                                     backend=backend)
    return rows, batch * steps // rows, why


def _read_config(params: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(params["model_name"], trust_remote_code=params["trust_remote_code"])
    except (OSError, ValueError):
        return None


def _check_rows_a_step(params: dict) -> None:
    """One optimizer step must not take more rows than 03 kept for training (it would be more than an epoch)."""
    path = Path(params["run_dir"]) / "data" / "train.arrow"
    rows_a_step = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
    if not path.exists():
        return
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        rows = pa.ipc.open_stream(source).read_all().num_rows
    if rows_a_step > rows:
        raise checks.ParameterError(
            f"Parameters 'per_device_train_batch_size' x 'gradient_accumulation_steps' = "
            f"{params['per_device_train_batch_size']} x {params['gradient_accumulation_steps']} = {rows_a_step:,} rows "
            f"an optimizer step, and 03 kept {rows:,} training rows: each step would go over the data more than "
            f"once. Expected at most {rows:,} rows a step (the post: 2 x 4 = 8).")


def _loaded_dtype(run_dir) -> str | None:
    """The compute dtype step 1 loaded the model in (base/load.json), where it has run."""
    path = Path(run_dir) / "base" / "load.json"
    return json.loads(path.read_text(encoding="utf-8")).get("compute_dtype") if path.exists() else None


def for_this_machine(params: dict, model_config=None):
    """Check step 4's parameters, then the values of 04's SFTConfig call on this machine, and what differs
    from what was asked (with reasons). Returns (a, differences): `a` has each argument the call spells
    out as an attribute, `workbook` (checkpoint saving, evaluation off, CPU settings; passed as **), and
    `kwargs` (all of them). `model_config` sizes rows_per_pass="auto" (else read from model_name)."""
    checks.for_training(params)
    _check_rows_a_step(params)
    gpu = torch.cuda.is_available()
    differences = []
    kwargs = {name: params[name] for name in SEED_ARGUMENTS}
    kwargs.update(
        output_dir=str(Path(params["run_dir"]) / "checkpoints"),
        per_device_eval_batch_size=params["per_device_eval_batch_size"],
        max_length=params["max_seq_length"],
        packing=params["packing"],  # TRL's best-fit packing: padding-free rows with per-sample positions
        # The post enables checkpointing through get_peft_model (step 02), not in the trainer;
        # TRL's own default (on) would add a second, slower layer of recomputation.
        gradient_checkpointing=False,
        save_strategy="steps",  # checkpoints for resuming (helpers.training.checkpoints marks them complete)
        save_steps=params["save_steps"],
        save_total_limit=params["save_total_limit"],
        eval_strategy="no",  # 05 evaluates explicitly, before and after training
        report_to=params["report_to"],  # tensorboard logs go to run_dir/tensorboard (see loop.tensorboard_into)
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
        differences.append(("rows a pass x passes a step", "auto", f"{rows} x {steps} (the post's)", why))
    if gpu:
        bf16 = torch.cuda.is_bf16_supported()
        kwargs.update(bf16=bf16, fp16=not bf16)  # the post: fp16 = not is_bfloat16_supported()
        loaded = _loaded_dtype(params["run_dir"])
        if loaded is not None and loaded != ("bfloat16" if bf16 else "float16"):
            # training computes in the dtype 01 loaded the model in (dtype): unsloth refuses any other
            kwargs.update(bf16=loaded == "bfloat16", fp16=loaded == "float16")
            short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
            differences.append(("precision", "bf16" if bf16 else "fp16", short.get(loaded, loaded),
                                f"01 loaded the model in {loaded} (dtype), and training computes in it"))
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
    spelled = {k: kwargs[k] for k in SPELLED_OUT}
    return SimpleNamespace(**spelled, workbook={k: v for k, v in kwargs.items() if k not in spelled},
                           kwargs=kwargs), differences


# The SFTConfig arguments that notebook 04 spells out (the post's TrainingArguments, with
# max_seq_length now SFTConfig's max_length); the rest is workbook plumbing.
SPELLED_OUT = [*SEED_ARGUMENTS, "fp16", "bf16", "output_dir", "max_length"]
FILE = "sft_config.json"


def save(args, run_dir) -> Path:
    """04's SFTConfig, exactly, as JSON in the run folder, which step 5 passes to `SFTConfig(**...)`: every
    argument's value, so that it means the same to any constructor that reads it (unsloth's SFTConfig
    has defaults of its own), checked to give back the same object."""
    fields = {f.name for f in dataclasses.fields(args) if f.init}  # to_dict may add keys (unsloth does)
    # to_dict masks every *_token field; the tokens of the chat rows are settings, a hub token a secret
    # that never lands in the run folder (the hub library reads HF_TOKEN from the environment)
    saved = {k: getattr(args, k) if k.endswith("_token") else v for k, v in args.to_dict().items()
             if k in fields and k != "hub_token"}
    saved = json.loads(json.dumps(saved))
    if type(args)(**saved).to_dict() != args.to_dict():
        raise ValueError("the SFTConfig saved in the run folder would not give back the one built here")
    path = Path(rundir.resolve(run_dir)) / FILE
    rundir.write_json(path, saved)
    return path


def table(kwargs: dict):
    rows = [(k, kwargs[k]) for k in SEED_ARGUMENTS]
    rows += [("precision", "bf16" if kwargs.get("bf16") else "fp16" if kwargs.get("fp16") else "fp32"),
             ("max_length (max_seq_length)", kwargs["max_length"]),
             ("effective batch size", effective_batch_size(kwargs)),
             ("samples seen in training", effective_batch_size(kwargs) * kwargs["max_steps"])]
    return pd.DataFrame(rows, columns=["argument", "value"]).set_index("argument")


def effective_batch_size(kwargs: dict, world_size: int = 1) -> int:
    """Samples behind each optimizer step: batch per device x accumulation steps x devices."""
    return kwargs["per_device_train_batch_size"] * kwargs["gradient_accumulation_steps"] * world_size


def lr_schedule(kwargs: dict, points: int = 2000) -> dict[int, float]:
    """{step: learning rate} from the scheduler the trainer uses: every optimizer step (1-based), or `points`
    of them spread evenly where there are more (the cost stays the same for any max_steps)."""
    from transformers import get_scheduler

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=kwargs["learning_rate"])
    scheduler = get_scheduler(kwargs["lr_scheduler_type"], optimizer, num_warmup_steps=kwargs["warmup_steps"],
                              num_training_steps=kwargs["max_steps"])
    last = kwargs["max_steps"] - 1
    updates = sorted({round(i * last / (points - 1)) for i in range(points)} | {min(kwargs["warmup_steps"], last)})
    # step k runs at the rate the scheduler holds after k-1 updates: lr_lambdas give it at once
    return {k + 1: kwargs["learning_rate"] * scheduler.lr_lambdas[0](k) for k in updates}


def plot_lr_schedule(rates: dict[int, float], kwargs: dict, path=None):
    fig, ax = show.new_figure()
    ax.plot(list(rates), list(rates.values()), color="#2563eb")
    # step k (1-based) runs at the rate the scheduler holds after k-1 updates: the peak is at warmup + 1
    ax.axvline(kwargs["warmup_steps"] + 1, color="#9ca3af", linestyle=":",
               label=f"end of warm-up ({kwargs['warmup_steps']} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{kwargs['lr_scheduler_type']} schedule, peak {kwargs['learning_rate']:g}")
    ax.legend()
    return show.finish(fig, path)
