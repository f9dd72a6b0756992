"""Training without notebooks, e.g. on several GPUs (one process each):

    python -m tools.train CONFIG.yaml [--run-dir DIR] [-p NAME VALUE]...
    accelerate launch --num_processes 2 --multi_gpu -m tools.train CONFIG.yaml ...   (make train-multi)

It does what notebooks 03 and 05 do (prepares the data if the run folder has none, trains with the
same Session, saves adapter, log and metrics) with the same crash safety.
"""
from __future__ import annotations

import math
from pathlib import Path

from helpers.machinery import rundir, storage
from helpers.train import Session, run, save_adapter, save_log_history


def main(argv=None) -> int:
    import argparse
    import sys

    from helpers import data, params as P
    from helpers.machinery import checkpoints, checks
    from helpers import model as models
    from tools import run as runner

    ap = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    try:
        values = P.load_config(args.config)
        overrides = {name: runner.parse_value(value) for name, value in args.parameter}
        P.check(overrides)
        merged = {**P.DEFAULTS, **values, **overrides}
        merged["run_dir"] = str(rundir.resolve(args.run_dir or values.get("run_dir")
                                               or runner.default_run_dir(args.config)))
        P.check(merged)
        checks.check_combinations(merged)
    except P.ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    state = PartialState()  # one process, or one per GPU under accelerate launch
    run_dir = Path(merged["run_dir"])
    if state.is_main_process:
        rundir.write_json(run_dir / "params.json", merged)
        if not (run_dir / "data" / "train.arrow").exists():
            prepared = data.prepare(models.load_tokenizer(merged["model_name"]), **P.pick(merged, data.prepare))
            storage.save_split(run_dir, *data.split(prepared.rows, merged["eval_fraction"], merged["seed"]), merged)
    state.wait_for_everyone()
    session = Session(merged)
    try:
        stats = run(session.trainer, merged)
    except checkpoints.TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return 130
    tokens = _sum_over_processes(stats["train_tokens"])
    steady = _sum_over_processes(stats["tokens_per_s_steady"])  # every process trains its own rows
    stats.update(world_size=state.num_processes, train_tokens=tokens, tokens_per_s_steady=steady,
                 tokens_per_s=tokens / stats["train_runtime_s"] if stats["train_runtime_s"] > 0 else math.nan)
    if state.is_main_process:
        save_adapter(session.model, session.tokenizer, run_dir)
        save_log_history(session.trainer, run_dir)
        rundir.update_metrics(run_dir, **stats)
        print(f"trained {stats['train_steps']} steps on {state.num_processes} process(es): "
              f"{stats['tokens_per_s']:.1f} tokens/s, final step loss {stats['final_step_loss']:.4f}; {run_dir}")
    return 0


def _sum_over_processes(value):
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    total = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(total)
    return type(value)(total.item())


if __name__ == "__main__":
    import sys

    sys.exit(main())
