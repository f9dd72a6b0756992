"""What this machine offers and which of the workbook's choices follow from it: the backend (unsloth
needs an NVIDIA GPU and its package), the dtype, the attention kernels, and this process's GPU."""
from __future__ import annotations

import importlib.util
import os
from helpers.params import ParameterError


def choose_backend(requested: str) -> str:
    import torch

    gpu = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth" and not (gpu and has_unsloth):
        missing = "an NVIDIA GPU" if not gpu else "the unsloth package (make installs it when a GPU is found)"
        raise ParameterError(f"Parameter 'backend' = 'unsloth' needs {missing}. Use backend='hf' or 'auto'.")
    if requested == "auto":
        return "unsloth" if gpu and has_unsloth else "hf"
    return requested


def choose_dtype(requested: str | None):
    import torch

    if requested is not None:
        return getattr(torch, requested)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPUs without native bf16 run bf16 many times slower than fp32


def choose_attention(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"  # PyTorch's scaled-dot-product attention; on a GPU it already uses flash kernels


def local_device() -> int:
    """The GPU of this process: its LOCAL_RANK under `accelerate launch` (one process per GPU), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))
