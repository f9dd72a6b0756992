"""What the held-out loss while training costs: notebook 05 of a config, alternating `eval_steps 0` (held-out
loss before and after training only) with the config's own `eval_steps`, in one prepared run folder; a
table of medians.

    python bench/eval_cost.py [--config configs/default.yaml] [--repeat 3] [--json FILE]

01-04 run once (not timed); then each repeat runs `python -m tools.run CONFIG --only 05` both ways and
reads 05's wall time and training time from metrics.json (`notebook_costs`, `train_runtime_s`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def runner(config: str, run_dir: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "tools.run", config, "--run-dir", str(run_dir), *args]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ways = {"eval_steps 0": ["-p", "eval_steps", "0"], "the config's eval_steps": []}
    seen = {way: {"notebook_s": [], "train_s": [], "evaluations": None} for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        runner(args.config, run_dir, *[a for n in ("01", "02", "03", "04") for a in ("--only", n)])
        for _ in range(args.repeat):
            for way, extra in ways.items():
                m = runner(args.config, run_dir, "--only", "05", "-p", "resume", "false", *extra)
                seen[way]["notebook_s"].append(m["notebook_costs"]["05_train_and_save"]["wall_s"])
                seen[way]["train_s"].append(m["train_runtime_s"])
                seen[way]["evaluations"] = len(m.get("eval_history") or [])
    print(f"{args.config}, {args.repeat} runs each, medians\n\n| 05 with | evaluations while training | "
          f"05 wall time (s) | training (s) |\n| --- | --- | --- | --- |")
    for way, s in seen.items():
        print(f"| {way} | {s['evaluations']} | {statistics.median(s['notebook_s']):.1f} | "
              f"{statistics.median(s['train_s']):.1f} |")
    added = statistics.median(seen["the config's eval_steps"]["notebook_s"]) - statistics.median(seen["eval_steps 0"]["notebook_s"])
    print(f"\nadded to 05: {added:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(seen, indent=2) + "\n")


if __name__ == "__main__":
    main()
