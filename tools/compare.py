"""Compare finished runs: their loss curves in one plot, their final figures in one Markdown table.

    python -m tools.compare RUN_DIR... [--out DIR]

Writes DIR/comparison.png and DIR/comparison.md (default DIR: runs/compare-<UTC time>) and prints the
table. Runs are labelled by the parameters in which they differ, and sorted best first (lowest
held-out loss after training).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from helpers import rundir

COLUMNS = [("train_loss", "train loss"), ("eval_loss_base", "held-out loss before"),
           ("eval_loss_finetuned", "held-out loss after"), ("perplexity_finetuned", "perplexity after"),
           ("tokens_per_s", "tokens/s"), ("train_runtime_s", "training s")]
IGNORED = {"run_dir"}  # differs between every two runs by construction


class CompareError(ValueError):
    pass


def load_run(folder: Path) -> dict:
    folder = Path(folder)
    metrics = rundir.read_json(folder / "metrics.json")
    if not metrics or "train_loss" not in metrics:
        raise CompareError(f"{folder}: no finished training here (metrics.json without train_loss); "
                           f"run the workbook into it first.")
    history = rundir.read_json(folder / "log_history.json", default=[])
    points = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    return {"folder": folder, "params": rundir.read_json(folder / "params.json", default={}),
            "metrics": metrics, "steps": [s for s, _ in points], "losses": [v for _, v in points]}


def varied(runs: list[dict]) -> list[str]:
    """Parameter names whose values differ between the runs."""
    names = sorted({k for r in runs for k in r["params"]} - IGNORED)
    return [n for n in names if len({repr(r["params"].get(n)) for r in runs}) > 1]


def label(run: dict, names: list[str]) -> str:
    if not names:
        return run["folder"].name
    return ", ".join(f"{n}={run['params'].get(n)}" for n in names)


def ranked(runs: list[dict]) -> list[dict]:
    def key(r):
        value = r["metrics"].get("eval_loss_finetuned")
        return (value is None, value if value is not None else r["metrics"]["train_loss"])
    return sorted(runs, key=key)


def markdown(runs: list[dict]) -> str:
    names = varied(runs)
    header = ["rank", "run"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, run in enumerate(ranked(runs), start=1):
        cells = [str(i), label(run, names)]
        for key, _ in COLUMNS:
            value = run["metrics"].get(key)
            cells.append("" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path=None):
    from helpers import show as plots

    names = varied(runs)
    fig, ax = plots.new_figure()
    for run in ranked(runs):
        line, = ax.plot(run["steps"], run["losses"], label=label(run, names))
        after = run["metrics"].get("eval_loss_finetuned")
        if after is not None:
            ax.axhline(after, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (dotted: held-out loss after)")
    ax.legend(fontsize="small")
    return plots.finish(fig, path)


def compare(folders, out: Path) -> tuple[Path, Path]:
    runs = [load_run(f) for f in folders]
    out.mkdir(parents=True, exist_ok=True)
    table = out / "comparison.md"
    tmp = table.with_name(".comparison.md.tmp")
    tmp.write_text(markdown(runs), encoding="utf-8")
    tmp.replace(table)
    png = out / "comparison.png"
    plot(runs, png)
    return png, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders")
    ap.add_argument("--out", type=Path, help="where comparison.png/.md go (default runs/compare-<UTC time>)")
    args = ap.parse_args(argv)
    out = args.out or rundir.REPO_ROOT / "runs" / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    try:
        png, table = compare(args.runs, out)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.read_text(), end="")
    print(f"wrote {png} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
