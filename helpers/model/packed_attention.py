"""Attention over packed rows in one flash-kernel call per layer, for unsloth on torch < 2.12.

With packing and padding-free passes, TRL's collator lays a pass's examples end to end in one row and
unsloth attends within each example. Its fast route for that is torch.nn.attention.varlen.varlen_attn,
which it takes only when that function has an `enable_gqa` argument (torch 2.12 on). On torch 2.11
(the GPU machine's) it falls back to one SDPA call per run of equal example lengths, with slicing and
concatenation around each: on the H200 that is most of a packed step's time (docs/benchmarks.md).

torch 2.11's flash kernel itself takes the segment offsets (cu_seqlens) and grouped KV heads, so
`route_packed_attention` hands unsloth a function with varlen_attn's signature that calls it. unsloth
reads the function from its module at call time, and still decides per call whether to use it (CUDA,
bf16/fp16, head size, flash enabled); everything else in its attention stays as it is.
WORKBOOK_PACKED_VARLEN=0 keeps unsloth's own choice.
"""
from __future__ import annotations

import os

import torch


def _flash_varlen():
    class FlashVarlen(torch.autograd.Function):
        """Causal or full attention within each cu_seqlens segment; q (T, H, D), k/v (T, H_kv, D)."""

        @staticmethod
        def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, window):
            out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu_q, cu_k, max_q, max_k, 0.0, is_causal, False, scale=scale, **window)
            ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, seed, offset)
            ctx.args = (max_q, max_k, is_causal, scale, window)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, out, lse, cu_q, cu_k, seed, offset = ctx.saved_tensors
            max_q, max_k, is_causal, scale, window = ctx.args
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                grad.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, 0.0, is_causal, seed, offset,
                scale=scale, **window)
            return dq, dk, dv, None, None, None, None, None, None, None

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        # enable_gqa needs nothing: the flash kernel reads H // H_kv from the shapes.
        window_size = tuple(window_size)
        is_causal = window_size == (-1, 0)
        window = {} if window_size in ((-1, 0), (-1, -1)) else {
            "window_size_left": window_size[0], "window_size_right": window_size[1]}
        return FlashVarlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, window)

    varlen_attn.from_workbook = True
    return varlen_attn


def route_packed_attention() -> bool:
    """Give unsloth torch's flash varlen kernel for packed rows where it has none; True if it was given.
    Call after `import unsloth`. Does nothing without an NVIDIA GPU of sm80 or later with flash
    attention, where unsloth has its own route already, or with WORKBOOK_PACKED_VARLEN=0 (or unsloth's
    UNSLOTH_TORCH_VARLEN=0)."""
    off = ("0", "false", "no", "off")
    if os.environ.get("WORKBOOK_PACKED_VARLEN", "1").lower() in off or \
            os.environ.get("UNSLOTH_TORCH_VARLEN", "1").lower() in off:  # unsloth's own switch for this route
        return False
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    if torch.cuda.get_device_capability()[0] < 8 or not torch.backends.cuda.is_flash_attention_available():
        return False
    from unsloth.utils import attention_dispatch

    routed = attention_dispatch._TORCH_VARLEN_ATTN
    if routed is not None:
        return getattr(routed, "from_workbook", False)  # else unsloth's own route (torch >= 2.12)
    attention_dispatch._TORCH_VARLEN_ATTN = _flash_varlen()
    return True
