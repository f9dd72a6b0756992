"""GPU memory: what fits, under the cap that rehearses a smaller card (WORKBOOK_GPU_MEMORY_GIB).

- `use_gradient_checkpointing="auto"`: recompute activations only when keeping them would not fit.
- `placement`: where a merged folder's weights go when loaded (all on the GPU, GPU + CPU, or the CPU).

Checkpointing saves the activation memory of every transformer block at the price of a second
forward pass (LoRA training costs about 6 x params FLOPs a token with it, 4 x without). On a card
with room to spare, turning it off is the cheapest speed-up there is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CAP_ENV = "WORKBOOK_GPU_MEMORY_GIB"
SAFETY = 1.25  # allocator fragmentation, the optimizer's transient buffers, CUDA workspaces


def block_bytes_per_token(config, backend: str = "hf") -> int:
    """Bytes a Llama-style block saves per token for the backward pass (in 16-bit). Through transformers:
    about 8 hidden-size vectors (norm inputs and outputs, q, o_proj input, residuals, attention output),
    3 key/value-size vectors (k, v, rotated k) and 5 MLP-size vectors (gate, up, activation, product,
    down input). Unsloth's fused kernels keep fewer: 6 hidden-size (the two norms' inputs and outputs, q,
    the attention output), 2 key/value-size and 3 MLP-size (gate, up, and down's input); its norms, RoPE
    and SwiGLU recompute the rest in their backward. Measured on an H200 at the 8B shape: a pass of
    4 x 2,048 tokens without checkpointing peaked at 38.5 GiB reserved, 5.5 of them the weights: about
    4.0 MB a token, under the 4.7 MB counted here."""
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    if backend == "unsloth":
        return (6 * h + 2 * kv + 3 * inter) * 2
    return (8 * h + 3 * kv + 5 * inter) * 2


def logits_bytes_per_token(config, backend: str = "hf") -> int:
    """The LM head's fp32 logits and their gradient; unsloth computes the loss in chunks and keeps about
    one 16-bit copy of the logits."""
    return config.vocab_size * (2 if backend == "unsloth" else 4 * 2)


def activation_bytes(config, batch_size: int, seq_len: int, backend: str = "hf") -> int:
    """Bytes that one micro-batch keeps for the backward pass without checkpointing: every block's
    activations and the LM head's."""
    per_token = (config.num_hidden_layers * block_bytes_per_token(config, backend)
                 + logits_bytes_per_token(config, backend))
    return batch_size * seq_len * per_token


def checkpointed_bytes(config, tokens: int, offloaded: bool = False, backend: str = "hf") -> int:
    """Bytes one pass of `tokens` holds with checkpointing: each block's input (16-bit), one block's
    activations while it is recomputed, and the LM head's. `offloaded` (unsloth's variant): the block
    inputs wait in CPU memory and the loss is computed in chunks, so the GPU holds about one block's
    activations and their gradients (on the H200 the post's 2 x 2048 tokens took 1.2 GiB beside the
    weights: 0.29 MB a token, against the 0.43 MB this counts)."""
    if offloaded:
        return tokens * 2 * block_bytes_per_token(config)
    per_token = (config.num_hidden_layers * config.hidden_size * 2 + block_bytes_per_token(config, backend)
                 + logits_bytes_per_token(config, backend))
    return tokens * per_token


def pass_bytes(config, tokens: int, checkpointing, backend: str = "hf") -> int:
    """Activation bytes of one forward/backward pass of `tokens` tokens (rows x the longest row's length),
    with `checkpointing` as get_peft_model has it (False, True, or "unsloth": offloaded), on `backend`."""
    if not checkpointing:
        return activation_bytes(config, 1, tokens, backend)
    return checkpointed_bytes(config, tokens, offloaded=checkpointing == "unsloth", backend=backend)


def choose_checkpointing(requested, config, batch_size: int, seq_len: int, free_bytes: int | None = None,
                         backend: str = "hf"):
    """(choice, reason): "auto" becomes False when the activations fit the free GPU memory, else the
    backend's checkpointing ("unsloth"); any other request is returned as it is."""
    if requested != "auto":
        return requested, None
    import torch

    if free_bytes is None:
        if not torch.cuda.is_available():
            return False, "no GPU: memory is not the constraint"
        free_bytes = free_gpu_bytes()
    need = activation_bytes(config, batch_size, seq_len, backend) * SAFETY
    gib = 2**30
    if need < free_bytes:
        return False, f"activations need ~{need / gib:.1f} GiB, {free_bytes / gib:.1f} GiB free"
    return "unsloth", f"activations would need ~{need / gib:.1f} GiB, only {free_bytes / gib:.1f} GiB free"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_rows_per_pass(requested, config, rows_per_step: int, batch_size: int, seq_len: int, checkpointing,
                         free_bytes: int | None = None, backend: str = "hf") -> tuple[int, str | None]:
    """(rows a pass, reason): `None` keeps the post's `batch_size`; a number is used as it is; "auto" takes
    the largest divisor of `rows_per_step` (at least `batch_size`) whose pass, every row at `seq_len`
    tokens, fits the free GPU memory with `checkpointing` as it will be. On a CPU "auto" keeps the post's
    passes: the fixed cost a pass has on a GPU (launching thousands of kernels) is what fewer passes save."""
    if requested is None:
        return batch_size, None
    if requested != "auto":
        return requested, f"asked: {requested} rows a pass"
    import torch

    if free_bytes is None:
        if not torch.cuda.is_available():
            return batch_size, ("no GPU: a CPU's time goes with the tokens, not with the number of passes, "
                                "so auto keeps the post's passes")
        free_bytes = free_gpu_bytes()
    gib = 2**30
    for rows in reversed([d for d in divisors(rows_per_step) if d >= batch_size]):
        need = pass_bytes(config, rows * seq_len, checkpointing, backend) * SAFETY
        if need < free_bytes:
            return rows, (f"{rows} rows of up to {seq_len} tokens need ~{need / gib:.1f} GiB "
                          f"({'with' if checkpointing else 'without'} checkpointing), {free_bytes / gib:.1f} GiB free")
    return batch_size, (f"no larger pass fits {free_bytes / gib:.1f} GiB free at {seq_len} tokens a row: "
                        f"the post's {batch_size} rows a pass")


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


def card_budget_bytes() -> int:
    """What this process may still put on the card: its free memory, or, under a cap, the cap less what
    every process on the card uses now (CUDA contexts and other kernels included, as nvidia-smi counts
    them), so that the whole card stays under the cap, not only this process's allocator. Asking makes
    this process's own CUDA context first, so it counts too: a process that will load weights decides
    where they go itself (07's reload check does), rather than being told by another."""
    import torch

    free, total = torch.cuda.mem_get_info()
    cap = gpu_cap_bytes()
    return free if cap is None else max(0, min(free, cap - (total - free)))


GIB = 2**30
ROOM = 0.05               # activations of a short prompt, as a share of the weights (at least ROOM_MIN)
ROOM_MIN = GIB // 4


@dataclass
class Placement:
    """Where a merged folder's weights go when loaded: `arguments` for from_pretrained, and why."""
    where: str       # "gpu", "gpu+cpu" or "cpu"
    arguments: dict  # device_map / max_memory, as from_pretrained takes them
    why: str

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items()) or "(none: the CPU)"
        return f"{self.why}\nfrom_pretrained arguments: {shown}"


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def placement(folder: Path) -> Placement:
    """How a user loads `folder` exactly (its own dtype, nothing re-quantized) on this machine: all on the
    GPU when the weights fit what the card has left (under WORKBOOK_GPU_MEMORY_GIB, counting every
    process on it); else as much as fits on the GPU and the rest in CPU memory (`device_map="auto"` with
    `max_memory`: accelerate moves those layers over for each forward pass); else the CPU. The post's 8B
    model merged in 16-bit is 15 GiB, more than a 16 GB card holds beside anything else."""
    import torch

    size = weights_bytes(folder)
    if not torch.cuda.is_available():
        return Placement("cpu", {}, f"No GPU: the {size / GIB:.1f} GiB of weights load on the CPU.")
    budget = card_budget_bytes()  # asking makes this process's CUDA context (700 MiB on an H200): it counts
    room = max(ROOM_MIN, int(ROOM * size))
    left = f"{budget / GIB:.1f} GiB left on the card" + (" under the cap" if gpu_cap_bytes() else "")
    if size + room <= budget:
        return Placement("gpu", {"device_map": {"": 0}},
                         f"The {size / GIB:.1f} GiB of weights fit the GPU ({left}).")
    on_gpu = budget - room
    if on_gpu < 0.1 * size:
        return Placement("cpu", {}, f"The {size / GIB:.1f} GiB of weights do not fit the GPU ({left}): the CPU.")
    import psutil

    cpu = psutil.virtual_memory().available * 0.9
    return Placement("gpu+cpu", {"device_map": "auto",
                                 "max_memory": {0: f"{on_gpu / GIB:.2f}GiB", "cpu": f"{cpu / GIB:.0f}GiB"}},
                     f"The {size / GIB:.1f} GiB of weights do not fit the GPU ({left}): {on_gpu / GIB:.1f} GiB "
                     f"of them go on the GPU, the rest stays in CPU memory and is moved over layer by layer for "
                     f"each forward pass (exact weights, slower answers).")
