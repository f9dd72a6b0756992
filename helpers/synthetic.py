"""Random-weight checkpoints made on the spot, for tests and benchmarks on machines with no model hub.

Random weights say nothing about quality, but a model of a given shape trains at the speed and in the
memory of the real one, and the whole pipeline (loading, LoRA, training, saving) runs on it.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.rundir import REPO_ROOT

# bos, eos, pad of the tokenizers made here (unsloth wants pad != eos): a ChatML-style one, and one laid
# out like Llama 3.1's (its special tokens, its split regex, a BOS added to every text)
SPECIALS = {"chatml": ("<|im_start|>", "<|im_end|>", "<|pad|>"),
            "llama3": ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>")}
LLAMA3_EXTRA = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3.1 8B's shape (the post's model), for the benchmarks that need a checkpoint of its size
LLAMA31_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                  tie_word_embeddings=False)


def train_tokenizer(folder: Path, vocab_size: int = 600, style: str = "chatml"):
    """A byte-level BPE tokenizer trained in a second on the bundled data, saved into `folder`. `style`:
    "chatml" (GPT-2's byte-level split, <|im_start|>/<|im_end|>) or "llama3" (Llama 3's split regex and
    special tokens, BOS added to every text as Llama 3.1's tokenizer does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in (REPO_ROOT / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    bos, eos, pad = SPECIALS[style]
    tok = Tokenizer(models.BPE())
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = [bos, eos, pad, *LLAMA3_EXTRA]
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = [bos, eos, pad]
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if style == "llama3":
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.save_pretrained(folder)
    return fast


def random_llama(folder: Path, device: str = "cpu", dtype=None, vocab_size: int | None = None, seed: int = 0,
                 tokenizer: str = "chatml", **shape) -> Path:
    """A Llama with random weights (from `seed`) of the given shape and a trained tokenizer (`tokenizer`:
    its style, see train_tokenizer), saved like any hub model (written under a temporary name, then
    renamed). `vocab_size` defaults to the tokenizer's."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    fast = train_tokenizer(tmp, style=tokenizer)
    config = LlamaConfig(vocab_size=vocab_size or len(fast), bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def random_like(source: Path, folder: Path) -> Path:
    """A model with `source`'s config.json and tokenizer files and random weights (bf16, made on the GPU
    where there is one): the default model's shape and tokens on a machine that cannot carry its weights,
    for timing the workbook there."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.gguf"))
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


# --- an OIG-format file of the real one's size --------------------------------------------------------

OIG_ROWS = 210_289  # rows in LAION's unified_chip2.jsonl, the post's dataset


def oig_file(path: Path, rows: int = OIG_ROWS, seed: int = 0) -> Path:
    """A JSONL file in the layout of OIG `unified_chip2` (`{"text": "<human>: ...\\n<bot>: ...",
    "metadata": {...}}`): 1-3 turns a row, questions of 4-40 words, answers log-normally spread around
    ~45 words with a long tail, and 0.3% of rows far longer than 2048 tokens. The words come from the
    bundled data, so any tokenizer cuts them like real English. Written under a temporary name first."""
    import random

    rng = random.Random(seed)
    vocab = sorted({w for line in (REPO_ROOT / "data" / "pip_chip2.jsonl").read_text().splitlines()
                    for w in json.loads(line)["text"].replace("<human>:", " ").replace("<bot>:", " ").split()})

    def words(n: int) -> str:
        return " ".join(rng.choices(vocab, k=n))

    tmp = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            turns = rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
            parts = []
            for _ in range(turns):
                if rng.random() < 0.003:  # the tail: essays, code listings, long lists
                    answer = rng.randint(1800, 3500)
                else:
                    answer = min(1200, max(1, int(rng.lognormvariate(3.3, 0.9))))
                parts.append(f"<human>: {words(rng.randint(4, 30))}?\n<bot>: {words(answer)}.")
            f.write(json.dumps({"text": "\n".join(parts), "metadata": {"source": "synthetic_chip2"}}) + "\n")
    tmp.replace(path)
    return path


# --- a checkpoint stored pre-quantized, like the hub's `-bnb-4bit` repos --------------------------------

def prequantized_llama(folder: Path, scratch: Path, seed: int = 0, tokenizer: str = "chatml", **shape) -> Path:
    """A random Llama saved *pre-quantized*: bitsandbytes nf4 weights with double quantization and a
    `quantization_config` in config.json, no 16-bit copy of the linear weights (the layout of
    `unsloth/Meta-Llama-3.1-8B-bnb-4bit`). Made by saving random bf16 weights (from `seed`, with a
    `tokenizer`-style tokenizer) to `scratch`, loading them back in 4-bit and saving that. Needs an
    NVIDIA GPU. An existing `folder` is kept as it is."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if (folder / "config.json").exists():
        return folder
    shutil.rmtree(scratch, ignore_errors=True)
    bf16 = random_llama(scratch, device="cuda", dtype=torch.bfloat16, seed=seed, tokenizer=tokenizer, **shape)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(bf16, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(bf16).save_pretrained(tmp)
    del model
    torch.cuda.empty_cache()
    shutil.rmtree(bf16)
    tmp.rename(folder)
    return folder


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers.synthetic",
                                 description="Make test data: an OIG-format file of the real one's size "
                                             "(oig PATH), or a random-weight model shaped like a folder's "
                                             "config and tokenizer (like SOURCE PATH).")
    ap.add_argument("what", choices=["oig", "like"])
    ap.add_argument("args", type=Path, nargs="+")
    ap.add_argument("--rows", type=int, default=OIG_ROWS)
    args = ap.parse_args(argv)
    if args.what == "like":
        source, path = args.args
        random_like(source, path)
        print(f"wrote {path}: random weights shaped like {source}")
        return 0
    path = args.args[0]
    oig_file(path, args.rows)
    print(f"wrote {path} ({args.rows} rows, {path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
