"""Run the numbered notebooks headless with papermill, in order, into one run folder.

    python -m tools.run CONFIG.yaml [--run-dir DIR] [-p NAME VALUE]... [--only NN]... [--kernel shared|fresh]

Each executed notebook, the adapter, metrics.json and the plots land in the run folder
(default: runs/<config name>-<UTC time>). A failing cell stops the run and names the notebook and cell.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from helpers import params, rundir
from tools import config, runlock
from tools.console import ProgressWatcher, gpu_text, show_data_report
from tools.guards import from_here, refuse_changes_not_run, refuse_mixing_trainings
from tools.kernels import Kernels, how_it_ended, interrupt, pythonpath_with_repo

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


def prepare_environment(run_dir: Path) -> None:
    """What every kernel of the run inherits: where to report progress, and where `helpers` is (kernels
    start in notebooks/, and the repository need not be an installed package)."""
    import os

    from helpers.training import progress

    os.environ[progress.ENV] = str(run_dir)
    os.environ["PYTHONPATH"] = pythonpath_with_repo(os.environ.get("PYTHONPATH"))


class Interrupts:
    """Ctrl-C or SIGTERM while notebooks run: passed to the running notebook's kernel as an interrupt, once
    (05 then saves a checkpoint at the end of the current step and stops), and no notebook starts after it.
    A second one stops the runner at once."""

    def __init__(self):
        self.signal, self.km, self.previous = None, None, {}

    def __enter__(self):
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        import signal

        if self.signal:  # the second one
            self.__exit__()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping; 05 saves a checkpoint at the end of its current step first "
              f"(again to stop at once)", file=sys.stderr, flush=True)
        if self.km is not None:
            interrupt(self.km)


class Stopped(RuntimeError):
    """The run stopped on Ctrl-C or SIGTERM, as asked."""


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
    costs, stack = {}, contextlib.ExitStack()
    watcher = ProgressWatcher(run_dir, log)
    try:
        interrupts = stack.enter_context(Interrupts())
        for i, nb in enumerate(chosen, start=1):
            if interrupts.signal:
                raise Stopped(f"{interrupts.signal} before {nb.stem}: run the same command again to go on.")
            os.environ["WORKBOOK_NOTEBOOK"] = nb.stem
            km = interrupts.km = kernels.for_notebook(nb)
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
                partial.replace(out)
                if interrupts.signal:
                    log(f"{head} stopped")
                    raise Stopped(f"{interrupts.signal} in {nb.stem}" + (  # the kernel's words name its SIGINT
                        ", " + e.evalue.split(" ", 1)[1] if e.ename == "TrainingInterrupted" else
                        ": stopped before it ended; run the same command again to run it anew.")) from None
                log(f"{head} FAILED")
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
            log(f"{head} ok ({cost['wall_s']:.0f} s{gpu_text(cost)})", flush=True)
            show_data_report(run_dir, nb, started_at, log)
    finally:
        watcher.stop()
        kernels.shutdown()
        stack.close()
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
    with contextlib.ExitStack() as lock:
        try:
            values = config.load(args.config)
            overrides = {name: parse_value(value) for name, value in args.parameter}
            params.check(overrides)
            values = from_here({**values, **overrides})
            from tools.preflight import check_combinations

            chosen = select(args.only)
            run_dir = rundir.resolve(args.run_dir or values.get("run_dir") or default_run_dir(args.config))
            values["run_dir"] = str(run_dir)
            lock.enter_context(runlock.held(run_dir))  # before anything in the run folder is read or written
            # what the notebooks' settle() will merge, checked once here and saved
            saved = rundir.read_json(run_dir / "params.json", default={})
            merged = {**params.DEFAULTS, **{k: v for k, v in saved.items() if k in params.BY_NAME}, **values}
            check_combinations(params.check(merged))  # a wrong value stops here, within a second or so
            refuse_changes_not_run(saved, merged, chosen)
            refuse_mixing_trainings(run_dir, merged, chosen)
            # the first kernel starts, and imports its libraries, while this process writes and reads on
            prepare_environment(run_dir)
            kernels = Kernels(args.kernel, uses_unsloth(values), NOTEBOOK_DIR)
            kernels.start(kernels.flavour_for(chosen[0]), background=True)
            rundir.write_json(run_dir / "params.json", merged)
            print(f"run folder: {run_dir}", flush=True)
            execute(run_dir, values, chosen, log=print, kernels=kernels)
        except Stopped as e:
            print(f"stopped: {e}", file=sys.stderr)
            return 130
        except (params.ParameterError, RunFailed) as e:
            if kernels is not None:
                kernels.shutdown()
            print(f"error: {e}", file=sys.stderr)
            return 2 if isinstance(e, params.ParameterError) else 1
        # the training's figures, where this command trained (an earlier 05's are not this run's)
        ran_05 = any(nb.name.startswith("05_") for nb in chosen)
        metrics = rundir.read_json(run_dir / "metrics.json", default={}) if ran_05 else {}
        summary = {k: metrics[k] for k in ("backend", "train_loss", "eval_loss_base", "eval_loss_finetuned",
                                           "train_runtime_s", "tokens_per_s") if k in metrics}
        if summary:
            print("metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in summary.items()))
        print(f"done: {run_dir}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
