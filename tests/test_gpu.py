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
    # 06-08 on the unsloth backend: evaluation, both merged saves (checked without peft), chat
    assert metrics["eval_loss_finetuned"] < metrics["eval_loss_base"]
    assert metrics["merged_check"]["ok"] and metrics["merged_check"]["export_dtype"] in ("bfloat16", "float16")
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert any((tmp_path / "merged_unsloth").glob("*.safetensors"))
    assert (tmp_path / "08_chat.ipynb").exists()


def test_packing_keeps_samples_apart(tiny_params):
    """Packed (padding-free) rows must give each sample the logits it gets alone: no sample may attend
    to its neighbours. A naive concatenation (no boundary information) is the control that differs."""
    import torch
    from datasets import Dataset

    from helpers import trainer as trainers

    m, tok, info = models.load(tiny_params)
    m, _ = lora.add_lora(m, tiny_params, info.backend)
    lengths = [10, 24, 17]
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(5, len(tok), (n,), generator=gen).tolist() for n in lengths]
    kwargs, _ = trainers.training_config({**tiny_params, "packing": True}, Path(tiny_params["run_dir"]))
    kwargs.update(max_length=64, per_device_train_batch_size=1, max_steps=1)
    t = trainers.build(m, tok, Dataset.from_dict({"input_ids": samples}), kwargs)
    batch = {k: v.to("cuda") if hasattr(v, "to") else v for k, v in next(iter(t.get_train_dataloader())).items()}
    assert batch["input_ids"].shape[1] == sum(lengths)  # one packed row, no padding
    model = t.model.eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0].float()
        naive = model(input_ids=batch["input_ids"]).logits[0].float()
        order = batch["input_ids"][0].tolist()
        # locate each sample in the packed row (bfd may reorder them), then run it alone
        errors, controls = [], []
        for s in samples:
            start = next(i for i in range(len(order)) if order[i:i + len(s)] == s)
            single = model(input_ids=torch.tensor([s], device="cuda")).logits[0].float()
            errors.append((packed[start:start + len(s)] - single).abs().max().item())
            controls.append((naive[start:start + len(s)] - single).abs().max().item())
    assert max(controls) > 0  # some sample sits after another: the control must differ
    assert max(errors) < 0.1 * max(controls), (errors, controls)


def test_responses_only_labels_reach_the_unsloth_trainer(tiny_params, jsonl):
    """unsloth swaps the data collator: the answer-only labels must survive it into the batches (only
    the answers and their end marker unmasked), and training must run on them."""
    import re

    import torch

    from helpers import data, rundir, train

    rows = [{"text": f"<human>: Say {w} twice.\n<bot>: {w} {w}."} for w in ("red", "blue", "green", "cat", "dog")]
    params = {**tiny_params, "dataset": str(jsonl(rows)), "train_on_responses_only": True, "eval_fraction": 0.2}
    rundir.resolve(params["run_dir"])
    prepared = data.prepare(params, models.load_tokenizer(params))
    data.save_split(params["run_dir"], *data.split(prepared.rows, 0.2, seed=1))
    session = train.setup(params)
    assert session.info.backend == "unsloth"
    batch = next(iter(session.trainer.get_train_dataloader()))
    labels, ids = batch["labels"], batch["input_ids"]
    kept = [session.tokenizer.decode(ids[i][labels[i] != -100]) for i in range(len(ids))]
    for k in kept:  # the plain template: "<human>: Say red twice.\n<bot>: red red.<|im_end|>\n"
        answers = [a.strip() for a in k.split("<|im_end|>") if a.strip()]  # padding-free rows hold several
        assert answers and all(re.fullmatch(r"(\w+) \1\.", a) for a in answers), kept
    assert (labels == -100).any() and (labels != -100).any()
    stats = train.run(session.trainer)
    assert stats["train_steps"] == params["max_steps"] and torch.isfinite(torch.tensor(stats["train_loss"]))


def test_export_from_a_checkpoint_stored_in_4bit(tmp_path, tiny_prequantized_dir):
    """The post's model is stored pre-quantized (no 16-bit weights). Train on such a checkpoint, then 07:
    its layers are dequantized and merged into a plain 16-bit checkpoint that transformers loads without
    peft and that computes what the adapter model computes."""
    config = json.loads((tiny_prequantized_dir / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    from safetensors import safe_open

    with safe_open(str(tiny_prequantized_dir / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert str(stored.dtype) == "torch.uint8"  # packed nf4, two weights a byte: no 16-bit copy
    result = subprocess.run([sys.executable, "-m", "helpers.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             "-p", "model_name", str(tiny_prequantized_dir), "--only", "03", "--only", "05",
                             "--only", "07"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    check = metrics["merged_check"]
    assert check["ok"] and check["export_dtype"] in ("bfloat16", "float16"), check
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert tuple(q.shape) == (128, 128) and q.dtype.is_floating_point  # 16-bit weights, not packed nf4
    notebook = (tmp_path / "07_export.ipynb").read_text()
    assert "is stored in 4-bit (nf4)" in notebook and "merged_16bit would download" in notebook
