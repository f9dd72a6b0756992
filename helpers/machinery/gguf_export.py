"""Write a merged Llama model as one GGUF file (llama.cpp, Ollama, LM Studio) with the `gguf` package
alone: no llama.cpp checkout, no compiler (the Ollama `Modelfile` beside it: helpers.machinery.ollama).

What llama.cpp's own converter does for the Llama architecture, and this module does the same:
- tensors renamed to GGUF's names (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`),
  and the rows of q and k permuted from transformers' rotate-half RoPE layout into the interleaved one
  llama.cpp computes with (transformers permutes them back when it reads a GGUF file);
- 2-D weights in the chosen type (`q8_0`: 8-bit blocks of 32 with one scale each, `f16`, `bf16` or
  `f32`), norms in f32; a Llama 3.1 RoPE scaling as llama.cpp's `rope_freqs` tensor;
- the hyper-parameters, and the tokenizer as GPT-2-style BPE: every token with its type (normal,
  control, user-defined), the merges, BOS/EOS/PAD ids and the chat template.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.machinery.gguf_meta import (UnsupportedModel, llama3_rope_factors, permute_for_rope, read_config,
                                         rope_scaling, rope_theta, vocabulary)

OUTTYPES = ("q8_0", "f16", "bf16", "f32")


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
        import pandas as pd

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


def _tensor_type(shape: tuple[int, ...], outtype: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32":
        return Q.F32
    if outtype == "q8_0":
        return Q.Q8_0 if shape[-1] % 32 == 0 else Q.F16  # blocks of 32 along a row
    return Q.BF16 if outtype == "bf16" else Q.F16


CHUNK_VALUES = 2**24  # values quantized at once on the GPU: a few hundred MB of temporaries at most


def _q8_0(tensor):
    """Q8_0 in torch, as gguf's quantizer (and ggml's reference) computes it, step for step: per block
    of 32 the scale d = max|x| / 127, then x * (1/d) rounded half away from zero, d stored as f16. Every
    step is one IEEE float32 operation, so the bytes are the same on a CPU or a GPU (the divisions divide
    by a tensor: torch turns a division by a Python number into a multiplication by its inverse)."""
    import torch

    blocks = tensor.reshape(-1, 32)
    d = blocks.abs().amax(1, keepdim=True) / torch.full_like(blocks[:, :1], 127.0)
    inverse = torch.where(d == 0, torch.zeros_like(d), torch.ones_like(d) / d)
    x = blocks * inverse
    a = x.abs()
    floored = a.floor()
    qs = torch.sign(x) * (floored + (2 * (a - floored)).floor())
    return torch.cat([d.half().view(torch.uint8), qs.to(torch.int8).view(torch.uint8)], 1)


def quantized(tensor, qtype, pool=None):
    """`tensor` (any float dtype) in GGUF type `qtype`, as the numpy bytes the file holds, byte for byte
    what the gguf package's quantizer writes from its float32 values. A tensor on the GPU is quantized
    there (`quantized_in_torch`); on the CPU, gguf's own quantizer runs on blocks of about a million
    values in `pool`'s threads (numpy lets go of the interpreter lock inside, and a block's temporaries
    stay in the cache: on this 2-core CPU 6x quicker than the same steps in torch)."""
    import gguf
    import numpy as np

    if tensor.device.type != "cpu":
        return quantized_in_torch(tensor, qtype)
    array = tensor.float().numpy()
    if pool is None or array.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        return gguf.quants.quantize(array, qtype)
    rows = array.reshape(-1, array.shape[-1])
    step = max(1, 2**20 // rows.shape[1])
    parts = list(pool.map(lambda block: gguf.quants.quantize(block, qtype),
                          [rows[i:i + step] for i in range(0, len(rows), step)]))
    out = np.concatenate(parts)
    return out.reshape(*array.shape[:-1], out.shape[-1])


def quantized_in_torch(tensor, qtype):
    """`quantized` in torch, on the tensor's device, converted to float32 a slice at a time (the 8B
    model's embedding is 2.1 GB in float32): the same bytes (the tests check it on a CPU and a GPU)."""
    import gguf
    import numpy as np
    import torch

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return tensor.float().cpu().numpy()
    if qtype in (Q.F16, Q.BF16):  # round to nearest even, as gguf does (NaN payloads aside)
        half = tensor.to(torch.float16 if qtype == Q.F16 else torch.bfloat16).cpu()
        return half.numpy() if qtype == Q.F16 else half.view(torch.int16).numpy().view(np.uint8)
    if qtype != Q.Q8_0:
        raise ValueError(f"{qtype.name}: the workbook's GGUF writer quantizes to {', '.join(OUTTYPES)}")
    rows = tensor.reshape(-1, tensor.shape[-1])
    step = max(1, CHUNK_VALUES // rows.shape[1])
    out = np.empty((rows.shape[0], rows.shape[1] // 32 * 34), dtype=np.uint8)
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = _q8_0(rows[i:i + step].float()).reshape(-1, out.shape[1]).cpu().numpy()
    return out.reshape(*tensor.shape[:-1], out.shape[-1])


def quantizing_device(largest_bytes: int) -> str:
    """Where the tensors are converted: the GPU when it has room under the cap (whole-card use counted)
    for the largest tensor (in float32, the worst case) twice over (q and k are permuted into a copy)
    and one slice's temporaries; otherwise the CPU, on as many threads as torch is given."""
    import torch

    if torch.cuda.is_available():
        from helpers.machinery import memory

        if memory.card_budget_bytes() > 2 * largest_bytes + 12 * 4 * CHUNK_VALUES:
            return "cuda"
    return "cpu"


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def write(folder: Path, target: Path, outtype: str = "q8_0", name: str | None = None) -> Written:
    """`folder` (a merged transformers Llama: safetensors, config.json, tokenizer.json) as one GGUF file at
    `target`, written under a temporary name and renamed when complete."""
    import gguf
    import numpy as np

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
    special = {}  # a list (Llama 3.1's several EOS ids) gives its first
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = tokenizer_config.get(key, config.get(key))
        special[key] = value[0] if isinstance(value, list) else value
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        if special[key] is not None:
            add(int(special[key]))
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
        qtype = _tensor_type(shape, outtype)
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
    count = len(plan)
    ids = " / ".join(str(value) for value in special.values())
    rope = f"base {rope_theta(config):g}" + ("" if scaling["kind"] == "default" else f", {scaling['kind']} scaling")
    facts = {"architecture": "llama", "layers": config["num_hidden_layers"],
             "context length": config["max_position_embeddings"], "attention heads (key/value)": f"{heads} ({kv_heads})",
             "RoPE": rope,
             "vocabulary": f"{len(tokens):,} tokens, {len(merges):,} merges", "pre-tokenizer": pre,
             "BOS / EOS / PAD ids": ids, "chat template": "stored" if template else "none",
             "tensors": ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
             + (" + rope_freqs" if scaling["kind"] == "llama3" else ""),
             "converted on": "the GPU" if device == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"}
    return Written(target, outtype, time.perf_counter() - start, count, facts, parts)


