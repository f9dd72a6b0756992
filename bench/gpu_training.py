"""GPU training speed and memory: the workbook's helpers vs raw unsloth vs transformers + peft + bitsandbytes.

    python bench/gpu_training.py [--size 8b|small] [--steps 10] [--scenario seed short] [--json FILE]
    make bench

Makes a random-init checkpoint of the Llama-3.1-8B shape (or a small one with --size small) and a
small tokenizer in /tmp, then trains N steps at the post's settings (LoRA r=16 alpha=32 on the seven
projections, batch 2 x grad accum 4, adamw_8bit, bf16, 4-bit base weights) through each stack, every
stack in its own process (unsloth patches transformers on import), one after another on the same card.
Random weights say nothing about quality; speed and memory are those of the real model.

Scenarios:
- seed:  every sample 2048 tokens, as in the post with max_seq_length 2048.
- short: sample lengths drawn from data/pip_chip2.jsonl's token lengths, scaled up x8 (like OIG rows:
         short chats); reports useful (non-padding) tokens/s, for each stack's defaults and for the
         workbook with packing (padding-free: samples never attend to each other).
Figures: median step time after the warm-up steps (torch.cuda.synchronize around each step), tokens/s
over the measured steps, peak torch.cuda.max_memory_reserved().
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "small": dict(hidden_size=1024, num_hidden_layers=8, intermediate_size=3584, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=32000),
}
SEED = dict(lora_r=16, lora_alpha=32, per_device_train_batch_size=2, gradient_accumulation_steps=4,
            learning_rate=5e-5, weight_decay=0.01, optim="adamw_8bit", lr_scheduler_type="linear", seed=3407,
            max_seq_length=2048)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# stack name -> scenarios it runs in; "workbook" variants differ by parameters only
STACKS = {
    "workbook": ("seed", "short"),
    "workbook, checkpointing auto": ("seed", "short"),
    "workbook + packing": ("short",),
    "raw unsloth": ("seed", "short"),
    "HF + peft + bnb nf4 + TRL": ("seed", "short"),
}


def make_checkpoint(folder: Path, size: str) -> Path:
    """Random bf16 weights of the chosen shape plus a small trained tokenizer, made on the GPU."""
    import torch

    from fixtures.synthetic import random_llama

    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return random_llama(folder, device="cuda", dtype=torch.bfloat16, max_position_embeddings=4096,
                        rope_theta=500000.0, tie_word_embeddings=False, **SIZES[size])


def lengths_for(scenario: str, n: int, rng: random.Random) -> list[int]:
    if scenario == "seed":
        return [SEED["max_seq_length"]] * n
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    words = [max(4, round(len(t) / 4)) for t in texts]  # ~4 characters a token, as the pip rows measure
    return [min(SEED["max_seq_length"], 8 * rng.choice(words)) for _ in range(n)]


def dataset(scenario: str, rows: int):
    """Pre-tokenized rows of random ids below the tokenizer's 600 (TRL skips tokenization when `input_ids` is given)."""
    from datasets import Dataset

    rng = random.Random(0)
    return Dataset.from_dict({"input_ids": [[rng.randrange(3, 600) for _ in range(n)]
                                            for n in lengths_for(scenario, rows, rng)]})


def trainer_kwargs(steps: int) -> dict:
    import torch

    return dict(per_device_train_batch_size=SEED["per_device_train_batch_size"],
                gradient_accumulation_steps=SEED["gradient_accumulation_steps"], warmup_steps=0,
                max_steps=steps, learning_rate=SEED["learning_rate"], weight_decay=SEED["weight_decay"],
                optim=SEED["optim"], lr_scheduler_type=SEED["lr_scheduler_type"], seed=SEED["seed"],
                logging_steps=1, bf16=torch.cuda.is_bf16_supported(), fp16=not torch.cuda.is_bf16_supported(),
                max_length=SEED["max_seq_length"], output_dir="/tmp/bench-out", save_strategy="no",
                report_to="none", disable_tqdm=True)


def build_workbook(ckpt: Path, data, steps: int, gc, packing: bool):
    from helpers import lora, model, params, trainer

    p = {**params.DEFAULTS, **{k: v for k, v in SEED.items()}, "model_name": str(ckpt), "load_in_4bit": True,
         "use_gradient_checkpointing": gc, "max_steps": steps, "warmup_steps": 0, "run_dir": "/tmp/bench-run",
         "packing": packing}
    m, tok, info = model.load(p)
    assert info.backend == "unsloth", info
    m, differences = lora.add_lora(m, p, info.backend)
    kwargs, _ = trainer.training_config(p, Path(p["run_dir"]))
    kwargs.update(logging_steps=1, disable_tqdm=True)
    return m, tok, kwargs, differences


def build_unsloth(ckpt: Path, steps: int):
    from unsloth import FastLanguageModel

    m, tok = FastLanguageModel.from_pretrained(model_name=str(ckpt), max_seq_length=SEED["max_seq_length"],
                                               dtype=None, load_in_4bit=True)
    m = FastLanguageModel.get_peft_model(m, r=SEED["lora_r"], target_modules=TARGETS, lora_alpha=SEED["lora_alpha"],
                                         lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
                                         random_state=3407, max_seq_length=SEED["max_seq_length"],
                                         use_rslora=False, loftq_config=None)
    return m, tok, trainer_kwargs(steps)


def build_hf(ckpt: Path, steps: int):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    m = AutoModelForCausalLM.from_pretrained(ckpt, quantization_config=quant, dtype=dtype, device_map={"": 0},
                                             attn_implementation="sdpa")
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=True,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    m = get_peft_model(m, LoraConfig(r=SEED["lora_r"], lora_alpha=SEED["lora_alpha"], lora_dropout=0,
                                     target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    kwargs = trainer_kwargs(steps)
    kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    return m, AutoTokenizer.from_pretrained(ckpt), kwargs


def child(stack: str, scenario: str, ckpt: Path, steps: int, warmup: int) -> dict:
    if stack != "HF + peft + bnb nf4 + TRL":
        import unsloth  # noqa: F401  (before transformers)
    import torch
    from transformers import TrainerCallback

    data = dataset(scenario, rows=(steps + 1) * 8 * (8 if scenario == "short" else 1))
    note = ""
    if stack.startswith("workbook"):
        gc = "auto" if "auto" in stack else "unsloth"
        m, tok, kwargs, differences = build_workbook(ckpt, data, steps, gc, packing="packing" in stack)
        note = "; ".join(f"{d[0]}={d[2]} ({d[3]})" for d in differences)
    elif stack == "raw unsloth":
        m, tok, kwargs = build_unsloth(ckpt, steps)
    else:
        m, tok, kwargs = build_hf(ckpt, steps)

    from helpers.train import TokenCount

    times, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            torch.cuda.synchronize()
            self.start, self.tokens = time.perf_counter(), count.tokens

        def on_step_end(self, *args, **kw):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            tokens.append(count.tokens - self.tokens)

    if stack.startswith("workbook"):
        from helpers import trainer

        t = trainer.build(m, tok, data, kwargs, callbacks=[Clock()])
    else:  # written out by hand, as a user of that stack would
        from trl import SFTConfig, SFTTrainer

        t = SFTTrainer(model=m, args=SFTConfig(**kwargs), train_dataset=data, processing_class=tok, callbacks=[Clock()])
    count = TokenCount(t)
    torch.cuda.reset_peak_memory_stats()
    t.train()
    measured_t, measured_tok = times[warmup:], tokens[warmup:]
    return {"stack": stack, "scenario": scenario, "steps": len(times), "median_step_s": statistics.median(measured_t),
            "tokens_per_s": sum(measured_tok) / sum(measured_t), "tokens_per_step": statistics.median(measured_tok),
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "gpu": torch.cuda.get_device_name(0),
            "note": note}


def table(results: list[dict], scenario: str) -> str:
    rows = [r for r in results if r["scenario"] == scenario]
    base = next((r for r in rows if r["stack"].startswith("HF")), None)
    label = "useful tokens/s" if scenario == "short" else "tokens/s"
    out = [f"| stack | {label} | median step (s) | peak reserved GiB | tokens/s vs HF | memory vs HF |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        mem = f"{r['peak_reserved_gib'] / base['peak_reserved_gib']:.2f}x" if base else "-"
        out.append(f"| {r['stack']} | {r['tokens_per_s']:,.0f} | {r['median_step_s']:.2f} | "
                   f"{r['peak_reserved_gib']:.2f} | {ratio} | {mem} |")
    return "\n".join(out)


def save(args, results: list[dict]) -> None:
    import torch

    args.json.write_text(json.dumps({"size": args.size, "steps": args.steps, "warmup": args.warmup,
                                     "gpu": torch.cuda.get_device_name(0), "results": results}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="8b")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scenario", nargs="+", choices=["seed", "short"], default=["seed", "short"])
    ap.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=list(STACKS))
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "gpu_training.json")
    ap.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/bench-checkpoints"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu_training.py measures GPU kernels (unsloth, bitsandbytes) and needs an NVIDIA GPU; "
                 "none is visible here. On a CPU, bench/cpu_training.py measures the CPU path.")
    ckpt = args.checkpoint_dir / f"llama-{args.size}"
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], ckpt, args.steps, args.warmup)))
        return
    start = time.perf_counter()
    make_checkpoint(ckpt, args.size)
    print(f"checkpoint {ckpt} ready ({time.perf_counter() - start:.0f} s)", flush=True)
    results = []
    for scenario in args.scenario:
        for stack in args.stacks:
            if scenario not in STACKS[stack]:
                continue
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--size", args.size, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--checkpoint-dir", str(args.checkpoint_dir),
                                  "--child", stack, scenario], capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"})
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                print(f"{scenario} / {stack}: FAILED\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}", flush=True)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            save(args, results)  # after every stack, so a cut-off run keeps what it measured
            r = results[-1]
            print(f"{scenario} / {stack}: {r['tokens_per_s']:,.0f} tokens/s, {r['peak_reserved_gib']:.2f} GiB "
                  f"({time.perf_counter() - t0:.0f} s) {r['note']}", flush=True)
    print(f"\nGPU: {torch.cuda.get_device_name(0)}; shape {args.size}; {args.steps} steps, median after "
          f"{args.warmup} warm-up; batch 2 x accum 4, LoRA r16/a32 on 7 projections, adamw_8bit, 4-bit base")
    for scenario in args.scenario:
        print(f"\n{scenario}:\n" + table(results, scenario))


if __name__ == "__main__":
    main()
