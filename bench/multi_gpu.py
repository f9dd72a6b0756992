"""Data-parallel scaling: the same `python -m tools.train` command on 1 GPU and, under `accelerate
launch` (what `make train-multi` runs), on 2 and 4 GPUs of one host, with the post's settings and with
the fast config, on the post's data.

    python bench/multi_gpu.py [--size 8b|small] [--gpus 1 2 4] [--configs post fast] [--steps 30]
                              [--max-rows 20000] [--json FILE] [--work /tmp/multi_gpu_bench]

Makes bench/gpu_training.py's fixture (8b: a random-weight Llama-3.1-8B-shape checkpoint stored
pre-quantized like the post's model, and a 210,289-row OIG-format file), prepares the data once, then
for each config trains `--steps` optimizer steps on each GPU count in `--gpus` that the host has:
configs/llama31-8b-oig.yaml (the post's settings) and configs/llama31-8b-oig-fast.yaml, with only the
model, the data, max_steps and save_steps overridden. Every GPU trains its own rows at the config's
per-device batch, so N GPUs train N times the rows per step (the effective batch grows with N).
Reports steady tokens/s (all processes' real tokens, the first 20% of micro-batches left out), the
ratio to one GPU, and the peak reserved memory of each card. Needs NVIDIA GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIGS = {"post": "llama31-8b-oig", "fast": "llama31-8b-oig-fast"}


def config(path: Path, name: str, ckpt: Path, data: Path, steps: int, max_rows: int | None) -> Path:
    """The repo's config `name` with only the model, the data and the run length changed."""
    import yaml

    values = yaml.safe_load((REPO / "configs" / f"{CONFIGS[name]}.yaml").read_text())
    values.update(model_name=str(ckpt), dataset=str(data), max_steps=steps, save_steps=100_000,
                  max_rows=max_rows)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def train(cfg: Path, run_dir: Path, gpus: int, prepared: Path | None) -> dict:
    """One tools.train run on `gpus` GPUs; `prepared`: a run folder whose data/ it reuses (same split)."""
    if prepared is not None and not (run_dir / "data").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(prepared / "data", run_dir / "data")
        shutil.copy(prepared / "data_report.json", run_dir / "data_report.json")
    base = ["-m", "tools.train", str(cfg), "--run-dir", str(run_dir)]
    if gpus == 1:
        cmd = [sys.executable, *base]
    else:  # what make train-multi runs
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--multi_gpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *base]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"gpus": gpus, "error": out.stderr[-3000:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    rows = json.loads((run_dir / "rows_trained.json").read_text())["rows"]
    return {"gpus": gpus, "tokens_per_s": m["tokens_per_s_steady"], "tokens_per_s_whole_run": m["tokens_per_s"],
            "train_tokens": m["train_tokens"], "train_runtime_s": m["train_runtime_s"],
            "world_size": m.get("world_size"), "final_step_loss": m.get("final_step_loss"),
            "peak_memory_gib_per_card": m.get("peak_memory_gib_per_process", [m.get("peak_memory_gib")]),
            "rows_per_card": [len(r) for r in rows], "gpu": m.get("gpu_name")}


def table(results: list[dict]) -> str:
    lines = ["| config | GPUs | tokens/s | vs 1 GPU | per card | peak reserved per card (GiB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['gpus']} | failed | - | - | - |")
            continue
        one = next((o for o in results if o["config"] == r["config"] and o["gpus"] == 1 and "error" not in o), None)
        if not r["tokens_per_s"] or not (one and one["tokens_per_s"]):  # too few micro-batches for a steady rate
            one = None
        ratio = f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else "-"
        per_card = f"{(r['tokens_per_s'] or float('nan')) / r['gpus']:,.0f}"
        peaks = ", ".join(f"{p:.2f}" for p in r["peak_memory_gib_per_card"])
        lines.append(f"| {r['config']} | {r['gpus']} | {r['tokens_per_s'] or float('nan'):,.0f} | {ratio} | {per_card} "
                     f"| {peaks} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("8b", "small"), default="8b")
    ap.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["post", "fast"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-rows", type=int, default=20_000,
                    help="rows of the OIG file prepared (all 210,289 take ~40 s more; the steps read far fewer)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/multi_gpu_bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    have = torch.cuda.device_count()
    counts = sorted(n for n in set(args.gpus) if n <= have)
    if not counts:
        sys.exit(f"bench/multi_gpu.py needs NVIDIA GPUs: asked for {args.gpus}, this host has {have}")
    from bench.gpu_training import make_fixture

    ckpt, data = make_fixture(args.work, args.size)
    results, prepared = [], None
    for name in args.configs:
        cfg = config(args.work / f"{name}.yaml", name, ckpt, data, args.steps, args.max_rows)
        for gpus in counts:
            run_dir = args.work / f"run-{name}-{gpus}"
            shutil.rmtree(run_dir, ignore_errors=True)
            r = {"config": name, **train(cfg, run_dir, gpus, prepared)}
            prepared = prepared or (run_dir if "error" not in r else None)
            print(json.dumps(r), flush=True)
            results.append(r)
            if args.json:  # after every run, so a cut-off call keeps what it measured
                args.json.write_text(json.dumps({"size": args.size, "steps": args.steps, "max_rows": args.max_rows,
                                                 "gpu": torch.cuda.get_device_name(0), "results": results}, indent=2))
    print(f"\n{torch.cuda.get_device_name(0)} x {', '.join(map(str, counts))}; shape {args.size} stored in 4-bit; "
          f"{args.steps} steps; OIG-format rows; each card trains the config's per-device batch\n")
    print(table(results))


if __name__ == "__main__":
    main()
