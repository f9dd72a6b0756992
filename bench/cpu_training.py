"""Where the CPU training time goes: TRL's defaults against the workbook's CPU settings.

    .venv/bin/python bench/cpu_training.py [--steps 6] [--skip-bf16]

Trains the offline default (SmolLM2-135M + LoRA r=16 on all seven projections, batch 2 x accum 4 on
data/pip_chip2.jsonl) for a few optimizer steps with each setting, in one process after another,
and prints a table: median seconds per optimizer step after the first, and trained (non-padding)
tokens/s. Every variant is the workbook's own configuration with one or more TRL defaults put back.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "TRL defaults: bf16 autocast + checkpointing + chunked_nll": {"bf16": True, "gradient_checkpointing": True,
                                                                 "loss_type": "chunked_nll"},
    "fp32 + checkpointing + chunked_nll": {"gradient_checkpointing": True, "loss_type": "chunked_nll"},
    "fp32 + chunked_nll": {"loss_type": "chunked_nll"},
    "workbook (fp32, no checkpointing, nll)": {},
}


def one(name: str, steps: int) -> dict:
    """Runs in a child process: the workbook's trainer (notebooks 01-04 run, 02's LoRA loaded as 05 loads it),
    the variant's settings over 04's SFTConfig, each step timed."""
    import tempfile

    from transformers import TrainerCallback

    from fixtures import training
    from helpers.data import split
    from tools import cells

    values = {"max_steps": steps, "run_dir": tempfile.mkdtemp()}
    training.prepared(values)
    cells.run("03", values)
    m, tok, _ = training.lora_model(values["run_dir"])
    rows = split.for_training(split.load(values["run_dir"])[0], None)
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kw):
            times.append(time.perf_counter() - self.start)

    t = training.trainer(values["run_dir"], m, tok, rows, callbacks=[Clock()], **VARIANTS[name])
    t.train()
    tokens = max(e.get("num_tokens", 0) for e in t.state.log_history)
    median = statistics.median(times[1:])
    return {"variant": name, "median_step_s": median, "tokens_per_s": tokens / len(times) / median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-bf16", action="store_true", help="leave out the (very slow) bf16 variant")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.steps)))
        return
    results = []
    for name in VARIANTS:
        if args.skip_bf16 and "bf16" in name:
            continue
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", name],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured: {name}", file=sys.stderr, flush=True)
    base = results[-1]["tokens_per_s"]
    print(f"| variant ({args.steps} steps, median after the first) | s / step | tokens/s | vs workbook |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['variant']} | {r['median_step_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
