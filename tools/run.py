"""Run the numbered notebooks headless with papermill, in order, into one run folder.

    python -m tools.run CONFIG.yaml [--run-dir DIR] [-p NAME VALUE]... [--only NN]... [--kernel shared|fresh]

Each executed notebook, the adapter, metrics.json and the plots land in the run folder
(default: runs/<config name>-<UTC time>). A failing cell stops the run and names the notebook and cell.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from helpers import params, rundir
from helpers.data.tokenizing import CHARS_PER_TOKEN
from tools import config
from tools.kernels import Kernels, how_it_ended, pythonpath_with_repo

NOTEBOOK_DIR = rundir.REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def parse_value(text: str):
    """`-p NAME VALUE`: VALUE is read as YAML, so 3, 1e-4, true, null and [a, b] keep their types."""
    import yaml

    try:
        return numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def numbers(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string; people mean the number."""
    if isinstance(value, str) and FLOAT.fullmatch(value):
        return float(value)
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


def yaml_value(value) -> str:
    """The inverse of parse_value: text that `-p NAME TEXT` reads back as `value`."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def default_run_dir(config: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return rundir.REPO_ROOT / "runs" / f"{config.stem}-{stamp}"


def select(only: list[str]) -> list[Path]:
    found = notebooks()
    if not only:
        return found
    chosen = [nb for nb in found if nb.name[:2] in {o.zfill(2) for o in only}]
    unknown = sorted({o.zfill(2) for o in only} - {nb.name[:2] for nb in chosen})
    if unknown:
        raise params.ParameterError(f"--only {', '.join(unknown)}: no such notebook; there are "
                               f"{', '.join(nb.name[:2] for nb in found)}.")
    return chosen


def failed_cell(notebook_path: Path, kernel_died: bool = False) -> str:
    """'code cell N (first line)' of the first cell whose output is an error (with `kernel_died`: of the
    last cell papermill started); N counts the code cells of the notebook as written (papermill's
    injected-parameters cell is not one of them)."""
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]
    if kernel_died:
        started = [i for i, c in enumerate(code) if c.metadata.get("papermill", {}).get("start_time")]
        picked = started[-1:]
    else:
        picked = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    if not picked:
        return "an unknown cell"
    lines = [ln for ln in code[picked[0]].source.splitlines() if ln.strip() and not ln.startswith("# NBVAL")]
    return f"code cell {picked[0] + 1} ({lines[0][:60] if lines else ''})"


# Parameters of steps 1-4 that their results in the run folder do not depend on: step 5 applies them itself.
APPLIED_IN_05 = {"use_gradient_checkpointing"}


def refuse_changes_not_run(saved: dict, merged: dict, chosen: list[Path]) -> None:
    """A parameter of steps 1-4 that differs from the run folder's, where its step does not run: what that
    step left in the run folder (the model's record, the LoRA, the rows, the SFTConfig) was built with
    the old value, and step 5 trains what it finds there, so the change would not reach training."""
    run = {nb.name[:2] for nb in chosen}
    changed = [name for name, value in merged.items() if name in saved and saved[name] != value
               and params.BY_NAME[name].step in ("01", "02", "03", "04") and params.BY_NAME[name].step not in run
               and name not in APPLIED_IN_05 and name != "run_dir"]
    if changed:
        steps = sorted({params.BY_NAME[name].step for name in changed})
        listed = ", ".join(f"{name} ({saved[name]!r} in the run folder, {merged[name]!r} now; {params.STEPS[params.BY_NAME[name].step]})"
                           for name in changed)
        raise params.ParameterError(f"{listed}: the run folder's results of those steps were made with the old value, and "
                               f"the notebooks after them use those results, so the change would not reach training. "
                               f"Run {' and '.join(params.STEPS[s] for s in steps)} too (--only {' --only '.join(steps)}), "
                               f"or use another --run-dir.")


def prepare_environment(run_dir: Path) -> None:
    """What every kernel of the run inherits: where to report progress, and where `helpers` is (kernels
    start in notebooks/, and the repository need not be an installed package)."""
    import os

    from helpers.training import progress

    os.environ[progress.ENV] = str(run_dir)
    os.environ["PYTHONPATH"] = pythonpath_with_repo(os.environ.get("PYTHONPATH"))


def execute(run_dir: Path, values: dict, chosen: list[Path], log=print, kernels: Kernels | None = None) -> dict:
    """Run `chosen` notebooks in order in the kernels `kernels` hands out (default: one shared kernel,
    see tools.kernels); returns per notebook its wall time, model-load time and peak memory (also
    saved as notebook_costs in metrics.json)."""
    import logging
    import os

    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    # papermill warns for every config value a notebook's parameters cell does not name; by design
    # each notebook names only its own step's parameters and reads the rest (see params.settle).
    logging.getLogger("papermill").setLevel(logging.ERROR)
    prepare_environment(run_dir)
    kernels = kernels or Kernels("shared", uses_unsloth(values), NOTEBOOK_DIR)
    # kept per notebook as each finishes, beside those of earlier calls (a run resumed with --only)
    earlier = rundir.read_json(run_dir / "metrics.json", default={}).get("notebook_costs", {})
    costs = {}
    watcher = ProgressWatcher(run_dir, log)
    try:
        for i, nb in enumerate(chosen, start=1):
            os.environ["WORKBOOK_NOTEBOOK"] = nb.stem
            km = kernels.for_notebook(nb)
            if i < len(chosen):
                kernels.prepare(chosen[i])  # the next notebook's kernel, if it needs another, starts now
            head = f"[{i}/{len(chosen)}] {nb.stem} ..."
            log(head, flush=True)
            # written under a temporary name and renamed once papermill has saved it whole; an earlier
            # run's copy goes first, so that a failure never leaves it standing as this run's
            out, partial = run_dir / nb.name, run_dir / f".{nb.stem}.partial.ipynb"
            out.unlink(missing_ok=True)
            start, started_at = time.perf_counter(), time.time()
            watcher.start(nb.stem)
            try:
                pm.execute_notebook(str(nb), str(partial), parameters=values, cwd=str(NOTEBOOK_DIR),
                                    progress_bar=False, kernel_name="python3", log_output=False, km=km)
            except DeadKernelError:
                watcher.stop()
                log(f"{head} FAILED")
                partial.replace(out)
                raise RunFailed(f"{nb.name}: the kernel died in {failed_cell(out, kernel_died=True)}: {how_it_ended(km)}.\n"
                                f"The notebook as far as it ran: {out}") from None
            except pm.PapermillExecutionError as e:
                watcher.stop()
                log(f"{head} FAILED")
                partial.replace(out)
                show_data_report(run_dir, nb, started_at, log)
                raise RunFailed(f"{nb.name} failed in {failed_cell(out)}: {e.ename}: {e.evalue}{disk_hint(e.evalue, run_dir)}\n"
                                f"The executed notebook with the traceback: {out}") from None
            except OSError as e:  # papermill could not save the executed notebook (most often: the disk is full)
                watcher.stop()
                log(f"{head} FAILED")
                partial.unlink(missing_ok=True)
                raise RunFailed(f"{nb.name}: {e.strerror or e} while saving the executed notebook"
                                f"{disk_hint(str(e), run_dir)}; it is not kept, as it would be cut short.") from None
            partial.replace(out)
            watcher.stop()
            cost = {"wall_s": time.perf_counter() - start, **kernels.costs(), **watcher.gpu_peak()}
            costs[nb.stem] = cost
            rundir.update_metrics(run_dir, notebook_costs=dict(sorted({**earlier, **costs}.items())))
            log(f"{head} ok ({cost['wall_s']:.0f} s{_gpu_text(cost)})", flush=True)
            show_data_report(run_dir, nb, started_at, log)
    finally:
        watcher.stop()
        kernels.shutdown()
    return costs


def disk_hint(message: str, run_dir: Path) -> str:
    """Where an error says the disk is full: how much the run folder's disk has left, and what to do."""
    import shutil

    if "No space left on device" not in message:
        return ""
    free = shutil.disk_usage(run_dir).free
    return (f" (the disk of the run folder {run_dir} has {free / 2**20:.1f} MiB free: free some space or "
            f"choose another --run-dir, then run the same command again)")


def uses_unsloth(values: dict) -> bool:
    """Whether the run's model steps take the unsloth backend on this machine."""
    from helpers.model.machine import choose_backend

    return choose_backend({**params.DEFAULTS, **values}["backend"]) == "unsloth"


def _gpu_text(cost: dict) -> str:
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


class RunFailed(RuntimeError):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="YAML file of parameter names and values")
    ap.add_argument("--run-dir", type=Path, help="run folder (default runs/<config>-<UTC time>)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (repeatable)")
    ap.add_argument("--only", action="append", default=[], metavar="NN", help="run only notebook NN (repeatable)")
    ap.add_argument("--kernel", choices=("shared", "fresh"), default="shared",
                    help="shared (default): one kernel for all notebooks, emptied before each, so libraries "
                         "are imported once; fresh: a new kernel per notebook, as JupyterLab does")
    args = ap.parse_args(argv)
    kernels = None
    try:
        values = config.load(args.config)
        overrides = {name: parse_value(value) for name, value in args.parameter}
        params.check(overrides)
        values.update(overrides)
        from tools.preflight import check_combinations

        chosen = select(args.only)
        run_dir = rundir.resolve(args.run_dir or values.get("run_dir") or default_run_dir(args.config))
        values["run_dir"] = str(run_dir)
        # the first kernel starts, and imports its libraries, while this process checks the parameters
        prepare_environment(run_dir)
        kernels = Kernels(args.kernel, uses_unsloth(values), NOTEBOOK_DIR)
        kernels.start(kernels.flavour_for(chosen[0]), background=True)
        # what the notebooks' settle() will merge, checked once here and saved
        saved = rundir.read_json(run_dir / "params.json", default={})
        merged = {**params.DEFAULTS, **{k: v for k, v in saved.items() if k in params.BY_NAME}, **values}
        check_combinations(merged)
        refuse_changes_not_run(saved, merged, chosen)
        rundir.write_json(run_dir / "params.json", merged)
        print(f"run folder: {run_dir}", flush=True)
        execute(run_dir, values, chosen, log=print, kernels=kernels)
    except (params.ParameterError, RunFailed) as e:
        if kernels is not None:
            kernels.shutdown()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, params.ParameterError) else 1
    metrics = rundir.read_json(run_dir / "metrics.json", default={})
    summary = {k: metrics[k] for k in ("backend", "train_loss", "eval_loss_base", "eval_loss_finetuned",
                                       "train_runtime_s", "tokens_per_s") if k in metrics}
    if summary:
        print("metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in summary.items()))
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
