"""Write a merged Llama model as one GGUF file (llama.cpp, Ollama, LM Studio) with the `gguf` package
alone: no llama.cpp checkout, no compiler (the Ollama `Modelfile` beside it: helpers.export.ollama).

What llama.cpp's own converter does for the Llama architecture, and this module does the same:
- tensors renamed to GGUF's names (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`),
  and the rows of q and k permuted from transformers' rotate-half RoPE layout into the interleaved one
  llama.cpp computes with (transformers permutes them back when it reads a GGUF file);
- 2-D weights in the chosen type (`q8_0`: 8-bit blocks of 32 with one scale each; `q4_k_m`, `q5_k_m`,
  `q6_k`: llama.cpp's K-quant mixes; `f16`, `bf16` or `f32`: helpers.export.gguf_quantize), norms in
  f32; a Llama 3.1 RoPE scaling as llama.cpp's `rope_freqs` tensor;
- the hyper-parameters, and the tokenizer as GPT-2-style BPE: every token with its type (normal,
  control, user-defined), the merges, BOS/EOS/PAD ids and the chat template.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.export.gguf_meta import (UnsupportedModel, llama3_rope_factors, permute_for_rope, read_config,
                                         rope_scaling, rope_theta, turn_end_id, vocabulary)
from helpers.export.gguf_quantize import FILE_TYPES, OUTTYPES, quantized, quantizing_device, tensor_type


@dataclass
class Written:
    path: Path
    outtype: str
    seconds: float
    tensors: int | None
    facts: dict = field(default_factory=dict)  # what went into the file, as 07 shows it
    parts: dict = field(default_factory=dict)  # seconds spent reading + converting, and writing

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def table(self):
        rows = [*self.facts.items(), ("size", f"{self.size_mb:.1f} MB")]
        return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def _shapes(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """name -> (its safetensors file, its shape), read from the files' headers alone."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no safetensors weights")
    shapes = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                shapes[name] = (file, tuple(f.get_slice(name).get_shape()))
    return shapes


def write(folder: Path, target: Path, outtype: str = "q8_0", name: str | None = None) -> Written:
    """`folder` (a merged transformers Llama: safetensors, config.json, tokenizer.json) as one GGUF file at
    `target`, written under a temporary name and renamed when complete."""
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"gguf_outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    folder, target = Path(folder), Path(target)
    start = time.perf_counter()
    config = read_config(folder)
    scaling = rope_scaling(config)
    tokens, types, merges, pre = vocabulary(folder, config["vocab_size"])
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").exists() else {}
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else tokenizer_config.get("chat_template")

    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    tmp = target.with_name(f".{target.name}.partial")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(name or folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    if scaling["kind"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {key: tokenizer_config.get(key, config.get(key)) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    special = {key: value[0] if isinstance(value, list) else value  # Llama 3.1 names several EOS ids: the first
               for key, value in special.items()}
    for key, value in special.items():
        if value is not None:
            getattr(writer, f"add_{key}")(int(value))  # add_bos_token_id, add_eos_token_id, add_pad_token_id
    turn_end = turn_end_id(folder, tokens)
    if turn_end is not None and turn_end != special["eos_token_id"]:
        writer.add_eot_token_id(turn_end)  # so llama.cpp stops there whatever the token's name
    writer.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", False)))
    if template:
        writer.add_chat_template(template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", False)
    # The plan first (names, shapes and types from the headers), so that the file's header can be written
    # before any data and each tensor streamed to disk as it is converted: one tensor in memory at a time.
    plan = []  # (GGUF name, transformers name or None for rope_freqs, GGUF type)
    Q = gguf.GGMLQuantizationType
    if scaling["kind"] == "llama3":
        factors = np.asarray(llama3_rope_factors(config), dtype=np.float32)
        writer.add_tensor_info(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], factors.shape, np.float32,
                               factors.nbytes, raw_dtype=Q.F32)
        plan.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], None, Q.F32))
    shapes = _shapes(folder)
    for hf_name, (_, shape) in shapes.items():
        if tied and hf_name == "lm_head.weight":
            continue  # the output layer is the embedding matrix: llama.cpp reuses token_embd
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedModel(f"{folder}: tensor {hf_name} has no GGUF name for the Llama architecture")
        qtype = tensor_type(gguf_name, shape, outtype, config["num_hidden_layers"], tied)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(gguf_name, shape, np.float32, math.prod(shape) // block * size, raw_dtype=qtype)
        plan.append((gguf_name, hf_name, qtype))

    parts = {"reading and converting": 0.0, "writing": 0.0}  # the first in a thread beside the second

    def convert(hf_name, qtype):
        from safetensors import safe_open

        began = time.perf_counter()
        with safe_open(shapes[hf_name][0], "pt") as f:
            tensor = f.get_tensor(hf_name).to(device)
        if hf_name.endswith("q_proj.weight"):
            tensor = permute_for_rope(tensor, heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = permute_for_rope(tensor, kv_heads)
        array = quantized(tensor.contiguous(), qtype, cores)
        parts["reading and converting"] += time.perf_counter() - began
        return array

    from concurrent.futures import ThreadPoolExecutor

    import torch  # on the CPU its thread count follows OMP_NUM_THREADS (a workshop's share of the cores)

    device = quantizing_device(max(4 * math.prod(shape) for _, shape in shapes.values()))
    kinds = {}
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        if scaling["kind"] == "llama3":
            writer.write_tensor_data(factors)  # first in the plan, as in the header
        weights = [(hf, q) for _, hf, q in plan if hf is not None]
        with ThreadPoolExecutor(torch.get_num_threads()) as cores, ThreadPoolExecutor(1) as ahead:
            # the next tensor is read and converted (on the GPU, or every core) while this one is written
            upcoming = ahead.submit(convert, *weights[0])
            for i, (hf_name, qtype) in enumerate(weights):
                array = upcoming.result()
                if i + 1 < len(weights):
                    upcoming = ahead.submit(convert, *weights[i + 1])
                began = time.perf_counter()
                writer.write_tensor_data(array)
                parts["writing"] += time.perf_counter() - began
                kinds[qtype.name] = kinds.get(qtype.name, 0) + 1
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)  # nothing half-written stays behind
        raise
    finally:
        if device == "cuda":  # what the conversion cached goes back to the card, for the cells after this one
            torch.cuda.empty_cache()
    writer.close()
    tmp.replace(target)
    ids = " / ".join(str(value) for value in special.values())
    rope = f"base {rope_theta(config):g}" + ("" if scaling["kind"] == "default" else f", {scaling['kind']} scaling")
    facts = {"architecture": "llama", "layers": config["num_hidden_layers"],
             "context length": config["max_position_embeddings"], "attention heads (key/value)": f"{heads} ({kv_heads})",
             "RoPE": rope,
             "vocabulary": f"{len(tokens):,} tokens, {len(merges):,} merges", "pre-tokenizer": pre,
             "BOS / EOS / PAD ids": ids, "chat template": "stored" if template else "none",
             "end of turn": "none" if turn_end is None else f"{tokens[turn_end]} (id {turn_end}"
             + (", the EOS)" if turn_end == special["eos_token_id"] else ", stored as EOT)"),
             "tensors": ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
             + (" + rope_freqs" if scaling["kind"] == "llama3" else ""),
             "converted on": "the GPU" if device == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"}
    return Written(target, outtype, time.perf_counter() - start, len(plan), facts, parts)


