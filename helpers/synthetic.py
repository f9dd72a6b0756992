"""Random-weight checkpoints made on the spot, for tests and benchmarks on machines with no model hub.

Random weights say nothing about quality, but a model of a given shape trains at the speed and in the
memory of the real one, and the whole pipeline (loading, LoRA, training, saving) runs on it.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.rundir import REPO_ROOT

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|pad|>")  # bos, eos, pad: unsloth wants pad != eos


def train_tokenizer(folder: Path, vocab_size: int = 600):
    """A byte-level BPE tokenizer trained in a second on the bundled data, saved into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in (REPO_ROOT / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos, pad = SPECIALS
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.save_pretrained(folder)
    return fast


def random_llama(folder: Path, device: str = "cpu", dtype=None, vocab_size: int | None = None, **shape) -> Path:
    """A Llama with random weights of the given shape and a trained tokenizer, saved like any hub model
    (written under a temporary name, then renamed). `vocab_size` defaults to the tokenizer's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = folder.with_name(folder.name + ".partial")
    tokenizer = train_tokenizer(tmp)
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
