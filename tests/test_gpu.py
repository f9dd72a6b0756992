"""On an NVIDIA GPU: the post's path (unsloth, 4-bit) through the notebooks' cells and the runner.
Skipped where torch sees no GPU (conftest marks them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import notebooks
from fixtures import training
from helpers.export import merge_check

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.gpu


def test_auto_backend_is_unsloth_with_4bit_weights(tiny_values):
    import torch

    run = notebooks(tiny_values, "01", "02", "04")
    base = run["01"]["base"]
    assert base.backend == "unsloth" and base.record["device"] == "cuda"
    assert base.load_in_4bit is True and run["01"]["model"].is_loaded_in_4bit
    assert base.record["compute_dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert run["02"]["differences"] == []
    args = run["04"]["args"]
    assert args.optim == "adamw_8bit" and args.bf16 == torch.cuda.is_bf16_supported()
    assert run["04"]["differences"] == []


def test_smoke_chain_on_gpu(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
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


def test_packing_keeps_samples_apart(tiny_values):
    """Packed (padding-free) rows must give each sample the logits it gets alone: no sample may attend
    to its neighbours. A naive concatenation (no boundary information) is the control that differs."""
    import torch
    from datasets import Dataset

    values = {**tiny_values, "packing": True}
    training.prepared(values)
    m, tok, _ = training.lora_model(values["run_dir"])
    lengths = [10, 24, 17]
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(5, len(tok), (n,), generator=gen).tolist() for n in lengths]
    t = training.trainer(values["run_dir"], m, tok, Dataset.from_dict({"input_ids": samples}), max_length=64,
                         per_device_train_batch_size=1, max_steps=1)
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


def test_responses_only_labels_reach_the_unsloth_trainer(tiny_values, jsonl):
    """unsloth swaps the data collator: the answer-only labels must survive it into the batches (only
    the answers and their end marker unmasked), and training must run on them."""
    import re

    import torch

    rows = [{"text": f"<human>: Say {w} twice.\n<bot>: {w} {w}."} for w in ("red", "blue", "green", "cat", "dog")]
    values = {**tiny_values, "dataset": str(jsonl(rows)), "train_on_responses_only": True, "eval_fraction": 0.2}
    run = notebooks(values, "01", "02", "03", "04", "05")["05"]
    assert run["base"].backend == "unsloth"
    trainer, tokenizer = run["trainer"], run["tokenizer"]
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"], batch["input_ids"]
    kept = [tokenizer.decode(ids[i][labels[i] != -100]) for i in range(len(ids))]
    for k in kept:  # the plain template: "<human>: Say red twice.\n<bot>: red red.<|im_end|>\n"
        answers = [a.strip() for a in k.split("<|im_end|>") if a.strip()]  # padding-free rows hold several
        assert answers and all(re.fullmatch(r"(\w+) \1\.", a) for a in answers), kept
    assert (labels == -100).any() and (labels != -100).any()
    stats = run["m"].stats
    assert stats["train_steps"] == values["max_steps"] and torch.isfinite(torch.tensor(stats["train_loss"]))


# The post's 8B model on a 16 GB card, scaled down: a checkpoint stored in 4-bit whose 16-bit merge is
# larger than the GPU memory the run may use, while the 4-bit model trains well inside it. A cell that
# puts the merged model on the GPU fails here as it fails at the 8B shape under 15 GiB.
SMALL_4BIT = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)


def _bf16_gib(shape: dict, vocab: int = 600) -> float:
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    return (layers * per_layer + 2 * vocab * h) * 2 / 2**30


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory):
    """01-05, 07 and 08 of the smoke config on SMALL_4BIT, every process capped at 80% of the merged
    model's size (WORKBOOK_GPU_MEMORY_GIB)."""
    import os

    from fixtures.synthetic import prequantized_llama

    folder = tmp_path_factory.mktemp("small-bnb")
    model = prequantized_llama(folder / "small-llama-bnb-4bit", folder / "scratch", **SMALL_4BIT)
    cap = round(0.8 * _bf16_gib(SMALL_4BIT), 2)
    run_dir = folder / "run"
    result = subprocess.run([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(run_dir),
                             "-p", "model_name", str(model), *[a for n in ("01", "02", "03", "04", "05", "07", "08")
                                                               for a in ("--only", n)]],
                            cwd=REPO, capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "WORKBOOK_GPU_MEMORY_GIB": str(cap)})
    return model, run_dir, cap, result


def test_07_and_08_stay_under_a_cap_smaller_than_the_merged_model(capped_run):
    """The post's model is stored pre-quantized (no 16-bit weights). Train on such a checkpoint, then 07:
    its layers are dequantized and merged into a plain 16-bit checkpoint that transformers loads without
    peft and that computes what the adapter model computes; the merged model is larger than the cap, so
    the reload check and the plain-transformers cell load it partly or wholly off the GPU, and 08 chats
    with the 4-bit base and the adapter. No notebook's allocator goes past the cap."""
    from safetensors import safe_open

    model, run_dir, cap, result = capped_run
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads((model / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert str(stored.dtype) == "torch.uint8"  # packed nf4, two weights a byte: no 16-bit copy
    stored_gib = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**30
    merged_gib = sum(p.stat().st_size for p in (run_dir / "merged").glob("*.safetensors")) / 2**30
    assert stored_gib < 0.5 * cap < cap < merged_gib, (stored_gib, cap, merged_gib)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check = metrics["merged_check"]
    assert check["ok"] and check["export_dtype"] in ("bfloat16", "float16"), check
    assert check["placement"] in ("gpu+cpu", "cpu"), check  # it does not fit the GPU whole
    merged = json.loads((run_dir / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged
    with safe_open(str(next((run_dir / "merged").glob("*.safetensors"))), "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert tuple(q.shape) == (2048, 2048) and q.dtype.is_floating_point  # 16-bit weights, not packed nf4
    costs = metrics["notebook_costs"]
    assert set(costs) == {"01_load_model", "02_lora", "03_dataset", "04_trainer", "05_train_and_save", "07_export",
                          "08_chat"}
    assert all(c.get("peak_gpu_gib", 0) <= cap for c in costs.values()), costs
    notebook = (run_dir / "07_export.ipynb").read_text()
    assert "is stored in 4-bit (nf4)" in notebook and "merged_16bit would download" in notebook
    assert "do not fit the GPU" in notebook  # the plain-transformers cell says how it loaded, and why
    chat = (run_dir / "08_chat.ipynb").read_text()
    assert "with the adapter of step 5" in chat and "Not the merged model of step 7" not in chat  # unsloth


def _card_used_gib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0]) / 1024


def test_the_reload_check_keeps_the_whole_card_under_the_cap(capped_run, monkeypatch):
    """The reload check's process decides its placement itself, once its own CUDA context exists (700
    MiB on an H200, more than the 512 MiB once assumed for it: the 8B run went to 15.08 GiB under a cap
    of 15). Under a cap of what the card holds now + 0.75 GiB + 60% of the merged weights, it must split
    the weights between GPU and CPU and keep the whole card (nvidia-smi, every process) under the cap."""
    import threading


    _, run_dir, _, result = capped_run
    assert result.returncode == 0, result.stdout + result.stderr
    merged = run_dir / "merged"
    merged_gib = sum(p.stat().st_size for p in merged.glob("*.safetensors")) / 2**30
    cap = round(_card_used_gib() + 0.75 + 0.6 * merged_gib, 2)
    monkeypatch.setenv("WORKBOOK_GPU_MEMORY_GIB", str(cap))
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], _card_used_gib())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        reloaded = merge_check.reload_without_peft(merged)
    finally:
        done.set()
        watcher.join()
    assert reloaded["placement"] == "gpu+cpu", reloaded["placement"]
    assert 0 < peak[0] <= cap, (peak[0], cap)


def test_the_merge_check_refuses_wrong_merges_of_a_4bit_base(tmp_path, tiny_prequantized_dir):
    """On a checkpoint stored in 4-bit, merged in 16-bit: the update scaled by 2x, or one layer's update
    left out, fails the check (tests/merges.py, in a process without unsloth, as 07 runs); the right
    merge passes, and the adapter moved the logits by far more than the tolerance."""
    import os

    result = subprocess.run([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             "-p", "model_name", str(tiny_prequantized_dir), "-p", "learning_rate", "0.01",
                             "-p", "max_steps", "8", *[a for n in ("01", "02", "03", "04", "05") for a in ("--only", n)]],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "merges.py"), str(tmp_path), "auto"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    checks = json.loads(out.stdout.split("WRONG_MERGES ", 1)[1])
    assert checks["right"]["ok"] and checks["right"]["export_dtype"] in ("bfloat16", "float16"), checks
    assert checks["adapter_effect"] > 4 * checks["right"]["tolerance"], checks
    assert not checks["scale"]["ok"] and not checks["layer"]["ok"], checks


@pytest.mark.parametrize("qtype", ["Q8_0", "F16", "BF16", "F32"])
def test_the_gguf_quantizer_on_the_gpu_writes_what_gguf_writes(qtype, monkeypatch):
    """07 quantizes the GGUF's tensors on the GPU when it has room: the bytes must be gguf's own."""
    from test_gguf_export import same_bytes_as_gguf  # tests/ is on the path, as pytest puts it

    same_bytes_as_gguf(qtype, device="cuda", chunk=7 * 4096, monkeypatch=monkeypatch)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_the_k_quants_on_the_gpu_are_the_cpus_bytes(name):
    """The K-quants run as the same float32 operations on either device (sums one element after the
    other, divisions by tensors), so a GGUF file made on the GPU is the one a CPU makes: block for block
    but for a value on a rounding boundary (seen on an H200: Q6_K all 4,096 blocks the same; Q4_K and
    Q5_K one row of 512 with a block that differs), with the same error."""
    import gguf
    import torch

    from helpers.export import gguf_quantize
    from test_kquants import values

    x = torch.from_numpy(values(4096)).reshape(512, -1)
    qtype = gguf.GGMLQuantizationType[name]
    on_cpu = gguf_quantize.k_quantized(x, qtype)
    on_gpu = gguf_quantize.k_quantized(x.cuda(), qtype)
    assert on_gpu.shape == on_cpu.shape
    block = gguf.GGML_QUANT_SIZES[qtype][1]
    same = (on_gpu.reshape(-1, block) == on_cpu.reshape(-1, block)).all(-1).mean()
    assert same >= 0.999, same
    errors = [float(((gguf.quants.dequantize(q.reshape(-1), qtype).reshape(-1) - x.numpy().reshape(-1)) ** 2).mean())
              for q in (on_gpu, on_cpu)]
    assert abs(errors[0] - errors[1]) <= 1e-3 * errors[1], errors
