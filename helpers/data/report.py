"""What step 3 tells about its data: the report that 03 keeps in the run folder (`data_report.json`:
rows read, kept, dropped and why, the first bad rows, repairs, warnings) and what 03 shows of the rows
(an example, the token lengths, the system message, the split, one collated batch)."""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import rundir, show
from helpers.data import formats
from helpers.data.sources import DatasetError
from helpers.data.split import held_out_count
from helpers.data.tokenizing import CHARS_PER_TOKEN
from helpers.show import Sentences, whole


SHOWN_PROBLEMS = 50
MIN_HELD_OUT = 20  # fewer held-out rows are warned about: the scores on them move in big jumps
UNFINISHED = "step 3 has not finished: its split is not saved (run 03_dataset.ipynb to its end)"


@dataclass
class Report:
    """What happened to every row of `source`, written to run_dir/data_report.json at each stage, so that
    a step 3 that stops part-way leaves a report that says so (`error`), never one that looks complete."""
    source: str
    run_dir: str
    max_seq_length: int = 0
    on_bad_rows: str = "skip"
    eval_fraction: float = 0.05
    format: str | None = None
    format_reason: str = ""
    template: str = ""
    rows_read: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> rows
    truncated: int = 0
    cut_before_tokenizing: int = 0  # kept rows over CHARS_PER_TOKEN * max_seq_length characters (also truncated)
    fixes: dict = field(default_factory=dict)    # what was repaired on the way in, e.g. CRLF
    problems: list = field(default_factory=list)  # the first bad rows: where, reason, detail
    warnings: list = field(default_factory=list)  # what works but may mislead, with the numbers
    supervision: dict = field(default_factory=dict)  # what the loss sees (helpers.data.supervision.audit)
    error: str | None = UNFINISHED

    @classmethod
    def start(cls, source, fixes: dict, params: dict) -> "Report":
        """A new report for `source` (a sources.Source) in params' run folder; what an earlier run of step 3
        left (its split, report, plot and row counts) goes first, so that none of it reads as this run's
        result if this one fails."""
        run_dir = Path(rundir.resolve(params["run_dir"]))
        shutil.rmtree(run_dir / "data", ignore_errors=True)
        for name in ("data_report.json", "token_lengths.png"):
            (run_dir / name).unlink(missing_ok=True)
        metrics = rundir.read_json(run_dir / "metrics.json", default={})
        if {"num_train_rows", "num_eval_rows"} & set(metrics):
            rundir.write_json(run_dir / "metrics.json", {k: v for k, v in metrics.items()
                                                         if k not in ("num_train_rows", "num_eval_rows")})
        report = cls(source.given, str(run_dir), params["max_seq_length"], params["on_bad_rows"],
                     params["eval_fraction"], fixes=fixes)
        report.save()
        return report

    def save(self) -> None:
        rundir.write_json_or_remove(Path(self.run_dir) / "data_report.json",
                                    {k: v for k, v in asdict(self).items() if k != "run_dir"})

    def fail(self, message: str) -> DatasetError:
        """The error to raise, recorded in the report first."""
        self.error = f"{self.source}: {message}"
        self.save()
        return DatasetError(self.error)

    def count(self, rows, fmt: str, why: str, template: str) -> None:
        """Every row's fate from the `problem`, `truncated` and `cut` columns of the tokenized rows; stops on
        a bad row with on_bad_rows='fail', and when too few rows are usable to hold some out and train."""
        columns = rows.select_columns(["where", "problem", "detail", "truncated", "cut"]).to_dict()
        bad = [(i, w, p, d) for i, (w, p, d) in enumerate(zip(columns["where"], columns["problem"], columns["detail"]))
               if p is not None]
        good = [i for i, p in enumerate(columns["problem"]) if p is None]
        self.format, self.format_reason, self.template, self.rows_read = fmt, why, template, len(rows)
        self.kept, self.truncated = len(good), sum(columns["truncated"][i] for i in good)
        self.cut_before_tokenizing = sum(columns["cut"][i] for i in good)
        self.dropped = dict(Counter(p for _, _, p, _ in bad).most_common())
        self.problems = [{"ordinal": i + 1, "where": w, "reason": p, "detail": d} for i, w, p, d in bad[:SHOWN_PROBLEMS]]
        self.save()
        dropped = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items()) or "none"
        if self.on_bad_rows == "fail" and bad:
            listed = "; ".join(f"{w}: {p} ({d})" for _, w, p, d in bad[:5])
            raise self.fail(f"{len(bad)} bad rows and on_bad_rows = 'fail': {listed}{' ...' if len(bad) > 5 else ''}.")
        if not good:
            raise self.fail(f"no usable rows (read {self.rows_read}, dropped: {dropped}). Nothing to train on; the "
                            f"report lists the first bad rows.")
        if held_out_count(len(good), self.eval_fraction) >= len(good):  # e.g. every OIG row broken but one
            raise self.fail(f"only {len(good)} usable row{'s' * (len(good) > 1)} (read {self.rows_read}, dropped: "
                            f"{dropped}; read as format '{fmt}', {why}): too few to hold out {self.eval_fraction:.0%} "
                            f"and still train. Fix the file (the report lists the first bad rows), or lower "
                            f"eval_fraction.")

    def note_audit(self, audit: dict) -> None:
        """The supervision audit of the rows that train, and its warnings."""
        self.supervision = {k: v for k, v in audit.items() if k != "warnings"}
        self.warnings += audit["warnings"]
        self.save()

    def finish(self, train, held_out) -> None:
        """After the split is saved: the rows kept (a filter of 03's own cells counted as such), a warning
        where the held-out side is too small to mean much, and no error."""
        kept = len(train) + len(held_out)
        if kept < self.kept:
            self.dropped["removed in 03's own cells"] = self.kept - kept
        self.kept = kept
        if 0 < len(held_out) < MIN_HELD_OUT:
            n = len(held_out)
            self.warnings.append(
                f"only {n} held-out row{'s' * (n > 1)} ({self.eval_fraction:g} of {kept}): one row moves the fact score by "
                f"{100 / n:.0f} points, and the held-out loss is as noisy; {MIN_HELD_OUT} or more need eval_fraction "
                f"{min(0.5, MIN_HELD_OUT / kept):.2g} or more rows")
        self.error = None
        self.save()
        rundir.update_metrics(Path(self.run_dir), num_train_rows=len(train), num_eval_rows=len(held_out))

    def table(self):
        rows = [("source", self.source), ("format", f"{self.format} ({self.format_reason})"),
                ("rendered with", self.template), ("rows read", self.rows_read), ("rows kept", self.kept)]
        rows += [(f"dropped: {reason}", n) for reason, n in self.dropped.items()]
        rows += [(f"truncated to max_seq_length={self.max_seq_length}", self.truncated)]
        if self.cut_before_tokenizing:
            rows += [(f"of which cut to {CHARS_PER_TOKEN} characters a token before tokenizing",
                      self.cut_before_tokenizing)]
        rows += [(f"fixed: {what}", n) for what, n in self.fixes.items()]
        rows += [("warning", text) for text in self.warnings]
        return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")

    def problems_table(self, n: int = 8):
        shown = [{k: p[k] for k in ("where", "reason", "detail")} for p in self.problems[:n]]
        return whole(shown, columns=["where", "reason", "detail"]) if shown else "No bad rows."


def example(row: dict, tokenizer=None, mark_answers: bool = True, width: int = 1200) -> str:
    """One prepared row as the model sees it; answers (what train_on_responses_only keeps in the loss)
    wrapped in [[ ]] (found again with `tokenizer` where 03 did not need them)."""
    text, out, pos = row["text"], [], 0
    spans = row.get("spans")
    if spans is None and mark_answers and row.get("messages") and tokenizer is not None:
        _, spans = formats.render(tokenizer, row["messages"])
        spans = [(s, min(e, len(text))) for s, e in spans if s < len(text)]  # the row may be truncated
    for s, e in spans if mark_answers and row.get("messages") else []:
        out += [text[pos:s], "[[", text[s:e], "]]"]
        pos = e
    shown = "".join(out) + text[pos:]
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def length_stats(lengths, max_seq_length: int):
    arr = np.asarray(lengths[:])  # [:]: a Dataset's column read at once (row by row: 8 s at 210k rows)
    rows = [("rows", len(arr)), ("tokens in all", int(arr.sum())), ("median tokens", float(np.median(arr))),
            ("longest", int(arr.max())), (f"longer than max_seq_length={max_seq_length}", int((arr > max_seq_length).sum()))]
    # formatted here: a column mixing counts would otherwise show them all as floats
    return pd.DataFrame([(k, f"{v:g}" if isinstance(v, float) else f"{v:,}") for k, v in rows],
                        columns=["what", "value"]).set_index("what")


def plot_lengths(lengths, max_seq_length: int, path=None):
    lengths = np.asarray(lengths[:])  # as in length_stats
    fig, ax = show.new_figure()
    over = int((lengths > max_seq_length).sum())
    ax.hist(lengths, bins=min(40, max(5, len(np.unique(lengths)))), color="#2563eb")
    ax.set_title(f"{over} of {len(lengths):,} rows longer than max_seq_length = {max_seq_length}", fontsize=10)
    if lengths.max() < max_seq_length / 4:  # the limit is far off the bars: say so rather than squash them
        ax.set_xlim(0, lengths.max() * 1.3)
        ax.annotate(f"max_seq_length = {max_seq_length}\nfurther right →", xy=(0.99, 0.97),
                    xycoords="axes fraction", ha="right", va="top", color="#dc2626")
    else:
        ax.axvline(max_seq_length, color="#dc2626", linestyle="--")
        ax.annotate(" max_seq_length", xy=(max_seq_length, 0.97), xycoords=("data", "axes fraction"),
                    va="top", color="#dc2626")
    ax.set_xlabel("tokens per row (before truncation)")
    ax.set_ylabel("rows")
    return show.finish(fig, path)


def batch_table(batch, tokenizer, row: int, around: int, width: int = 5):
    """Positions `around - width` to `around + width` of one row of a collated batch: token, input id,
    attention mask and label (-100: left out of the loss), a column per position."""
    cut = slice(max(0, around - width), around + width)
    ids = batch["input_ids"][row][cut].tolist()
    table = pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(ids), "input_ids": ids,
                          "attention_mask": batch["attention_mask"][row][cut].tolist(),
                          "labels": batch["labels"][row][cut].tolist()},
                         index=pd.Index(range(cut.start, cut.start + len(ids)), name="position"))
    return table.T


def system_note(tokenizer, chosen: str):
    """What system message the rows got with `system_message` = `chosen`, in a sentence (the template
    may add one nobody asked for)."""
    default = formats.template_system(tokenizer)
    if chosen == "template":
        if default is None:
            return Sentences("The chat template adds no system message: rows without one have none "
                             "(`system_message = 'template'`).")
        return Sentences(f"The chat template wrote this **system message into every row**: \"{default}\" "
                         f"(`system_message = 'template'`). The data teaches a different persona, Pip, so the "
                         f"model is trained on a contradiction it must learn to ignore. Set `system_message` to "
                         f"`'none'` (an empty system turn) or to your own text, e.g. `'You are Pip, a cheerful "
                         f"assistant.'`, and every row, and the chat in step 8, gets that instead.")
    if chosen == "none":
        return Sentences("No system text (`system_message = 'none'`)"
                         + (": the template writes an empty system turn, since it would otherwise add its "
                            f"own (\"{default}\")." if default is not None else "."))
    return Sentences(f"Every row without its own system turn got this one: \"{chosen}\".")


def split_note(train: list, held_out: list, shared: int):
    """How the rows were split; `shared`: held-out rows with a question or answer also trained on."""
    total = len(train) + len(held_out)
    overlap = ("none of them shares a question or an answer with a training row" if not shared else
               f"**{shared} of them share a question or an answer with training rows**")
    return Sentences(f"**{len(train):,} rows to train on, {len(held_out):,} held out** "
                     f"({len(held_out) / total:.0%} of {total:,}; {overlap}), saved in the run folder's `data/`.")
