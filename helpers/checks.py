"""Checks that look at several parameters together, or at this machine and the model's config, grouped by
the step whose parameters they are: each step runs its own before it does any work, and the runner runs
all of them before any notebook starts (`check_combinations`), so that a run that cannot work stops in
a second with a message naming the parameter, the value and what is allowed, rather than minutes (or
hours) in. `params.check` looks at each value alone (name, type, range, choices).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from pathlib import Path

from helpers.params import ParameterError
from helpers.model import memory, weights


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _no_bf16() -> str | None:
    """The GPU's name where it lacks bfloat16, else None."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.cuda.get_device_name(0)
    return None


def model_folder(model_name: str) -> Path:

    if model_name.startswith(weights.BUNDLED_PREFIX):
        return weights.bundled_cache_folder(model_name[len(weights.BUNDLED_PREFIX):])
    return Path(model_name).expanduser()


def model_config(model_name: str) -> dict | None:
    """The model's config.json where it can be read without downloading or converting anything; a
    ParameterError naming the file where it is not a JSON object."""
    path = model_folder(model_name) / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParameterError(f"Parameter 'model_name' = '{model_name}': {path} cannot be read as JSON "
                             f"({e}). Expected the config.json that save_pretrained writes.") from None
    if not isinstance(config, dict):
        raise ParameterError(f"Parameter 'model_name' = '{model_name}': {path} holds a JSON "
                             f"{type(config).__name__}, expected an object of settings.")
    return config


def check_custom_code(params: dict, config: dict | None) -> None:
    """A config.json with `auto_map` makes transformers import Python files from the model's folder:
    run only when the user says so (the same rule the hub's models follow)."""
    if config and config.get("auto_map") and not params["trust_remote_code"]:
        classes = ", ".join(f"{k} -> {v}" for k, v in sorted(config["auto_map"].items()))
        raise ParameterError(f"Parameter 'model_name' = '{params['model_name']}': its config.json asks for "
                             f"custom code ({classes}), Python files that would run when it loads. Set "
                             f"trust_remote_code true if you trust that code; it is not run otherwise.")


def check_model_source(params: dict) -> None:
    """A local model folder that does not exist is an error now, not after minutes of loading (a name
    shaped like a hub id, `org/name`, is left to the hub); so is custom code nobody trusted."""
    from helpers.data import sources

    name = params["model_name"]
    if not name.startswith(weights.BUNDLED_PREFIX) and not sources.HUB_ID.fullmatch(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ParameterError(f"Parameter 'model_name' = '{name}': no such folder. Expected a saved model "
                                 f"folder (with config.json), a hub id such as unsloth/Meta-Llama-3.1-8B-bnb-4bit, "
                                 f"or {weights.BUNDLED_PREFIX}SmolLM2-135M-Instruct.")
    check_custom_code(params, model_config(name))


def refuse_tied(targets: list, tied: str | None) -> None:
    if tied in targets:
        raise ParameterError(f"Parameter 'target_modules' names '{tied}', the output layer, whose weight this model "
                             f"shares with its input embeddings (tie_word_embeddings): the merged update would "
                             f"have to change both through one matrix, and 07 cannot export it. Leave '{tied}' out.")


# report_to: the packages that transformers' logging callbacks import (any one of them will do)
REPORTING_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                      "trackio": ("trackio",)}


def _check_reporting(target: str) -> None:
    packages = REPORTING_PACKAGES.get(target, ())
    if packages and not any(importlib.util.find_spec(name) for name in packages):
        raise ParameterError(f"Parameter 'report_to' = '{target}' needs the {packages[0]} package, which is not "
                             f"installed: pip install {packages[0]}, or report_to 'none'.")


def for_loading(params: dict, gpu: bool | None = None) -> None:
    """Step 1: the backend, 4-bit loading and dtype this machine can run, and the model's folder."""
    gpu = gpu_available() if gpu is None else gpu
    backend = params["backend"]
    if backend == "unsloth" and not gpu:
        raise ParameterError("Parameter 'backend' = 'unsloth' needs an NVIDIA GPU, and this machine has none. "
                             "Use backend 'auto' (transformers + peft on a CPU) or 'hf'.")
    if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
        raise ParameterError("Parameter 'backend' = 'unsloth': the unsloth package is not installed "
                             "(make setup installs it where nvidia-smi finds a GPU). Use backend 'auto' or 'hf'.")
    if params["load_in_4bit"] and not gpu and backend == "hf":
        # backend 'auto' on a CPU runs the post's recipe in full precision and says so (01's table);
        # naming the transformers backend explicitly asks for bitsandbytes' 4-bit, which a CPU lacks.
        raise ParameterError("Parameter 'load_in_4bit' = True with backend 'hf' needs an NVIDIA GPU "
                             "(bitsandbytes 4-bit kernels), and this machine has none. Set load_in_4bit false, "
                             "or backend 'auto' to load in full precision on this CPU.")
    if params["dtype"] in ("float16", "bfloat16") and not gpu:
        raise ParameterError(f"Parameter 'dtype' = '{params['dtype']}' on a CPU: 16-bit matrix products run "
                             f"many times slower than float32 here. Use dtype None (float32 on a CPU) or float32.")
    if params["dtype"] == "bfloat16" and gpu and _no_bf16():
        raise ParameterError(f"Parameter 'dtype' = 'bfloat16': this GPU ({_no_bf16()}) has no bfloat16 arithmetic "
                             f"(NVIDIA cards before Ampere, such as the T4). Use dtype float16, or None to let "
                             f"the card decide.")
    check_model_source(params)
    folder = model_folder(params["model_name"])
    if folder.is_dir() and weights.is_prequantized(str(folder)) and not gpu:
        raise ParameterError(f"Parameter 'model_name' = '{params['model_name']}' is stored in 4-bit (bitsandbytes "
                             f"nf4: no 16-bit weights in it), which loads only on an NVIDIA GPU, and this machine "
                             f"has none. Use a checkpoint with 16-bit weights on a CPU.")
    config = model_config(params["model_name"])
    limit = (config or {}).get("max_position_embeddings")
    if limit and params["max_seq_length"] > limit:
        raise ParameterError(f"Parameter 'max_seq_length' = {params['max_seq_length']} is over the model's "
                             f"limit: {params['model_name']} has max_position_embeddings = {limit}. "
                             f"Expected max_seq_length <= {limit}.")


def for_data(params: dict) -> None:
    """Step 3: a dataset that exists, turns for responses-only training, and rows held out."""
    from helpers.data import sources

    if params["train_on_responses_only"] and params["dataset_format"] == "text":
        raise ParameterError("Parameter 'train_on_responses_only' = True needs turns to tell prompts from "
                             "answers, and dataset_format 'text' has none. Use a format with turns or set it False.")
    if params["eval_fraction"] == 0:
        raise ParameterError("Parameter 'eval_fraction' = 0 holds no rows out, and steps 5 to 7 measure the "
                             "fine-tuned model on held-out rows (the loss before and after, the fact score, "
                             "llama.cpp's agreement with the merged model). Expected more than 0: the post's "
                             "recipe uses 0.01, 2,103 of its 210,289 rows, and trains on the other 99%.")
    try:
        sources.locate(params["dataset"], configure_datasets=False)
    except sources.DatasetError as e:
        raise ParameterError(str(e)) from None


def for_training(params: dict, gpu: bool | None = None) -> None:
    """Steps 4 and 5: a schedule that reaches its peak, passes that keep a step's rows, names transformers
    knows, a logging package that is installed, packing where samples stay apart, and evaluations where
    early stopping needs them."""
    gpu = gpu_available() if gpu is None else gpu
    if params["warmup_steps"] > params["max_steps"]:
        raise ParameterError(f"Parameter 'warmup_steps' = {params['warmup_steps']} is more than max_steps = "
                             f"{params['max_steps']}: the learning rate would never reach its peak. Expected "
                             f"warmup_steps <= max_steps.")
    rows_per_step = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
    if isinstance(params["rows_per_pass"], int) and rows_per_step % params["rows_per_pass"]:
        raise ParameterError(f"Parameter 'rows_per_pass' = {params['rows_per_pass']} does not divide the "
                             f"{rows_per_step} rows of an optimizer step (per_device_train_batch_size "
                             f"{params['per_device_train_batch_size']} x gradient_accumulation_steps "
                             f"{params['gradient_accumulation_steps']}): each step must keep its rows. "
                             f"Expected one of {memory.divisors(rows_per_step)}, 'auto' or None.")
    if params["packing"]:
        from helpers.model.machine import choose_attention, choose_backend

        unsloth = gpu and choose_backend(params["backend"]) == "unsloth"
        if not unsloth and choose_attention(params["attn_implementation"]) != "flash_attention_2":
            raise ParameterError("Parameter 'packing' = True needs the unsloth backend or flash-attn: with PyTorch "
                                 "SDPA on the transformers path, packed samples would attend to each other.")
    if (params["early_stopping_patience"] or params["load_best_model_at_end"]) and params["eval_steps"] == 0:
        wants = "early_stopping_patience" if params["early_stopping_patience"] else "load_best_model_at_end"
        raise ParameterError(f"Parameter '{wants}' needs held-out losses during training, and eval_steps = 0 "
                             f"measures none. Expected eval_steps > 0, or None for three evaluations a run.")
    _check_trainer_names(params)
    _check_reporting(params["report_to"])


def _check_trainer_names(params: dict) -> None:
    """`optim` and `lr_scheduler_type` must be names that transformers knows."""
    import difflib

    for name, known in (("optim", enum_values("training_args", "OptimizerNames")),
                        ("lr_scheduler_type", enum_values("trainer_utils", "SchedulerType"))):
        if params[name] not in known:
            near = difflib.get_close_matches(params[name], known, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ParameterError(f"Parameter '{name}' = '{params[name]}' is not a name transformers knows.{hint} "
                                 f"Known: {', '.join(sorted(known)[:12])}, ...")


@functools.lru_cache(maxsize=None)
def enum_values(module: str, enum: str) -> list[str]:
    """The string values of an enum in transformers' module `module`, read from its source: importing
    `transformers.training_args` takes seconds (torch, accelerate, peft), reading the file milliseconds.
    Falls back to the import when the source does not have the expected shape."""
    import ast

    spec = importlib.util.find_spec(f"transformers.{module}")
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == enum).body
        values = [n.value.value for n in body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                  and isinstance(n.value.value, str)]
        if values:
            return values
    except (StopIteration, OSError, SyntaxError, AttributeError):
        pass
    return [e.value for e in getattr(importlib.import_module(f"transformers.{module}"), enum)]
