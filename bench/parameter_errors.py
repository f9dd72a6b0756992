"""How long the runner takes to refuse a wrong parameter: a table of medians.

    python bench/parameter_errors.py [--repeat 5] [--baseline REV] [--json FILE] [--config FILE] [-p NAME VALUE]...

Each case is `python -m tools.run CONFIG -p NAME VALUE ...` into an empty run folder (CONFIG: configs/smoke.yaml
unless --config names another; `-p` adds parameters to every case, for example the post's recipe with a local
`model_name`), timed from the command's start to its exit (it must exit 2, the runner's code for a parameter
error). With
`--baseline REV` the same cases run with the code of an older commit (a git worktree), alternating with
this checkout's, on the same machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_step import REPO, remove_worktree, worktree  # noqa: E402

CASES = {
    "warmup_steps over max_steps": ["-p", "warmup_steps", "20", "-p", "max_steps", "6"],
    "learning_rate .nan": ["-p", "learning_rate", ".nan"],
    "optim misspelled": ["-p", "optim", "adamw_8bti"],
    "dataset missing": ["-p", "dataset", "no/such.jsonl"],
    "target_modules unknown": ["-p", "target_modules", "[q_proj, nope_proj]"],
}


def measure(repo: Path, config: str, args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "tools.run", config, "--run-dir", run_dir, *args],
                             cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        seconds = time.perf_counter() - start
    return seconds if out.returncode == 2 else float("nan")  # nan: not refused (a baseline may run it)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args()
    common = [a for name, value in args.param for a in ("-p", name, value)]
    repos = {"this checkout": REPO}
    if args.baseline:
        repos[args.baseline] = worktree(args.baseline)
    times = {(case, name): [] for case in CASES for name in repos}
    try:
        for _ in range(args.repeat):
            for case, case_args in CASES.items():
                for name, repo in repos.items():
                    times[(case, name)].append(measure(repo, args.config, common + case_args))
    finally:
        if args.baseline:
            remove_worktree(repos[args.baseline])
    print(f"| case | {' | '.join(f'{n} (median s)' for n in repos)} |\n|---|{'---|' * len(repos)}")
    for case in CASES:
        print(f"| {case} | {' | '.join(f'{statistics.median(times[(case, n)]):.2f}' for n in repos)} |")
    if args.json:
        args.json.write_text(json.dumps({f"{c} / {n}": t for (c, n), t in times.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
