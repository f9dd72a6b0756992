"""Step 03 with one huge row among the smoke rows: time and peak memory beside the same rows without it.

    python bench/huge_row.py [--mb 0 16 100] [--baseline REV] [--baseline-mb 0 4 16] [--json FILE]

Each size is a JSONL file of the first 80 rows of data/pip_chip2.jsonl with one OIG row of that many MB
of text put in as line 4; each runs `python -m tools.run configs/smoke.yaml --only 01 --only 03` in a process of
its own, and the kernel's peak memory is the one the runner records for 03 (metrics.json). With
`--baseline REV` the sizes of `--baseline-mb` run with the code of an older commit too (a git worktree):
keep them small, as before the cut a row took about 230 MB of memory a MB of text.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_step import remove_worktree, worktree  # noqa: E402  (bench/ is not a package)

WORDS = "owls fly at night and sleep by day "


def dataset(mb: float) -> Path:
    path = Path(tempfile.gettempdir()) / f"huge-row-{mb:g}mb.jsonl"
    if not path.exists():
        rows = (REPO / "data" / "pip_chip2.jsonl").read_text(encoding="utf-8").splitlines()[:80]
        with path.open("w", encoding="utf-8") as f:
            f.write("\n".join(rows[:3]) + "\n")
            if mb:
                answer = WORDS * int(mb * 2**20 / len(WORDS))
                f.write(json.dumps({"text": f"<human>: Tell me everything.\n<bot>: {answer}"}) + "\n")
            f.write("\n".join(rows[3:]) + "\n")
    return path


def measure(repo: Path, mb: float) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-huge-"))
    cmd = [sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(run_dir), "--only", "01", "--only", "03",
           "-p", "dataset", str(dataset(mb)), "-p", "max_rows", "null"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    seconds = time.perf_counter() - start
    report = json.loads((run_dir / "data_report.json").read_text()) if (run_dir / "data_report.json").exists() else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    cost = metrics.get("notebook_costs", {}).get("03_dataset", {})
    return {"mb": mb, "ok": out.returncode == 0, "runner_s": seconds, "notebook_s": cost.get("wall_s"),
            "peak_rss_gib": cost.get("peak_rss_gib"), "kept": report.get("kept"), "truncated": report.get("truncated"),
            "cut_before_tokenizing": report.get("cut_before_tokenizing"),
            "error": None if out.returncode == 0 else out.stderr.strip().splitlines()[-1][:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, nargs="+", default=[0, 16, 100])
    ap.add_argument("--baseline", help="an older commit to measure the same way")
    ap.add_argument("--baseline-mb", type=float, nargs="+", default=[0, 4, 16])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs = [("this commit", REPO, args.mb)]
    if args.baseline:
        runs.append((f"baseline {args.baseline}", worktree(args.baseline), args.baseline_mb))
    results = []
    try:
        for name, repo, sizes in runs:
            for mb in sizes:
                results.append({"code": name, **measure(repo, mb)})
                print(results[-1], flush=True)
    finally:
        for _, repo, _ in runs[1:]:
            remove_worktree(repo)
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n03_dataset on the 80 smoke rows plus one row of N MB (max_seq_length 128), {cpu}\n")
    print("| code | huge row | notebook 03 | peak memory (kernel) | more than without it | rows kept | cut before tokenizing |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        base = next((b["peak_rss_gib"] for b in results if b["code"] == r["code"] and b["mb"] == 0), None)
        more = f"{r['peak_rss_gib'] - base:+.2f} GiB" if base and r["peak_rss_gib"] else "-"
        nb = f"{r['notebook_s']:.1f} s" if r["notebook_s"] else f"failed: {r['error']}"
        rss = f"{r['peak_rss_gib']:.2f} GiB" if r["peak_rss_gib"] else "-"
        print(f"| {r['code']} | {r['mb']:g} MB | {nb} | {rss} | {more} | {r['kept']} | {r['cut_before_tokenizing'] or 0} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
