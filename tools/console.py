"""What the runner prints while the notebooks run: each notebook's progress (progress.json, written by
the kernel) and the dataset step's report, as plain console lines."""
from __future__ import annotations

import time
from pathlib import Path

from helpers import rundir
from helpers.data.tokenizing import CHARS_PER_TOKEN


def gpu_text(cost: dict) -> str:
    return f", peak GPU {cost['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in cost else ""


class ProgressWatcher:
    """While a notebook runs: prints its progress.json when it changes (at most every PRINT_EVERY_S), and
    on an NVIDIA machine samples the GPU's used memory (nvidia-smi: the whole card, so subprocesses and
    the CUDA context count too)."""

    PRINT_EVERY_S = 10.0

    def __init__(self, run_dir: Path, log):
        import shutil

        self.path, self.log, self.thread = Path(run_dir) / "progress.json", log, None
        self.smi = shutil.which("nvidia-smi")

    def start(self, name: str) -> None:
        import threading

        self.name, self.peak_used, self.stopping = name, None, threading.Event()
        self.path.unlink(missing_ok=True)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.stopping.set()
            self.thread.join()
            self.thread = None

    def gpu_peak(self) -> dict:
        return {"peak_gpu_used_gib": self.peak_used} if self.peak_used is not None else {}

    def _watch(self) -> None:
        shown, last_print = None, 0.0
        while not self.stopping.wait(0.5):
            self._sample_gpu()
            record = rundir.read_json(self.path, default=None) if self.path.exists() else None
            if record and record != shown and time.time() - last_print >= self.PRINT_EVERY_S:
                shown, last_print = record, time.time()
                self.log(f"    {self.name}: {progress_line(record)}", flush=True)

    def _sample_gpu(self) -> None:
        import subprocess

        if not self.smi:
            return
        out = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            used = float(out.stdout.split()[0]) / 1024
            self.peak_used = max(self.peak_used or 0.0, used)


def show_data_report(run_dir: Path, nb: Path, since: float, log) -> None:
    """After the dataset step: what was read, kept, dropped (from this run's data_report.json)."""
    path = run_dir / "data_report.json"
    if nb.name.startswith("03_") and path.exists() and path.stat().st_mtime >= since - 1:
        for line in report_lines(rundir.read_json(path)):
            log(f"    {line}")


def report_lines(report: dict) -> list[str]:
    """The dataset step's report as plain lines, for the console (from data_report.json)."""
    lines = [f"data: {report['source']} ({report.get('format')}): read {report['rows_read']}, "
             f"kept {report['kept']}, truncated {report['truncated']}"]
    if report.get("cut_before_tokenizing"):
        lines += [f"  cut before tokenizing {report['cut_before_tokenizing']}: over {CHARS_PER_TOKEN} characters a token"]
    lines += [f"  dropped {n}: {reason}" for reason, n in report.get("dropped", {}).items()]
    lines += [f"  fixed {n}: {what}" for what, n in report.get("fixes", {}).items()]
    lines += [f"  warning: {text}" for text in report.get("warnings", [])]
    lines += [f"  {p['where']}: {p['reason']} ({p['detail']})" for p in report.get("problems", [])[:5]]
    return lines



def progress_line(fields: dict) -> str:
    """One readable line of a progress record."""
    if "step" in fields:
        text = f"step {fields['step']}/{fields['of']}"
        if fields.get("loss") is not None:
            text += f", loss {fields['loss']:.4f}"
        if (fields.get("left_s") or 0) >= 1:
            text += f", about {_duration(fields['left_s'])} left"
        return text
    if "rows" in fields:
        return f"{fields['rows']:,}/{fields['of']:,} {fields.get('what', 'rows')}"
    return fields.get("what", "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
