"""llama.cpp's K-quants (Q4_K, Q5_K, Q6_K) and its q4_k_m / q5_k_m / q6_k mixes, in torch: no compiler,
on the CPU or the GPU. The gguf package reads these types but writes none of them.

Each function follows llama.cpp's reference quantizer (ggml-quants.c: `quantize_row_q4_K_ref`,
`_q5_K_ref`, `_q6_K_ref`, with `make_qkx2_quants` and `make_qx_quants`), which is what `llama-quantize`
runs when no importance matrix is given, step for step but for all blocks at once: a block of 256
values splits into 8 sub-blocks of 32 (Q4_K, Q5_K: a scale and a min each, searched over 21 or 16 trial
scales, then quantized to 6 bits against two f16 super-scales) or 16 of 16 (Q6_K: a signed scale each,
19 trials, 8-bit scales against one f16 super-scale). Sums run in llama.cpp's order, but its compiler
may fuse a multiply and an add into one rounding, so a value on a rounding boundary can land on the
other side: tests/test_kquants.py measures how many blocks come out byte for byte the same (99.7-100%)
and compares the errors.
"""
from __future__ import annotations

import torch

QK_K = 256


def _f32(value: float, like):
    """A float32 scalar tensor: arithmetic with it stays float32 and divisions stay divisions."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _half(x):
    """f16 as llama.cpp stores it (round to nearest even), and its float32 value back."""
    h = x.half()
    return h, h.float()


def _sum(x):
    """Sums along the last axis in llama.cpp's order, one element after the other. torch's own sum adds
    in another order, and not the same one on a CPU and a GPU: a scale a rounding apart moves a block's
    f16 super-scale, and an error a rounding apart picks another trial scale."""
    total = x[..., 0].clone()
    for i in range(1, x.shape[-1]):
        total += x[..., i]
    return total


def _or_one(value, keep):
    """`value` where `keep`, else 1: a divisor that is never zero, for results the caller then discards."""
    return torch.where(keep, value, torch.ones_like(value))


def _best_scale_and_min(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """`make_qkx2_quants` for every row of x (sub-blocks of 32): the scale, the min (as a positive
    offset) and the levels 0..nmax minimizing the w-weighted squared error over the trial scales."""
    lo = x.amin(-1).clamp(max=0)  # the min is never above 0
    hi = x.amax(-1)
    flat = hi == lo
    span = _or_one(hi - lo, ~flat)
    sum_w, sum_x = _sum(w), _sum(w * x)
    nmax_t = _f32(nmax, x)
    iscale = nmax_t / span
    scale = _f32(1.0, x) / iscale
    levels = torch.clamp(torch.round(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    best = _sum(w * (scale[:, None] * levels + lo[:, None] - x) ** 2)
    for step in range(nstep + 1):
        # as in llama.cpp, each trial starts from the best min so far (its span too)
        span = _or_one(hi - lo, ~flat)
        trial = _f32(rmin, x) + _f32(rdelta, x) * step + nmax_t
        aux = torch.clamp(torch.round((trial / span)[:, None] * (x - lo[:, None])), 0, nmax)
        wl = w * aux
        sum_l, sum_l2, sum_xl = _sum(torch.stack([wl, wl * aux, wl * x]))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / _or_one(det, det > 0)
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / _or_one(det, det > 0)
        positive = this_min > 0
        this_scale = torch.where(positive, sum_xl / _or_one(sum_l2, sum_l2 > 0), this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        error = _sum(w * (this_scale[:, None] * aux + this_min[:, None] - x) ** 2)
        better = (det > 0) & (error < best)
        levels = torch.where(better[:, None], aux, levels)
        best = torch.where(better, error, best)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    levels = torch.where(flat[:, None], torch.zeros_like(levels), levels)
    return scale, -lo, levels


def _scales_and_mins(x, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Q4_K/Q5_K's first half: per sub-block of 32 the scale, min and levels, the scales and mins as
    6-bit numbers against the two f16 super-scales, the 12 packed scale bytes, and the final levels."""
    blocks = x.reshape(-1, 8, 32)
    av = torch.sqrt(_sum(blocks * blocks) / _f32(32.0, x))
    w = av[..., None] + blocks.abs()
    scale, mins, levels = _best_scale_and_min(blocks.reshape(-1, 32), w.reshape(-1, 32), nmax, rmin, rdelta, nstep)
    scale, mins, levels = scale.reshape(-1, 8), mins.reshape(-1, 8), levels.reshape(-1, 8, 32)
    max_scale = scale.amax(-1).clamp(min=0)
    max_min = mins.amax(-1).clamp(min=0)
    sixty_three = _f32(63.0, x)
    inv_scale = torch.where(max_scale > 0, sixty_three / _or_one(max_scale, max_scale > 0), 0.0)
    inv_min = torch.where(max_min > 0, sixty_three / _or_one(max_min, max_min > 0), 0.0)
    # llama.cpp keeps nearest_int's result in a uint8_t, then caps it at 63
    ls = (torch.round(inv_scale[:, None] * scale).to(torch.int32) & 0xFF).clamp(max=63)
    lm = (torch.round(inv_min[:, None] * mins).to(torch.int32) & 0xFF).clamp(max=63)
    packed = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=x.device)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d, d32 = _half(max_scale / sixty_three)
    dmin, dmin32 = _half(max_min / sixty_three)
    step = d32[:, None] * ls.float()
    offset = dmin32[:, None] * lm.float()
    safe = _or_one(step, step != 0)
    final = torch.clamp(torch.round((blocks + offset[..., None]) / safe[..., None]), 0, nmax)
    levels = torch.where((step != 0)[..., None], final, levels).to(torch.int32)
    head = torch.cat([d.view(torch.uint8).reshape(-1, 2), dmin.view(torch.uint8).reshape(-1, 2),
                      packed.to(torch.uint8)], 1)
    return head, levels.reshape(-1, QK_K)


def q4_k(x):
    """Blocks of 256 float32 values (rows of `x`) as Q4_K: 144 bytes each (4.5 bits a weight)."""
    head, levels = _scales_and_mins(x, 15, -1.0, 0.1, 20)
    levels = levels.reshape(-1, 4, 2, 32)  # 4 groups of 64: the low nibble the first 32, the high the next
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 4)).reshape(-1, 128)
    return torch.cat([head, qs.to(torch.uint8)], 1)


def q5_k(x):
    """Blocks of 256 as Q5_K: 176 bytes each (5.5 bits): 4 low bits in qs, the fifth in qh."""
    head, levels = _scales_and_mins(x, 31, -0.5, 0.1, 15)
    levels = levels.reshape(-1, 4, 2, 32)
    low = levels & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = levels >> 4  # 0 or 1; group k's pair sets bits 2k and 2k+1 of qh[j]
    shifts = (2 * torch.arange(4, device=x.device)).reshape(1, 4, 1)
    qh = ((high[:, :, 0] << shifts) | (high[:, :, 1] << (shifts + 1))).sum(1)
    return torch.cat([head, qh.to(torch.uint8), qs.to(torch.uint8)], 1)


def _signed_scales(x, nmax: int):
    """`make_qx_quants` (rmse_type 1: weights x^2) for every row of x (sub-blocks of 16): the scale and
    the levels 0..2*nmax-1 from 19 trial scales around -nmax / (the value of largest magnitude)."""
    index = x.abs().argmax(-1, keepdim=True)  # the first of equal magnitudes, as llama.cpp's loop
    peak = torch.gather(x, -1, index).squeeze(-1)
    zero = x.abs().amax(-1) < 1e-15
    peak = _or_one(peak, ~zero)
    w = x * x

    def trial(numerator):
        levels = torch.clamp(torch.round((numerator / peak)[:, None] * x), -nmax, nmax - 1)
        sumlx, suml2 = _sum(torch.stack([w * x * levels, w * levels * levels]))
        return levels, sumlx, suml2

    levels, sumlx, suml2 = trial(-_f32(nmax, x))
    scale = torch.where(suml2 != 0, sumlx / _or_one(suml2, suml2 != 0), 0.0)
    best = scale * sumlx
    for step in [s for s in range(-9, 10) if s != 0]:
        aux, sumlx, suml2 = trial(-(_f32(nmax, x) + _f32(0.1, x) * step))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        levels = torch.where(better[:, None], aux, levels)
        scale = torch.where(better, sumlx / _or_one(suml2, suml2 > 0), scale)
        best = torch.where(better, scale * sumlx, best)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    levels = torch.where(zero[:, None], torch.full_like(levels, -nmax), levels)
    return scale, levels + nmax


def q6_k(x):
    """Blocks of 256 as Q6_K: 210 bytes each (6.56 bits): 4 low bits in ql, 2 high in qh, 16 int8 scales."""
    blocks = x.reshape(-1, 16, 16)
    scale, levels = _signed_scales(blocks.reshape(-1, 16), 32)
    scale, levels = scale.reshape(-1, 16), levels.reshape(-1, 16, 16)
    index = scale.abs().argmax(-1, keepdim=True)
    max_scale = torch.gather(scale, -1, index).squeeze(-1)
    empty = max_scale.abs() < 1e-15
    iscale = _f32(-128.0, x) / _or_one(max_scale, ~empty)
    d, d32 = _half(_f32(1.0, x) / iscale)
    scales = torch.round(iscale[:, None] * scale).clamp(max=127).to(torch.int32)
    step = d32[:, None] * scales.float()
    safe = _or_one(step, step != 0)
    final = torch.clamp(torch.round(blocks / safe[..., None]), -32, 31) + 32
    levels = torch.where((step != 0)[..., None], final, levels).to(torch.int32).reshape(-1, 2, 4, 32)
    # per half of 128: ql[l] = L[l] | L[l+64] << 4, ql[l+32] = L[l+32] | L[l+96] << 4, qh packs the top 2 bits
    low, high = levels & 0xF, levels >> 4
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], 2).reshape(-1, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(-1, 64)
    out = torch.cat([ql.to(torch.uint8), qh.to(torch.uint8), scales.to(torch.int8).view(torch.uint8),
                     d.view(torch.uint8).reshape(-1, 2)], 1)
    return torch.where(empty[:, None], torch.zeros_like(out), out)


QUANTIZERS = {"Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}

# The mixes, as llama.cpp's llama_tensor_get_type chooses for a Llama model without an importance
# matrix: the mix's main type; Q6_K for the output layer (the embedding when they are tied) and, in
# q4_k_m / q5_k_m, for attn_v and ffn_down of the layers use_more_bits picks.
MIXES = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
# A row not a multiple of 256 long cannot hold K-quant blocks: llama.cpp falls back to these.
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(layer: int, layers: int) -> bool:
    """The layers q4_k_m keeps attn_v and ffn_down at Q6_K in: the first and last eighth, and every third."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def mix_type(gguf_name: str, shape: tuple[int, ...], mix: str, layers: int, tied: bool) -> str:
    """The GGML type name of tensor `gguf_name` (`blk.3.attn_v.weight`, `output.weight`...) in `mix`."""
    if len(shape) < 2:
        return "F32"
    chosen = MIXES[mix]
    if gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight"):
        return "Q8_0" if shape[-1] % QK_K else "Q6_K"  # llama.cpp: Q8_0 for a row of another length
    if mix != "q6_k" and gguf_name.startswith("blk.") and gguf_name.endswith(("attn_v.weight", "ffn_down.weight")):
        if use_more_bits(int(gguf_name.split(".")[1]), layers):
            chosen = "Q6_K"
    return FALLBACK[chosen] if shape[-1] % QK_K else chosen
