"""Steps 1-5 without notebook kernels, e.g. on several GPUs (one process each):

    python -m tools.train CONFIG.yaml [--run-dir DIR] [-p NAME VALUE]...
    accelerate launch --num_processes 2 --multi_gpu -m tools.train CONFIG.yaml ...   (make train-multi)

It runs the notebooks' own cells in this process (tools.cells): the main process runs 01-04, which leave
in the run folder what step 5 loads (the model's record, the LoRA, the rows, the SFTConfig); then every
process runs 05, whose trainer gives each process rows of its own, and the main process writes the run
folder as the notebook does (adapter, log, metrics, and rows_trained.json under several processes), with
the same crash safety. 06-08 run on the result as usual (`python -m tools.run CONFIG --only 06 ...`).
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path

from helpers import params, rundir
from tools import cells, config, guards, preflight, runlock


def main(argv=None) -> int:
    import argparse

    from helpers.training import checkpoints
    from tools import run as runner

    ap = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as lock:
        try:
            values = guards.from_here({**config.load(args.config), **params.check(
                {name: runner.parse_value(value) for name, value in args.parameter})})
            values["run_dir"] = str(rundir.resolve(args.run_dir or values.get("run_dir")
                                                   or runner.default_run_dir(args.config)))
            if os.environ.get("RANK", "0") == "0":  # under accelerate launch, the main process holds it
                lock.enter_context(runlock.held(Path(values["run_dir"])))
            merged = preflight.check_combinations(params.check({**params.DEFAULTS, **values}))
            guards.refuse_mixing_trainings(Path(values["run_dir"]), merged, runner.notebooks()[:5])
        except params.ParameterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        import torch
        from accelerate import PartialState

        # one process, or one per GPU under accelerate launch; without a GPU, one per CPU process (gloo),
        # where PartialState() alone would make each process a main process of its own
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.is_main_process:
            for notebook in ("01", "02", "03", "04"):
                cells.run(notebook, values)
                gc.collect()  # each notebook's model goes before the next one loads its own
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        state.wait_for_everyone()
        watched = {}

        def watch(namespace):  # after each of 05's cells: once its trainer exists, note the rows it trains
            if state.num_processes > 1 and "trainer" in namespace and not watched:
                watched["rows"] = RowsTrained(namespace["trainer"])

        try:
            stats = cells.run("05", values, after_cell=watch)["m"].stats
        except checkpoints.TrainingInterrupted as e:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            _leave_process_group()
            return 130
        if watched:  # every process trained rows of its own: the run's figures are sums over the processes
            stats = totals(stats, state, Path(values["run_dir"]), watched["rows"])
        if state.is_main_process:
            print(f"trained {stats['train_steps']} steps on {state.num_processes} process(es): "
                  f"{stats['tokens_per_s']:.1f} tokens/s, final step loss {stats['final_step_loss']:.4f}; "
                  f"{values['run_dir']}")
        state.wait_for_everyone()  # the others wait while the main process saves, then all leave together
        _leave_process_group()
        return 0


def totals(stats: dict, state, run_dir: Path, rows: "RowsTrained") -> dict:
    """The run's figures over every process, in metrics.json, and which rows each trained."""
    import math

    tokens = sum(_gathered(stats["train_tokens"]))
    stats = {**stats, "world_size": state.num_processes, "train_tokens": tokens,
             "tokens_per_s": tokens / stats["train_runtime_s"] if stats["train_runtime_s"] > 0 else math.nan,
             "tokens_per_s_steady": sum(_gathered(stats["tokens_per_s_steady"])),
             "peak_memory_gib_per_process": _gathered(stats["peak_memory_gib"])}  # one card each
    by_process = _gathered(rows.trained)
    if state.is_main_process:
        rundir.update_metrics(run_dir, **stats)
        rows.save(run_dir, by_process)
    return stats


class RowsTrained:
    """Which rows of data/train.arrow each process trained on, written to rows_trained.json: under
    data parallelism every process must train rows of its own. Keys are taken where the data loader
    collates a batch (on the CPU, no GPU sync; the trainer's loaders have no worker processes) and kept
    when training_step takes that batch, so the batch a loader fetches ahead is not counted. Counts from
    this process's start (a resumed run's earlier rows are in its checkpoint, not here); with packing, a
    key is a packed row."""

    def __init__(self, trainer):
        self.fetched, self.trained = [], []
        step = trainer.training_step

        def stepped(*args, **kwargs):
            if self.fetched:
                self.trained.extend(self.fetched.pop(0))
            return step(*args, **kwargs)

        trainer.data_collator, trainer.training_step = _KeyedCollator(trainer.data_collator, self.fetched), stepped

    @staticmethod
    def save(run_dir: Path, by_process: list[list[int]]) -> None:
        from helpers.data import split

        wanted, index, start = {k for keys in by_process for k in keys}, {}, 0
        train, _ = split.load(run_dir)
        for batch in train.select_columns(["input_ids"]).iter(batch_size=4096):  # 210k rows: not all at once
            for i, ids in enumerate(batch["input_ids"], start):
                key = row_key(ids)
                if key in wanted:
                    index.setdefault(key, i)
            start += len(batch["input_ids"])
            if len(index) == len(wanted):
                break
        rows = [[index.get(k, -1) for k in keys] for keys in by_process]
        rundir.write_json(run_dir / "rows_trained.json", {
            "processes": len(rows), "rows": rows,
            "note": "indices into data/train.arrow that each process trained on, in order (-1: a packed row)"})


class _KeyedCollator:
    """The trainer's collator, noting each batch's row keys; its attributes (padding_free, ...) read through."""

    def __init__(self, inner, sink: list):
        self.inner, self.sink = inner, sink

    def __call__(self, features):
        self.sink.append([row_key(f["input_ids"]) for f in features])
        return self.inner(features)

    def __getattr__(self, name):
        if name in ("inner", "sink"):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.inner, name)


def row_key(ids) -> int:
    """The same key for the same token ids in every process (Python's hash() is salted per process)."""
    import hashlib

    import numpy as np

    return int.from_bytes(hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest(), "little")


def _leave_process_group() -> None:
    """A process that exits with its process group alive can abort at interpreter shutdown (gloo's
    threads: "terminate called without an active exception", seen once in this project's two-process
    CPU test; pytorch/pytorch#190489)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _gathered(value) -> list:
    """Every process's `value`, in process order (collective: all processes call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


if __name__ == "__main__":
    sys.exit(main())
