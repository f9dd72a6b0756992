"""How many workshop participants one machine holds: N people run the whole workbook at the same moment.

    python bench/workshop.py [--participants 1,2,4] [--cores 0-7] [--threads auto|all] [--kernel fresh]
                             [--config configs/default.yaml] [-p NAME VALUE]... [--json FILE]

The worst moment of a workshop is the instructor saying "now run it": everybody's notebooks start
together. For each N this starts N copies of `python -m tools.run CONFIG` at once, each with its own
run folder and, with `--threads auto`, OMP_NUM_THREADS = cores // N (at least 1): what
`python -m tools.lab --threads` gives each participant's kernels. `--threads all` leaves torch its
default (every core, in every process) to show what happens without it. `--cores` pins all of them to
those cores (taskset-style), to measure an 8-core machine on a bigger one. `--kernel fresh` (default)
gives every notebook a new kernel, as JupyterLab does.

Prints one table: per N the threads each, the whole workbook's time per participant (the notebooks'
own times, median and the slowest), 05's (training) likewise, when the last participant was done
(kernel starts included: a new kernel per notebook), and the peak memory in use on the machine above what was in use
before (all participants together, sampled every 0.5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_cores(text: str | None) -> list[int]:
    """'0-7' or '0,2,4-5' -> core numbers; None -> the cores this process may use."""
    if not text:
        return sorted(os.sched_getaffinity(0))
    cores = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores += range(int(low), int(high or low) + 1)
    return cores


def used_memory_gib() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kib / 2**20


class MemoryPeak:
    """The most memory in use on the machine while the block runs, above what was in use at its start."""

    def __enter__(self):
        self.base = self.peak = used_memory_gib()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, used_memory_gib())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.gib = self.peak - self.base


def one_round(n: int, cores: list[int], threads: str, args, work: Path) -> dict:
    each = max(1, len(cores) // n) if threads == "auto" else None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if each:
        env.update(OMP_NUM_THREADS=str(each), MKL_NUM_THREADS=str(each))
    procs = []
    with MemoryPeak() as memory:
        start = time.perf_counter()
        for i in range(n):
            run_dir = work / f"n{n}-{threads}-{i}"
            cmd = [sys.executable, "-m", "tools.run", str(args.config), "--run-dir", str(run_dir),
                   "--kernel", args.kernel]
            for name, value in args.parameter:
                cmd += ["-p", name, value]
            log = (work / f"n{n}-{threads}-{i}.log").open("w")
            procs.append((run_dir, log, subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.sched_setaffinity(0, cores))))
        for run_dir, log, proc in procs:
            proc.wait()
            log.close()
        seconds = time.perf_counter() - start
    failed = [str(run_dir) for run_dir, _, proc in procs if proc.returncode != 0]
    whole, training = [], []
    for run_dir, _, proc in procs:
        costs = json.loads((run_dir / "metrics.json").read_text()).get("notebook_costs", {}) \
            if (run_dir / "metrics.json").exists() else {}
        if proc.returncode == 0 and costs:
            whole.append(sum(c["wall_s"] for c in costs.values()))
            training.append(costs["05_train_and_save"]["wall_s"])
    return {"participants": n, "cores": len(cores), "threads_each": each or "all (torch default)",
            "round_s": seconds, "failed": failed,
            "workbook_median_s": statistics.median(whole) if whole else None,
            "workbook_max_s": max(whole) if whole else None,
            "train_05_median_s": statistics.median(training) if training else None,
            "train_05_max_s": max(training) if training else None,
            "peak_memory_gib": memory.gib}


def table(rows: list[dict], machine: str) -> str:
    def s(v):
        return "-" if v is None else f"{v:.0f} s"

    lines = [f"\nWorkshop capacity, {machine}",
             "| participants | cores | threads each | whole workbook (median / slowest) | 05 training (median / slowest) "
             "| all done after | peak memory, all | failed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['participants']} | {r['cores']} | {r['threads_each']} | {s(r['workbook_median_s'])} / "
                     f"{s(r['workbook_max_s'])} | {s(r['train_05_median_s'])} / {s(r['train_05_max_s'])} | "
                     f"{s(r['round_s'])} | {r['peak_memory_gib']:.1f} GiB | {len(r['failed'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", default="1,2")
    ap.add_argument("--cores", help="e.g. 0-7 (default: every core this process may use)")
    ap.add_argument("--threads", choices=("auto", "all"), default="auto")
    ap.add_argument("--kernel", choices=("fresh", "shared"), default="fresh")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/workshop-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cores = parse_cores(args.cores)
    args.work.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    machine = f"{len(cores)} cores of {cpu}, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    rows = []
    for n in (int(x) for x in args.participants.split(",")):
        rows.append(one_round(n, cores, args.threads, args, args.work))
        print(f"{n} participant(s): {json.dumps(rows[-1])}", flush=True)
        if args.json:  # after every round, so a round cut short by a time limit keeps the earlier ones
            args.json.write_text(json.dumps({"machine": machine, "rounds": rows}, indent=2))
    print(table(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
