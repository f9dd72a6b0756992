"""Step 03 at the post's size on this machine: a 210,289-row OIG-format file through the dataset notebook.

    python bench/data_step.py [--rows 210289] [--baseline REV] [--json FILE]

Makes the file once (fixtures.synthetic.oig_file, in /tmp), then runs `python -m tools.run
configs/llama31-8b-oig.yaml --only 01 --only 03` with the bundled model (the post's model needs the hub)
and the file, for the post's data handling (`dataset_format: text`, the raw text field) and for the
chat-template path (`auto`: each `<human>:`/`<bot>:` row rendered with the tokenizer's template).
Reports the whole runner's time (process and kernel start, imports, checks) and the notebook's own, and the peak memory of the processes it
started (the largest: the kernel). With `--baseline REV` the same runs are made with the code of an older commit
(a git worktree), one after the other on the same machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(repo: Path, data: Path, fmt: str) -> dict:
    """One run of notebook 03 in a child process: wall time and the peak RSS of its descendants."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-03-"))
    cmd = [sys.executable, "-m", "tools.run", "configs/llama31-8b-oig.yaml", "--run-dir", str(run_dir),
           "--only", "01", "--only", "03", "-p", "model_name", "bundled:SmolLM2-135M-Instruct", "-p", "dataset", str(data),
           "-p", "dataset_format", fmt]
    start = time.perf_counter()
    # a parent of its own per run: its RUSAGE_CHILDREN peak is this run's largest process (the kernel)
    # PYTHONPATH: the kernel must import this checkout's helpers, not the installed (editable) ones
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{repo}: the run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    peak_kib = int(out.stderr.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    notebook = metrics.get("notebook_costs", {}).get("03_dataset", {})
    return {"format": fmt, "runner_s": seconds, "notebook_s": notebook.get("wall_s"), "peak_rss_gib": peak_kib / 2**20,
            "kept": metrics.get("num_train_rows", 0) + metrics.get("num_eval_rows", 0)}


PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "repo"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True, capture_output=True)
    return path


def main() -> None:
    from fixtures import synthetic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=synthetic.OIG_ROWS)
    ap.add_argument("--baseline", help="an older commit to measure the same way, for a side-by-side ratio")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = Path(tempfile.gettempdir()) / f"oig-{args.rows}.jsonl"
    if not data.exists():
        synthetic.oig_file(data, args.rows)
    repos = [("this commit", REPO)] + ([(f"baseline {args.baseline}", worktree(args.baseline))] if args.baseline else [])
    results = []
    try:
        for name, repo in repos:
            for fmt in ("text", "auto"):
                row = {"code": name, **measure(repo, data, fmt)}
                results.append(row)
                print(row, flush=True)
    finally:
        for name, repo in repos[1:]:
            remove_worktree(repo)
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n03_dataset on {args.rows:,} OIG-format rows ({data.stat().st_size / 2**20:.0f} MiB), {cpu}\n")
    print("| code | dataset_format | whole runner (kernel start, imports, checks) | notebook 03 alone | peak memory (kernel) | rows kept |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        nb = f"{r['notebook_s']:.1f} s" if r["notebook_s"] else "-"
        rss = f"{r['peak_rss_gib']:.2f} GiB" if r["peak_rss_gib"] else "-"
        print(f"| {r['code']} | {r['format']} | {r['runner_s']:.1f} s | {nb} | {rss} | {r['kept']:,} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "cpu": cpu, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
