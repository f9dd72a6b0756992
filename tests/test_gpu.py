"""On an NVIDIA GPU: the post's path (unsloth, 4-bit) through the same helpers and the runner.
Skipped where torch sees no GPU (conftest marks them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import lora, model as models, trainer

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.gpu


def test_auto_backend_is_unsloth_with_4bit_weights(tiny_params):
    import torch

    params = tiny_params
    m, tok, info = models.load(params)
    assert info.backend == "unsloth" and info.device == "cuda"
    assert info.load_in_4bit is True and m.is_loaded_in_4bit
    assert info.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    m, differences = lora.add_lora(m, params, info.backend)
    assert differences == []
    kwargs, differences = trainer.training_config(params, Path(params["run_dir"]))
    assert kwargs["optim"] == "adamw_8bit" and kwargs["bf16"] == torch.cuda.is_bf16_supported()
    assert differences == []


def test_smoke_chain_on_gpu(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "helpers.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             "-p", "model_name", str(tiny_model_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["backend"] == "unsloth" and metrics["load_in_4bit"] is True
    assert metrics["peak_memory_kind"] == "cuda_max_memory_reserved"
    assert metrics["tokens_per_s"] > 0 and metrics["train_tokens"] > 0  # unsloth logs no num_tokens
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
