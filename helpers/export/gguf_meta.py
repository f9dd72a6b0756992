"""What llama.cpp must be told of a merged Llama, read from its config.json and tokenizer.json: the
architecture, RoPE (and Llama 3.1's frequency scaling, as llama.cpp's `rope_freqs`), the q/k row
order llama.cpp computes with, and the vocabulary as GPT-2-style BPE with its pre-tokenizer's name."""
from __future__ import annotations

import json
import math
from pathlib import Path

from helpers.data.formats import end_of_turn_token


ARCHITECTURES = ("LlamaForCausalLM",)  # SmolLM2 and Llama 3.1 are both Llama
TOKEN_TYPES = {"normal": 1, "control": 3, "user_defined": 4}  # llama.cpp's token types
LLAMA3_PRETOKENIZER = r"\p{N}{1,3}"  # the digit rule that tells Llama 3's split regex from others


class UnsupportedModel(ValueError):
    """The merged model is not one this writer handles; the message names what and why."""


def read_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise UnsupportedModel(f"{folder}: architecture {arch} is not one the workbook's GGUF writer handles "
                               f"({', '.join(ARCHITECTURES)}); llama.cpp's convert_hf_to_gguf.py covers many more.")
    return config


def rope_theta(config: dict) -> float:
    return float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def rope_scaling(config: dict) -> dict:
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = (scaling.get("rope_type") or scaling.get("type") or "default").lower()
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedModel(f"RoPE scaling '{kind}' is not one the workbook's GGUF writer handles "
                               f"(default, linear, llama3).")
    return {**scaling, "kind": kind}


def llama3_rope_factors(config: dict) -> list[float]:
    """Llama 3.1's RoPE frequency scaling as llama.cpp stores it: one divisor per frequency pair."""
    scaling = rope_scaling(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor, low, high = scaling.get("factor", 8.0), scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context, theta = scaling.get("original_max_position_embeddings", 8192), rope_theta(config)
    factors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def permute_for_rope(weight, heads: int):
    """q/k rows from transformers' layout (each head's first half, then second half) into llama.cpp's
    (the two halves interleaved), as convert_hf_to_gguf.py does."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def pretokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`tokenizer.ggml.pre`): one of the
    names its vocabulary loader (src/llama-vocab.cpp) accepts, which refuses any other and so the file."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if any(s.get("type") == "Split" and LLAMA3_PRETOKENIZER in json.dumps(s.get("pattern", {})).replace("\\\\", "\\")
           for s in steps):
        return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name; "gpt2" is the *tokenizer model* (tokenizer.ggml.model)
    raise UnsupportedModel(f"the tokenizer splits text with {kinds}, which the workbook's GGUF writer cannot name "
                           f"for llama.cpp (it knows GPT-2's, SmolLM's and Llama 3's)")


def vocabulary(folder: Path, vocab_size: int):
    """(tokens, token types, merges, pre-tokenizer name) from tokenizer.json, as llama.cpp lists them;
    rows of an embedding larger than the vocabulary (`vocab_size`) get placeholder tokens."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise UnsupportedModel(f"{folder}: a {model.get('type')} tokenizer; the GGUF writer handles byte-level BPE")
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TOKEN_TYPES["control" if added[i]["special"] else "user_defined"])
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TOKEN_TYPES["normal"])
        else:  # the embedding matrix is larger than the vocabulary: unused rows
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_TYPES["user_defined"])
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    return tokens, types, merges, pretokenizer_name(data)


def turn_end_id(folder: Path, tokens: list[str]) -> int | None:
    """The id of the token the chat template closes an assistant's answer with (`<|im_end|>`,
    `<|eot_id|>`), which generation must stop at; None when the template writes none."""
    from transformers import AutoTokenizer


    end = end_of_turn_token(AutoTokenizer.from_pretrained(folder))
    return tokens.index(end) if end in tokens else None


def stored(path: Path) -> dict:
    """What a GGUF file says about chatting with it: its EOS and EOT ids (None where unset) and the chat
    template it stores (None where none)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key):
        field = fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        return bytes(part).decode("utf-8") if part.dtype.kind == "u" and part.dtype.itemsize == 1 else int(part[0])

    return {"eos_token_id": value("tokenizer.ggml.eos_token_id"), "eot_token_id": value("tokenizer.ggml.eot_token_id"),
            "chat_template": value("tokenizer.chat_template")}
