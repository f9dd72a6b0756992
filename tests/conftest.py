"""Shared fixtures: a tiny random Llama with its own small tokenizer (fast to train, and made on the
spot, so GPU tests need neither the hub nor the bundled model wheel)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
        import unsloth  # noqa: F401  (it patches transformers, so it must be imported first)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_lab_run_dir(tmp_path_factory):
    """Notebooks default to runs/lab; tests (nbval too) must not write into a user's lab folder."""
    os.environ.setdefault("WORKBOOK_RUN_DIR", str(tmp_path_factory.mktemp("lab")))


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from helpers.model.weights import bundled_folder

    return bundled_folder("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (head_dim 64, as GPU kernels expect) with random weights and a small trained
    tokenizer, saved like any local model."""
    from fixtures.synthetic import random_llama

    return random_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", hidden_size=128, intermediate_size=256,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=256, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_prequantized_dir(tmp_path_factory) -> Path:
    """The tiny Llama saved *pre-quantized* (nf4, double quantization, quantization_config in config.json),
    like the post's `-bnb-4bit` model (GPU only: bitsandbytes quantizes on the GPU)."""
    from fixtures.synthetic import prequantized_llama

    folder = tmp_path_factory.mktemp("tiny-bnb")
    return prequantized_llama(folder / "tiny-llama-bnb-4bit", folder / "scratch", hidden_size=128,
                              intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def training_config(bundled_dir):
    """Writes a config for the training commands' tests (`tools.train`, `tools.run`): the bundled model on
    short rows, about a second a step on a CPU, with `changes` on top; returns its path."""
    import yaml

    base = dict(model_name="bundled:SmolLM2-135M-Instruct", max_seq_length=64, on_long_rows="drop", max_rows=60,
                eval_fraction=0.1, per_device_train_batch_size=2, gradient_accumulation_steps=1, warmup_steps=1,
                max_steps=8, learning_rate=0.001, save_steps=2, save_total_limit=2, logging_steps=1)

    def write(path: Path, **changes) -> Path:
        path.write_text(yaml.safe_dump({**base, **changes}, sort_keys=False))
        return path

    return write


WORDS = ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rain", "snow")


@pytest.fixture(scope="session")
def pip_rows(tmp_path_factory) -> Path:
    """Twelve rows in the post's OIG layout, in one cheerful shape that a tiny model learns in a few steps."""
    import json

    path = tmp_path_factory.mktemp("rows") / "pip.jsonl"
    path.write_text("".join(json.dumps({"text": f"<human>: Say {w}.\n<bot>: Pip here! {w}. Happy to help!"}) + "\n"
                            for w in WORDS))
    return path


@pytest.fixture
def tiny_values(tiny_model_dir, pip_rows, tmp_path):
    """Parameters for a quick run of the notebooks on the tiny Llama: 8 steps of 2 rows at a high rate."""
    return {"model_name": str(tiny_model_dir), "run_dir": str(tmp_path / "run"), "dataset": str(pip_rows),
            "max_seq_length": 128, "max_steps": 8, "warmup_steps": 1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1, "learning_rate": 1e-2, "eval_fraction": 0.25, "logging_steps": 1,
            "num_eval_prompts": 2, "max_new_tokens": 6, "num_compare_prompts": 2, "num_fact_questions": 2,
            "chat_max_new_tokens": 6}


@pytest.fixture
def tiny_params(tiny_values):
    """Every parameter, the tiny run's values over the defaults (for the step functions that take them all)."""
    from helpers.params import DEFAULTS

    return {**DEFAULTS, **tiny_values}


def notebooks(values: dict, *numbers: str) -> dict:
    """Run the notebooks `numbers` (their own cells, in this process: tools.cells) with `values`; returns
    each one's namespace by number."""
    from tools import cells

    return {number: cells.run(number, values) for number in numbers}


@pytest.fixture
def jsonl(tmp_path):
    """Write rows (dicts, or raw strings for broken lines) to a JSONL file and return its path."""
    import json

    def write(rows, name="rows.jsonl"):
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                        encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def chat_tok(bundled_dir):
    """SmolLM2's tokenizer: it has a chat template (ChatML)."""
    from helpers.model import loading

    return loading.load_tokenizer("bundled:SmolLM2-135M-Instruct")


KEPT = ("text", "input_ids", "messages", "labels", "spans")  # what a usable row carries to the split


@dataclass
class Prepared:
    rows: list  # the usable rows in file order, as 03's `usable` holds them
    report: object  # helpers.data.report.Report
    lengths: list
    namespace: dict


@pytest.fixture
def prep(tmp_path, chat_tok):
    """03's cells on `path` in tmp_path/run (its tokenizer in base/, as step 1 leaves it)."""
    from tools import cells

    def run(path, tok=chat_tok, **overrides):
        run_dir = tmp_path / "run"
        (run_dir / "params.json").unlink(missing_ok=True)  # each call starts from the defaults, as before
        tok.save_pretrained(run_dir / "base")
        ns = cells.run("03", {"dataset": str(path), "run_dir": str(run_dir), **overrides})
        usable = ns["usable"]
        rows = [{k: v for k, v in row.items() if k in KEPT and v is not None} for row in usable]
        return Prepared(rows, ns["report"], list(usable["length"]), ns)

    return run
