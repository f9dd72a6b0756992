"""The post's recipe at its real size, end to end: all eight notebooks on an 8B-shape model stored in 4-bit
and a 210,289-row OIG-format file, through the runner, with a per-notebook table.

    python bench/recipe.py [--cap-gib 15] [--max-steps N] [--fast-steps 30] [--json FILE] [--work /tmp/recipe]
                           [--tokenizer chatml|llama3] [--seed S] [--only NN]... [-p NAME VALUE]...
    make bench-recipe

1. Makes the fixture (timed apart, not part of the run; kept in --work and reused): a random-weight
   Llama-3.1-8B-shape checkpoint saved *pre-quantized* (bitsandbytes nf4 + double quantization,
   `quantization_config` in config.json: the layout of `unsloth/Meta-Llama-3.1-8B-bnb-4bit`), from
   `--seed` with a `--tokenizer`-style tokenizer (chatml: GPT-2's split and <|im_start|>/<|im_end|>;
   llama3: Llama 3's split regex and special tokens, BOS on every text), and an OIG `unified_chip2`-format
   file of 210,289 rows (fixtures.synthetic).
2. Runs `python -m tools.run configs/llama31-8b-oig.yaml` with only `model_name` and `dataset`
   overridden: the post's 120 steps (`--max-steps N`: a quick check of the whole chain instead, not the
   recipe; `-p NAME VALUE`: another parameter changed, as the runner takes it, for example `-p dtype float16`),
   eval_fraction 0.01, everything else as the post has it. With `--cap-gib` the allocator of
   every process is capped (WORKBOOK_GPU_MEMORY_GIB), as on a 16 GB card. `--only 07 --only 08` resumes
   the run folder of an earlier call from those notebooks (the fixture must still be there).
3. With `--fast-steps N`, runs 04 and 05 again with configs/llama31-8b-oig-fast.yaml (packing, checkpointing
   auto) on the same prepared data and reports its tokens/s.
Prints per notebook its wall time, peak GPU memory (PyTorch's
max_memory_reserved in the notebook's process, and the whole card's use from nvidia-smi, which counts
subprocesses and other kernels too), then the notebooks' total and training's share of it, and the cells
that took longest. Needs an NVIDIA GPU.
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


def scratch_folder(work: Path, name: str) -> Path:
    """Where the 16 GB of random bf16 weights wait to be quantized: memory (/dev/shm) when it has room,
    which is faster than a disk, else beside the fixture."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 24 * 2**30:
        return shm / name
    return work / name


def fixture(work: Path, tokenizer: str, seed: int) -> tuple[Path, Path, dict]:
    """The checkpoint and the data file, made in a process of their own: this one must hold nothing on
    the card while the notebooks run, or the whole card's figures would count it."""
    timings = {"tokenizer": tokenizer, "seed": seed}
    name = "llama31-8b-bnb-4bit" if (tokenizer, seed) == ("chatml", 0) else f"llama31-8b-bnb-4bit-{tokenizer}-seed{seed}"
    ckpt, scratch = work / name, scratch_folder(work, f"{name}-scratch-bf16")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from fixtures import synthetic; "
                    "synthetic.prequantized_llama(Path(sys.argv[1]), Path(sys.argv[2]), seed=int(sys.argv[3]), "
                    "tokenizer=sys.argv[4], **synthetic.LLAMA31_8B)", str(ckpt), str(scratch), str(seed), tokenizer],
                   cwd=REPO, check=True)
    timings["checkpoint_s"] = time.perf_counter() - start
    start = time.perf_counter()
    data = work / "unified_chip2.jsonl"
    if not data.exists():
        from fixtures import synthetic

        synthetic.oig_file(data)
    timings["dataset_s"] = time.perf_counter() - start
    timings["checkpoint_gib"] = sum(p.stat().st_size for p in ckpt.iterdir()) / 2**30
    return ckpt, data, timings


def card_name() -> str | None:
    """The GPU's name from nvidia-smi (asking torch would put a CUDA context on the card from here)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    return out.stdout.strip() if out and out.returncode == 0 and out.stdout.strip() else None


def run(config: str, run_dir: Path, ckpt: Path, data: Path, env: dict, *extra: str) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "tools.run", config, "--run-dir", str(run_dir), "-p", "model_name", str(ckpt),
           "-p", "dataset", str(data), *extra]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env)
    return time.perf_counter() - start, result.returncode


def slowest_cells(run_dir: Path, names, at_least: float = 2.0) -> list[tuple[str, str, float]]:
    """(notebook, first line of the cell, seconds) of every cell that took `at_least` seconds, from the
    executed notebooks' papermill metadata."""
    found = []
    for name in names:
        path = run_dir / f"{name}.ipynb"
        if not path.exists():
            continue
        for cell in json.loads(path.read_text())["cells"]:
            seconds = (cell.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0
            if cell["cell_type"] == "code" and seconds >= at_least:
                lines = [ln for ln in "".join(cell["source"]).splitlines() if ln.strip() and not ln.startswith("#")]
                found.append((name, (lines[0] if lines else "")[:70], seconds))
    return found


def table(costs: dict, metrics: dict) -> tuple[str, dict]:
    """The per-notebook table and the totals it ends with."""
    rows = ["| notebook | wall time | peak GPU (PyTorch reserved) | peak GPU (whole card) |",
            "| --- | --- | --- | --- |"]
    for name, c in costs.items():
        rows.append(f"| {name} | {c['wall_s']:.0f} s | "
                    f"{c.get('peak_gpu_gib', float('nan')):.2f} GiB | {c.get('peak_gpu_used_gib', float('nan')):.2f} GiB |")
    notebooks = sum(c["wall_s"] for c in costs.values())
    totals = {"notebooks_s": notebooks,
              "peak_gpu_gib": max(c.get("peak_gpu_gib", 0) for c in costs.values()),
              "peak_gpu_used_gib": max(c.get("peak_gpu_used_gib", 0) for c in costs.values())}
    rows.append(f"| **notebooks** | **{notebooks:.0f} s** | "
                f"{totals['peak_gpu_gib']:.2f} GiB | {totals['peak_gpu_used_gib']:.2f} GiB |")
    if "train_runtime_s" in metrics:
        train = metrics["train_runtime_s"]
        totals["training_share"] = train / notebooks
        rows += ["", f"training (trainer.train() in 05): {train:.0f} s = {100 * train / notebooks:.0f}% of the "
                     f"notebooks' time; {metrics['train_steps']} steps, {metrics['train_tokens']:,} tokens, "
                     f"{metrics['tokens_per_s']:,.0f} tokens/s"]
    return "\n".join(rows), totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap-gib", type=float, default=15.0, help="GPU memory cap per process (0: none)")
    ap.add_argument("--fast-steps", type=int, default=0, help="steps of the fast config's 05 (0: skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipe"))
    ap.add_argument("--max-steps", type=int, help="train fewer steps than the post's 120 (a quick check of the "
                                                  "whole chain, not the recipe: the table says so)")
    ap.add_argument("--tokenizer", choices=("chatml", "llama3"), default="chatml", help="the fixture's tokenizer")
    ap.add_argument("--seed", type=int, default=0, help="the fixture's random weights")
    ap.add_argument("--only", action="append", default=[], metavar="NN",
                    help="run only these notebooks, in the run folder an earlier call left (resume)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter changed for the whole chain (the runner's -p)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    card = card_name()
    if card is None:
        sys.exit("bench/recipe.py needs an NVIDIA GPU (nvidia-smi finds none on this machine).")
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, data, made = fixture(args.work, args.tokenizer, args.seed)
    print(f"fixture: {made}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.cap_gib:
        env["WORKBOOK_GPU_MEMORY_GIB"] = str(args.cap_gib)

    run_dir = args.work / f"run-{ckpt.name}"
    if not args.only:
        shutil.rmtree(run_dir, ignore_errors=True)
    steps = ["-p", "max_steps", str(args.max_steps), "-p", "warmup_steps", "2"] if args.max_steps else []
    only = [a for n in args.only for a in ("--only", n)]
    params = [a for name, value in args.param for a in ("-p", name, value)]
    runner_s, code = run("configs/llama31-8b-oig.yaml", run_dir, ckpt, data, env, *steps, *params, *only)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    costs = metrics.get("notebook_costs", {})
    note = f", max_steps {args.max_steps} (a check of the chain, not the post's 120)" if args.max_steps else ""
    note += "".join(f", {name} {value}" for name, value in args.param)
    text, totals = table(costs, metrics) if costs else ("(no notebook finished)", {})
    cells = slowest_cells(run_dir, sorted({p.stem for p in run_dir.glob("[0-9][0-9]_*.ipynb")}))
    print(f"\n{card}, {date.today()}, cap {args.cap_gib or 'none'} GiB, fixture {ckpt.name}{note}\n{text}\n"
          f"the runner's whole command: {runner_s:.0f} s (exit {code})\n\ncells of 2 s or more:", flush=True)
    for name, line, seconds in cells:
        print(f"  {name:18} {seconds:6.1f} s  {line}")
    result = {"card": card, "date": date.today().isoformat(), "cap_gib": args.cap_gib, "fixture": made,
              "checkpoint": ckpt.name, "max_steps": args.max_steps or 120,
              "params": dict(args.param), "runner_s": runner_s, "exit": code,
              **totals, "notebooks": costs, "cells": [{"notebook": n, "cell": c, "seconds": s} for n, c, s in cells],
              **{k: metrics.get(k) for k in ("train_runtime_s", "train_steps", "train_tokens", "tokens_per_s",
                                              "eval_loss_base", "eval_loss_finetuned", "eval_rows_measured",
                                              "merged_check", "num_train_rows", "num_eval_rows")}}
    save(args.json, result)
    if code != 0:
        sys.exit(f"the run failed (exit {code}); see {run_dir}")

    if args.fast_steps:
        fast_dir = args.work / "run-fast"
        shutil.rmtree(fast_dir, ignore_errors=True)
        fast_dir.mkdir()
        for made in ("base", "lora", "data"):  # 01-03's results; 04 builds the fast config's SFTConfig
            shutil.copytree(run_dir / made, fast_dir / made)
        shutil.copy(run_dir / "params.json", fast_dir / "params.json")
        _, code = run("configs/llama31-8b-oig-fast.yaml", fast_dir, ckpt, data, env, "--only", "04", "--only", "05",
                      "-p", "max_steps", str(args.fast_steps), "-p", "warmup_steps", "2")
        if code != 0:
            sys.exit(f"the fast run failed (exit {code}); see {fast_dir}")
        fast = json.loads((fast_dir / "metrics.json").read_text())
        same_tokens_s = metrics["train_tokens"] / fast["tokens_per_s"]
        result["fast"] = {k: fast.get(k) for k in ("train_runtime_s", "train_steps", "train_tokens", "tokens_per_s",
                                                  "tokens_per_s_steady", "peak_memory_gib")}
        result["fast"]["seconds_for_the_post_tokens"] = same_tokens_s
        print(f"fast config (packing, checkpointing auto), {fast['train_steps']} steps: "
              f"{fast['tokens_per_s']:,.0f} tokens/s ({fast['tokens_per_s'] / metrics['tokens_per_s']:.2f}x the "
              f"post's settings); the post's {metrics['train_tokens']:,} tokens in {same_tokens_s:.0f} s instead "
              f"of {metrics['train_runtime_s']:.0f} s")
        save(args.json, result)


def save(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
