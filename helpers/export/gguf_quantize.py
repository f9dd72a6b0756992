"""The type of each tensor in a GGUF file and its bytes in that type: f32, f16, bf16 and q8_0 (the gguf
package's own quantizer on the CPU, the same steps in torch on a GPU), and llama.cpp's K-quant mixes
q4_k_m, q5_k_m and q6_k (helpers.export.kquants, in torch on either)."""
from __future__ import annotations

import numpy as np
import torch

from helpers.export import kquants


OUTTYPES = ("q8_0", "q4_k_m", "q5_k_m", "q6_k", "f16", "bf16", "f32")
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}


def tensor_type(gguf_name: str, shape: tuple[int, ...], outtype: str, layers: int, tied: bool):
    """The GGML type tensor `gguf_name` of `shape` is written in, for the file type `outtype`."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32":
        return Q.F32
    if outtype in kquants.MIXES:
        return Q[kquants.mix_type(gguf_name, shape, outtype, layers, tied)]
    if outtype == "q8_0":
        return Q.Q8_0 if shape[-1] % 32 == 0 else Q.F16  # blocks of 32 along a row
    return Q.BF16 if outtype == "bf16" else Q.F16


CHUNK_VALUES = 2**24  # values quantized at once on the GPU: a few hundred MB of temporaries at most


def _q8_0(tensor):
    """Q8_0 in torch, as gguf's quantizer (and ggml's reference) computes it, step for step: per block
    of 32 the scale d = max|x| / 127, then x * (1/d) rounded half away from zero, d stored as f16. Every
    step is one IEEE float32 operation, so the bytes are the same on a CPU or a GPU (the divisions divide
    by a tensor: torch turns a division by a Python number into a multiplication by its inverse)."""
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
    stay in the cache: on this 2-core CPU 6x quicker than the same steps in torch). K-quants, which the
    gguf package cannot write, are computed in torch wherever the tensor is (`k_quantized`)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype.name in kquants.QUANTIZERS:
        return k_quantized(tensor, qtype)
    if tensor.device.type != "cpu":
        if qtype not in (Q.Q5_0, Q.Q5_1):  # those two only as a K-quant's fallback, on short rows
            return quantized_in_torch(tensor, qtype)
        tensor = tensor.cpu()
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


def k_quantized(tensor, qtype):
    """`tensor` as K-quant blocks of 256 along each row (`kquants`), in torch on the tensor's device, a
    slice of rows at a time (a K-quant's trial scales keep about twenty float32 temporaries of a slice)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = tensor.reshape(-1, tensor.shape[-1])
    if rows.shape[1] % block:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {block} values, not {rows.shape[1]}")
    quantize = kquants.QUANTIZERS[qtype.name]
    width = rows.shape[1] // block * size
    step = max(1, CHUNK_VALUES // 4 // rows.shape[1])
    out = np.empty((rows.shape[0], width), dtype=np.uint8)
    for i in range(0, rows.shape[0], step):
        part = rows[i:i + step].float().reshape(-1, block)
        out[i:i + step] = quantize(part).reshape(-1, width).cpu().numpy()
    return out.reshape(*tensor.shape[:-1], width)


def quantizing_device(largest_bytes: int) -> str:
    """Where the tensors are converted: the GPU when it has room under the cap (whole-card use counted)
    for the largest tensor (in float32, the worst case) twice over (q and k are permuted into a copy)
    and one slice's temporaries; otherwise the CPU, on as many threads as torch is given."""
    if torch.cuda.is_available():
        from helpers.model import memory

        if memory.card_budget_bytes() > 2 * largest_bytes + 12 * 4 * CHUNK_VALUES:
            return "cuda"
    return "cpu"


