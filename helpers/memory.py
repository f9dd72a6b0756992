"""`use_gradient_checkpointing="auto"`: recompute activations only when keeping them would not fit.

Checkpointing saves the activation memory of every transformer block at the price of a second
forward pass (LoRA training costs about 6 x params FLOPs a token with it, 4 x without). On a card
with room to spare, turning it off is the cheapest speed-up there is.
"""
from __future__ import annotations

import os

CAP_ENV = "WORKBOOK_GPU_MEMORY_GIB"
SAFETY = 1.25  # allocator fragmentation, the optimizer's transient buffers, CUDA workspaces


def activation_bytes(config, batch_size: int, seq_len: int) -> int:
    """Bytes that one micro-batch keeps for the backward pass without checkpointing.

    Per token and block, a Llama-style block saves (in 16-bit) about 8 hidden-size vectors (norm
    inputs and outputs, q, o_proj input, residuals, attention output), 3 key/value-size vectors
    (k, v, rotated k) and 5 MLP-size vectors (gate, up, activation, product, down input); the LM
    head adds fp32 logits and their gradient.
    """
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_token_block = (8 * h + 3 * kv + 5 * inter) * 2
    logits = config.vocab_size * 4 * 2
    return batch_size * seq_len * (config.num_hidden_layers * per_token_block + logits)


def choose_checkpointing(requested, config, batch_size: int, seq_len: int, free_bytes: int | None = None):
    """(choice, reason): "auto" becomes False when the activations fit the free GPU memory, else the
    backend's checkpointing ("unsloth"); any other request is returned as it is."""
    if requested != "auto":
        return requested, None
    import torch

    if free_bytes is None:
        if not torch.cuda.is_available():
            return False, "no GPU: memory is not the constraint"
        free_bytes = free_gpu_bytes()
    need = activation_bytes(config, batch_size, seq_len) * SAFETY
    gib = 2**30
    if need < free_bytes:
        return False, f"activations need ~{need / gib:.1f} GiB, {free_bytes / gib:.1f} GiB free"
    return "unsloth", f"activations would need ~{need / gib:.1f} GiB, only {free_bytes / gib:.1f} GiB free"


def gpu_cap_bytes() -> int | None:
    """The GPU memory this process may use, from WORKBOOK_GPU_MEMORY_GIB (None: the whole card). Set it
    to rehearse a smaller card on a larger one, e.g. 15 for a 16 GB T4 (what a free Colab has)."""
    value = os.environ.get(CAP_ENV)
    return int(float(value) * 2**30) if value else None


def apply_gpu_cap() -> None:
    """Make PyTorch's allocator refuse to go past the cap (an out-of-memory error, as on the small card)."""
    cap = gpu_cap_bytes()
    if cap is None:
        return
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)


def free_gpu_bytes() -> int:
    """Free GPU memory for this process: the card's free memory, or less under a cap."""
    import torch

    free = torch.cuda.mem_get_info()[0]
    cap = gpu_cap_bytes()
    return free if cap is None else min(free, cap - torch.cuda.memory_reserved())
