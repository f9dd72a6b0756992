"""docs/parameters.md's table of every parameter, written from helpers/parameters.yaml (helpers.params.PARAMS):

    python -m tools.param_docs [--check] [--print]
"""
from __future__ import annotations

import json

from helpers import rundir
from helpers.params import PARAMS, STEPS


def markdown_table() -> str:
    rows = ["| parameter | step | default | what it does |", "| --- | --- | --- | --- |"]
    for p in PARAMS:
        default = json.dumps(p.default) if not isinstance(p.default, str) else f"`{p.default}`"
        if p.name == "target_modules":
            default = "the seven projections"
        step = "all" if p.step == "all" else STEPS[p.step]
        rows.append(f"| `{p.name}` | {step} | {default} | {p.help} |")
    return "\n".join(rows)


DOC = rundir.REPO_ROOT / "docs" / "parameters.md"


TABLE_START = "<!-- the table below is written by `python -m tools.param_docs`; edit helpers/parameters.yaml -->"


TABLE_END = "<!-- end of the table -->"


def document(text: str) -> str:
    """docs/parameters.md's text with the table between its markers replaced by the current one."""
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"{DOC}: the markers {TABLE_START!r} and {TABLE_END!r} are missing")
    return f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tools.param_docs",
                                 description="Write the parameter table into docs/parameters.md.")
    ap.add_argument("--check", action="store_true", help="only say whether the file is current (exit 1 if not)")
    ap.add_argument("--print", action="store_true", help="print the table instead")
    args = ap.parse_args(argv)
    if args.print:
        print(markdown_table())
        return 0
    text = DOC.read_text()
    current = document(text)
    if args.check:
        if current != text:
            print(f"{DOC} is out of date: run python -m tools.param_docs")
            return 1
        return 0
    if current != text:
        DOC.write_text(current)
    print(f"{DOC}: {len(PARAMS)} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
