"""Data-parallel scaling: the same `python -m tools.train` command on 1 GPU and, under
`accelerate launch` (what `make train-multi` runs), on 2 GPUs of the same card type.

    python bench/multi_gpu.py [--size small|8b] [--steps 30] [--backends hf unsloth] [--json FILE]

Makes a random-init checkpoint (bench/gpu_training.py's shapes) and a dataset of long plain-text rows,
then for each backend trains `--steps` optimizer steps with the same per-device batch on 1 and on 2
GPUs (so 2 GPUs see twice the rows per step), after one short warm-up run per backend (kernel
compilation and caches). Reports steady tokens/s (all processes; the first 20% of micro-batches left
out) and the ratio. Needs 2 NVIDIA GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]


def make_data(path: Path, rows: int = 2000) -> Path:
    """Plain-text rows of about 1,500 characters: eight of the bundled Pip conversations each."""
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"text": "\n".join(texts[(i * 8 + k) % len(texts)] for k in range(8)) + f" #{i}"}) + "\n")
    return path


def config(path: Path, ckpt: Path, data: Path, steps: int) -> Path:
    path.write_text(f"""model_name: {ckpt}
dataset: {data}
dataset_format: text
max_seq_length: 1024
eval_fraction: 0.01
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
warmup_steps: 2
max_steps: {steps}
save_steps: 100000
logging_steps: 5
use_gradient_checkpointing: false
""")
    return path


def train(cfg: Path, run_dir: Path, backend: str, gpus: int) -> dict:
    base = ["-m", "tools.train", str(cfg), "--run-dir", str(run_dir), "-p", "backend", backend]
    if gpus == 1:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--multi_gpu",
               "--mixed_precision", "no", "--dynamo_backend", "no", *base]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"backend": backend, "gpus": gpus, "error": out.stderr[-1500:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"backend": backend, "gpus": gpus, "tokens_per_s": m["tokens_per_s_steady"],
            "tokens_per_s_whole_run": m["tokens_per_s"], "train_tokens": m["train_tokens"],
            "train_runtime_s": m["train_runtime_s"], "world_size": m.get("world_size"),
            "final_step_loss": m.get("final_step_loss"), "peak_memory_gib": m.get("peak_memory_gib")}


def main() -> None:
    import torch

    from gpu_training import make_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--backends", nargs="+", default=["hf", "unsloth"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/multi_gpu_bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if torch.cuda.device_count() < 2:
        sys.exit("needs 2 NVIDIA GPUs")
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.work / f"llama-{args.size}", args.size)
    cfg = config(args.work / "multi.yaml", ckpt, make_data(args.work / "long.jsonl"), args.steps)
    results = []
    for backend in args.backends:  # warm-up: kernel compilation and caches, not measured
        warm = config(args.work / "warm.yaml", ckpt, args.work / "long.jsonl", 4)
        train(warm, args.work / f"warm-{backend}", backend, 2)
    for backend in args.backends:
        for gpus in (1, 2):
            r = train(cfg, args.work / f"run-{backend}-{gpus}", backend, gpus)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(f"\n{torch.cuda.get_device_name(0)} x2; shape {args.size}; {args.steps} steps; per-device batch 4 x "
          f"accumulation 2, rows of up to 1024 tokens\n")
    print("| backend | tokens/s, 1 GPU | tokens/s, 2 GPUs | scaling |\n| --- | --- | --- | --- |")
    for backend in args.backends:
        one, two = (next(r for r in results if r["backend"] == backend and r["gpus"] == g) for g in (1, 2))
        if "error" in one or "error" in two:
            print(f"| {backend} | {one.get('tokens_per_s', 'failed')} | {two.get('tokens_per_s', 'failed')} | - |")
        else:
            print(f"| {backend} | {one['tokens_per_s']:,.0f} | {two['tokens_per_s']:,.0f} | "
                  f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "size": args.size,
                                         "steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
