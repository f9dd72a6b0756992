"""The post's recipe at its real size, end to end: all eight notebooks on an 8B-shape model stored in 4-bit
and a 210,289-row OIG-format file, through the runner, with a per-notebook table.

    python bench/recipe.py [--cap-gib 15] [--fast-steps 30] [--json FILE] [--work /tmp/recipe]
    make bench-recipe

1. Makes the fixture (timed apart, not part of the run): a random-weight Llama-3.1-8B-shape checkpoint
   saved *pre-quantized* (bitsandbytes nf4 + double quantization, `quantization_config` in config.json:
   the layout of `unsloth/Meta-Llama-3.1-8B-bnb-4bit`), and an OIG `unified_chip2`-format file of
   210,289 rows (helpers.synthetic).
2. Runs `python -m helpers.run configs/llama31-8b-oig.yaml` with only `model_name` and `dataset`
   overridden: the post's 120 steps, eval_fraction 0.01, everything else as the post has it. With
   `--cap-gib` the allocator of every process is capped (WORKBOOK_GPU_MEMORY_GIB), as on a 16 GB card.
3. Runs 05 again with configs/llama31-8b-oig-fast.yaml (packing, checkpointing auto) on the same
   prepared data for `--fast-steps` steps, and reports its tokens/s and the time it would take to
   train as many tokens as the post's run did.
Prints one table: per notebook its wall time, the model-load time inside it, peak GPU memory (PyTorch's
max_memory_reserved in the notebook's process, and the whole card's use from nvidia-smi, which counts
subprocesses too); then the training time and its share of the run. Needs an NVIDIA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

def fixture(work: Path) -> tuple[Path, Path, dict]:
    from helpers import synthetic

    timings = {}
    start = time.perf_counter()
    ckpt = synthetic.prequantized_llama(work / "llama31-8b-bnb-4bit", work / "scratch-bf16", **synthetic.LLAMA31_8B)
    timings["checkpoint_s"] = time.perf_counter() - start
    start = time.perf_counter()
    data = work / "unified_chip2.jsonl"
    if not data.exists():
        synthetic.oig_file(data)
    timings["dataset_s"] = time.perf_counter() - start
    timings["checkpoint_gib"] = sum(p.stat().st_size for p in ckpt.iterdir()) / 2**30
    return ckpt, data, timings


def run(config: str, run_dir: Path, ckpt: Path, data: Path, env: dict, *extra: str) -> float:
    cmd = [sys.executable, "-m", "helpers.run", config, "--run-dir", str(run_dir), "-p", "model_name", str(ckpt),
           "-p", "dataset", str(data), *extra]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the run failed (exit {result.returncode}); see {run_dir}")
    return seconds


def table(costs: dict, metrics: dict, total: float) -> str:
    rows = ["| notebook | wall time | model load | peak GPU (PyTorch reserved) | peak GPU (whole card) |",
            "| --- | --- | --- | --- | --- |"]
    for name, c in costs.items():
        rows.append(f"| {name} | {c['wall_s']:.0f} s | {c.get('load_s', 0):.0f} s | "
                    f"{c.get('peak_gpu_gib', float('nan')):.2f} GiB | {c.get('peak_gpu_used_gib', float('nan')):.2f} GiB |")
    train = metrics["train_runtime_s"]
    rows.append(f"| **run** | **{total:.0f} s** | {sum(c.get('load_s', 0) for c in costs.values()):.0f} s | "
                f"{max(c.get('peak_gpu_gib', 0) for c in costs.values()):.2f} GiB | "
                f"{max(c.get('peak_gpu_used_gib', 0) for c in costs.values()):.2f} GiB |")
    rows.append("")
    rows.append(f"training (trainer.train() in 05): {train:.0f} s = {100 * train / total:.0f}% of the run; "
                f"{metrics['train_steps']} steps, {metrics['train_tokens']:,} tokens, {metrics['tokens_per_s']:,.0f} tokens/s")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap-gib", type=float, default=15.0, help="GPU memory cap per process (0: none)")
    ap.add_argument("--fast-steps", type=int, default=30, help="steps of the fast config's 05 (0: skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipe"))
    ap.add_argument("--max-steps", type=int, help="train fewer steps than the post's 120 (a quick check, not "
                                                  "the recipe: the table says so)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/recipe.py needs an NVIDIA GPU (this machine has none).")
    card = torch.cuda.get_device_name(0)
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, data, made = fixture(args.work)
    torch.cuda.empty_cache()
    print(f"fixture: {made}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.cap_gib:
        env["WORKBOOK_GPU_MEMORY_GIB"] = str(args.cap_gib)

    run_dir = args.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    steps = ["-p", "max_steps", str(args.max_steps), "-p", "warmup_steps", "2"] if args.max_steps else []
    total = run("configs/llama31-8b-oig.yaml", run_dir, ckpt, data, env, *steps)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    costs = metrics["notebook_costs"]
    result = {"card": card, "date": date.today().isoformat(), "cap_gib": args.cap_gib, "fixture": made,
              "max_steps": args.max_steps or 120,
              "run_s": total, "notebooks": costs,
              **{k: metrics.get(k) for k in ("train_runtime_s", "train_steps", "train_tokens", "tokens_per_s",
                                              "eval_loss_base", "eval_loss_finetuned", "eval_rows_measured",
                                              "merged_check", "num_train_rows", "num_eval_rows")}}
    text = table(costs, metrics, total)
    note = f", max_steps {args.max_steps} (a check, not the post's 120)" if args.max_steps else ""
    print(f"\n{card}, {date.today()}, cap {args.cap_gib or 'none'} GiB{note}\n{text}", flush=True)
    save(args.json, result)

    if args.fast_steps:
        fast_dir = args.work / "run-fast"
        shutil.rmtree(fast_dir, ignore_errors=True)
        fast_dir.mkdir()
        shutil.copytree(run_dir / "data", fast_dir / "data")
        shutil.copy(run_dir / "params.json", fast_dir / "params.json")
        run("configs/llama31-8b-oig-fast.yaml", fast_dir, ckpt, data, env, "--only", "05",
            "-p", "max_steps", str(args.fast_steps), "-p", "warmup_steps", "2")
        fast = json.loads((fast_dir / "metrics.json").read_text())
        same_tokens_s = metrics["train_tokens"] / fast["tokens_per_s"]
        result["fast"] = {k: fast.get(k) for k in ("train_runtime_s", "train_steps", "train_tokens", "tokens_per_s",
                                                  "tokens_per_s_steady", "peak_memory_gib")}
        result["fast"]["seconds_for_the_post_tokens"] = same_tokens_s
        text += (f"\nfast config (packing, checkpointing auto), {fast['train_steps']} steps: "
                 f"{fast['tokens_per_s']:,.0f} tokens/s ({fast['tokens_per_s'] / metrics['tokens_per_s']:.2f}x the "
                 f"post's settings); the post's {metrics['train_tokens']:,} tokens in {same_tokens_s:.0f} s instead "
                 f"of {metrics['train_runtime_s']:.0f} s")
        print(text.rsplit("\n", 1)[-1])
        save(args.json, result)


def save(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
