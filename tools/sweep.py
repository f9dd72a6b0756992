"""Run the workbook once per combination of parameter values, each into its own run folder, then compare.

    python -m tools.sweep CONFIG.yaml -p lora_r 8,16,32 [-p learning_rate 1e-4,2e-4] [--out DIR]
                            [--only NN]... [--list] [--index N]

Values are comma-separated and read as YAML (`-p target_modules "[q_proj, v_proj], [q_proj]"` gives two
lists). Every value is checked before the first run. By default each run executes the training
notebooks 01-05 (export and chat add nothing to a comparison); `--only` picks others.

In a workshop, `--list` prints one command per combination: hand one to each participant, have them
run it (or run `--index N` themselves) into the shared sweep folder, then
`python -m tools.compare DIR/*/` collects everyone's results.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from helpers import params, rundir
from tools import compare, config, run as runner

TRAINING = ["01", "02", "03", "04", "05"]


def parse_values(name: str, text: str) -> list:
    """'8,16,32' -> [8, 16, 32], each value checked as parameter `name` would be."""
    import yaml

    try:
        values = runner.numbers(yaml.safe_load(f"[{text}]"))
    except yaml.YAMLError as e:
        raise params.ParameterError(f"-p {name} {text!r}: not a comma-separated list of values ({e}).") from None
    if not values:
        raise params.ParameterError(f"-p {name}: no values given.")
    params.check_names([name])
    for value in values:
        params.check_value(name, value)
    return values


def combinations(grid: dict[str, list]) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def folder_name(combo: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in combo.items()).replace("/", "_").replace(" ", "")


def command(config: Path, combo: dict, out: Path, only: list[str]) -> list[str]:
    args = [sys.executable, "-m", "tools.run", str(config), "--run-dir", str(out / folder_name(combo))]
    for name, value in combo.items():
        args += ["-p", name, runner.yaml_value(value)]
    for nn in only:
        args += ["--only", nn]
    return args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                    help="a parameter and its comma-separated values (repeatable)")
    ap.add_argument("--out", type=Path, help="sweep folder (default runs/sweep-<config>-<UTC time>)")
    ap.add_argument("--only", action="append", default=[], metavar="NN",
                    help=f"notebooks to run per combination (default {' '.join(TRAINING)})")
    ap.add_argument("--list", action="store_true", help="print one command per combination and stop")
    ap.add_argument("--index", type=int, help="run only combination N (1-based, as --list numbers them)")
    args = ap.parse_args(argv)
    try:
        config.load(args.config)
        grid = {name: parse_values(name, text) for name, text in args.parameter}
        if not grid:
            raise params.ParameterError("Nothing to sweep: give at least one -p NAME VALUES.")
        combos = combinations(grid)
        if args.index is not None and not 1 <= args.index <= len(combos):
            raise params.ParameterError(f"--index {args.index}: there are {len(combos)} combinations (1-{len(combos)}).")
        only = args.only or TRAINING
        runner.select(only)
    except params.ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = (args.out or rundir.REPO_ROOT / "runs" / f"sweep-{args.config.stem}-{stamp}").resolve()
    if args.list:
        for i, combo in enumerate(combos, start=1):
            print(f"{i}: {shlex.join(['python'] + command(args.config, combo, out, only)[1:])}")
        print(f"then: python -m tools.compare {out}/*/ --out {out}")
        return 0

    chosen = [combos[args.index - 1]] if args.index else combos
    failed = []
    for i, combo in enumerate(chosen, start=1):
        print(f"=== sweep {i}/{len(chosen)}: {folder_name(combo)}", flush=True)
        argv_run = command(args.config, combo, out, only)[3:]  # drop "python -m tools.run"
        if runner.main(argv_run) != 0:
            failed.append(folder_name(combo))
    done = [f for f in sorted(out.iterdir()) if (f / "metrics.json").exists()
            and "train_loss" in rundir.read_json(f / "metrics.json")] if out.exists() else []
    if done:
        png, table = compare.compare(done, out)
        print(table.read_text(), end="")
        print(f"wrote {png} and {table}")
    if failed:
        print(f"error: {len(failed)} of {len(chosen)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
