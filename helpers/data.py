"""Step 3: read the dataset, check every row, render it as the model will see it, split and save it.

Nothing here trains; everything that can be wrong with the data is found here, before a model is
loaded for training: unreadable lines, missing or empty fields, wrong types, turns that don't
alternate, duplicates, rows longer than `max_seq_length`. Bad rows are skipped and counted
(`on_bad_rows: skip`) or stop the step (`fail`); the report lands in the notebook and in
`data_report.json`. The prepared split (`data/train.jsonl`, `data/eval.jsonl`) holds, per row, the
rendered text, the character spans of the answers, and the messages.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers import data_read, formats, rundir
from helpers.data_read import DatasetError

__all__ = ["DatasetError", "prepare", "split", "save_split", "load_split"]


@dataclass
class Report:
    source: str
    format: str | None = None
    format_reason: str = ""
    template: str = ""
    rows_read: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> rows
    truncated: int = 0
    fixes: dict = field(default_factory=dict)    # what was repaired on the way in, e.g. CRLF
    problems: list = field(default_factory=list)  # the first bad rows: where, reason, detail
    max_seq_length: int = 0
    error: str | None = None


@dataclass
class Prepared:
    rows: list[dict]      # {"text", "spans", "messages" (absent for plain text)}
    lengths: list[int]    # tokens per kept row before any truncation
    report: Report


SHOWN_PROBLEMS = 50


def prepare(params: dict, tokenizer) -> Prepared:
    """Read, check, render and measure the rows named by the parameters; report what happened.

    Any previous prepared split in the run folder is removed first, so a failure never leaves an
    old split that looks like the result of this one. The report is written either way.
    """
    run_dir = Path(params["run_dir"])
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    report = Report(source=str(params["dataset"]), max_seq_length=params["max_seq_length"])
    try:
        prepared = _prepare(params, tokenizer, report)
    except DatasetError as e:
        report.error = str(e)
        rundir.write_json(run_dir / "data_report.json", asdict(report))
        raise
    rundir.write_json(run_dir / "data_report.json", asdict(report))
    return prepared


def _prepare(params: dict, tokenizer, report: Report) -> Prepared:
    responses_only = params["train_on_responses_only"]
    # a *named* text format with responses-only is refused by helpers.checks before any work;
    # a *detected* one is refused below, once the rows show it
    raw = data_read.read(params["dataset"], params["dataset_split"], params["dataset_config"], params["max_rows"])
    report.source, report.rows_read = raw.source, raw.rows_read
    report.fixes = dict(raw.fixes)
    problems = list(raw.problems)

    fmt, why = params["dataset_format"], "named by dataset_format"
    if fmt == "auto":
        fmt, why = formats.detect([r.value for r in raw.records], params["dataset_text_field"])
        if fmt is None and not any(isinstance(r.value, dict) for r in raw.records):
            fmt = "text"  # no row is an object: each is reported below as the wrong type
        elif fmt is None:
            raise DatasetError(f"{raw.source}: cannot tell the dataset format ({why}). Expected "
                               f"'{params['dataset_text_field']}' (text or OIG turns; see dataset_text_field), "
                               f"'instruction' + 'output' (Alpaca), 'messages' or 'conversations'; or name it "
                               f"with dataset_format.")
    report.format, report.format_reason = fmt, why
    if responses_only and fmt == "text":
        raise DatasetError(f"{raw.source}: detected plain text ({why}): train_on_responses_only = True needs "
                           f"turns to tell prompts from answers. Set it False, or use a format with turns.")

    converted, seen = [], {}
    for record in raw.records:
        try:
            messages = formats.to_messages(record.value, fmt, params["dataset_text_field"])
        except formats.RowProblem as e:
            problems.append(data_read.Problem(record.ordinal, record.where, e.reason, e.detail))
            continue
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in seen:
            problems.append(data_read.Problem(record.ordinal, record.where, "duplicate",
                                              f"exact duplicate of {seen[key]}"))
            continue
        seen[key] = record.where
        converted.append((record, messages))

    if params["on_bad_rows"] == "fail" and problems:
        problems.sort(key=lambda p: p.ordinal)
        listed = "; ".join(f"{p.where}: {p.reason} ({p.detail})" for p in problems[:5])
        raise DatasetError(f"{raw.source}: {len(problems)} bad rows and on_bad_rows = 'fail': {listed}"
                           f"{' ...' if len(problems) > 5 else ''}.")

    rows, lengths, truncated = [], [], 0
    if converted:
        report.template = _template(tokenizer, fmt)
        rendered = [_render(tokenizer, messages, raw.source, record.where) for record, messages in converted]
        encodings = encode(tokenizer, [text for text, _ in rendered])
        limit = params["max_seq_length"]
        for (record, messages), (text, spans), (_, offsets) in zip(converted, rendered, encodings):
            n = len(offsets)
            if n > limit:
                if params["on_long_rows"] == "drop":
                    problems.append(data_read.Problem(record.ordinal, record.where, "too long",
                                                      f"{n} tokens > max_seq_length {limit}"))
                    continue
                cut = offsets[limit - 1][1]
                spans = [(s, min(e, cut)) for s, e in spans if s < cut]
                if responses_only and not spans:
                    problems.append(data_read.Problem(
                        record.ordinal, record.where, "no answer within max_seq_length",
                        f"the prompt alone fills the first {limit} tokens, so nothing would be learned"))
                    continue
                text, truncated = text[:cut], truncated + 1
            row = {"text": text, "spans": [list(s) for s in spans]}
            if not isinstance(messages, str):
                row["messages"] = messages
            rows.append(row)
            lengths.append(n)

    problems.sort(key=lambda p: p.ordinal)
    report.kept, report.truncated = len(rows), truncated
    report.dropped = dict(Counter(p.reason for p in problems).most_common())
    report.problems = [asdict(p) for p in problems[:SHOWN_PROBLEMS]]
    if not rows:
        dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items()) or "none"
        raise DatasetError(f"{raw.source}: no usable rows (read {raw.rows_read}, dropped: {dropped}). Nothing to "
                           f"train on; the report lists the first bad rows.")
    return Prepared(rows, lengths, report)


def _template(tokenizer, fmt: str) -> str:
    if fmt == "text":
        return "none: plain text, trained on as it is, EOS appended"
    if formats.ensure_chat_template(tokenizer) or tokenizer.chat_template == formats.PLAIN_CHAT_TEMPLATE:
        return "plain <human>:/<bot>: template (the tokenizer has no chat template)"
    return "the tokenizer's chat template"


def _render(tokenizer, messages, source: str, where: str):
    try:
        return formats.render(tokenizer, messages)
    except Exception as e:  # a template can raise anything (jinja errors, its own raise_exception)
        raise DatasetError(f"{source}, {where}: the chat template cannot render this row: {e}") from None


def encode(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(token ids, character offsets) per text. A BOS token is added only where the tokenizer adds one
    and the rendered text does not already start with it (chat templates often write it)."""
    bos = tokenizer.bos_token
    out = []
    for text in texts:
        add = not (bos and text.startswith(bos))
        enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=True)
        out.append((enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]))
    return out


def training_dataset(rows: list[dict], tokenizer, max_seq_length: int, responses_only: bool, name: str = "train"):
    """A pre-tokenized `datasets.Dataset` (input_ids, labels) for SFTTrainer. With `responses_only`, labels
    outside the answers' spans are -100, so only answer tokens count in the loss."""
    from datasets import Dataset

    input_ids, labels = [], []
    for i, (row, (ids, offsets)) in enumerate(zip(rows, encode(tokenizer, [r["text"] for r in rows])), start=1):
        ids, offsets = ids[:max_seq_length], offsets[:max_seq_length]
        if responses_only:
            spans = row["spans"]
            row_labels = [t if any(s <= a < e for s, e in spans) and b > a else -100
                          for t, (a, b) in zip(ids, offsets)]
            if all(x == -100 for x in row_labels):
                raise DatasetError(f"Prepared {name} split, row {i}: every token is masked by "
                                   f"train_on_responses_only (no answer within max_seq_length); run 03 again.")
        else:
            row_labels = list(ids)
        input_ids.append(ids)
        labels.append(row_labels)
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def split(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) with `eval_fraction` of the rows held out, chosen with `seed`; at least one each."""
    if eval_fraction == 0:
        return list(rows), []
    n_eval = max(1, round(len(rows) * eval_fraction))
    if n_eval >= len(rows):
        raise DatasetError(f"Only {len(rows)} usable rows: too few to hold out {eval_fraction:.0%} and still "
                           f"train. Lower 'eval_fraction' or add rows.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def save_split(run_dir: Path, train: list[dict], held_out: list[dict]) -> Path:
    """Write data/train.jsonl and data/eval.jsonl into the run folder, atomically."""
    final = Path(run_dir) / "data"
    with rundir.building(final) as tmp:
        for name, part in (("train", train), ("eval", held_out)):
            with (tmp / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for row in part:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return final


def load_split(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The rows that 03_dataset saved: (train, eval)."""
    folder = Path(run_dir) / "data"
    files = {name: folder / f"{name}.jsonl" for name in ("train", "eval")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"No prepared dataset in {folder} (missing {', '.join(missing)}): "
                                f"run 03_dataset.ipynb with this run_dir first.")
    return tuple([json.loads(line) for line in files[name].open(encoding="utf-8")] for name in ("train", "eval"))


# --- what notebook 03 shows ---------------------------------------------------------------------

def report_table(report: Report):
    import pandas as pd

    rows = [("source", report.source), ("format", f"{report.format} ({report.format_reason})"),
            ("rendered with", report.template), ("rows read", report.rows_read), ("rows kept", report.kept)]
    rows += [(f"dropped: {reason}", n) for reason, n in report.dropped.items()]
    rows += [(f"truncated to max_seq_length={report.max_seq_length}", report.truncated)]
    rows += [(f"fixed: {what}", n) for what, n in report.fixes.items()]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def problems_table(report: Report, n: int = 8):
    import pandas as pd

    shown = report.problems[:n]
    return pd.DataFrame(shown, columns=["where", "reason", "detail"]) if shown else "No bad rows."


def report_lines(report: dict) -> list[str]:
    """The report as plain lines, for the runner's console output (from data_report.json)."""
    lines = [f"data: {report['source']} ({report.get('format')}): read {report['rows_read']}, "
             f"kept {report['kept']}, truncated {report['truncated']}"]
    lines += [f"  dropped {n}: {reason}" for reason, n in report.get("dropped", {}).items()]
    lines += [f"  fixed {n}: {what}" for what, n in report.get("fixes", {}).items()]
    lines += [f"  {p['where']}: {p['reason']} ({p['detail']})" for p in report.get("problems", [])[:5]]
    return lines


def example(row: dict, mark_answers: bool = True, width: int = 1200) -> str:
    """One prepared row as the model sees it; answers (what train_on_responses_only keeps in the loss)
    wrapped in [[ ]]."""
    text, out, pos = row["text"], [], 0
    for s, e in row["spans"] if mark_answers and "messages" in row else []:
        out += [text[pos:s], "[[", text[s:e], "]]"]
        pos = e
    shown = "".join(out) + text[pos:]
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def token_lengths(tokenizer, rows: list[dict]) -> list[int]:
    return [len(ids) for ids, _ in encode(tokenizer, [r["text"] for r in rows])]


def length_stats(lengths: list[int], max_seq_length: int):
    import numpy as np
    import pandas as pd

    arr = np.asarray(lengths)
    return pd.DataFrame({"value": {
        "rows": len(arr), "tokens in all": int(arr.sum()), "median tokens": float(np.median(arr)),
        "longest": int(arr.max()), f"longer than max_seq_length={max_seq_length}": int((arr > max_seq_length).sum()),
    }})


def plot_lengths(lengths: list[int], max_seq_length: int, path=None):
    from helpers import plots

    fig, ax = plots.new_figure()
    over = sum(n > max_seq_length for n in lengths)
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#2563eb")
    ax.axvline(max_seq_length, color="#dc2626", linestyle="--",
               label=f"max_seq_length = {max_seq_length} ({over} rows longer)")
    if max(lengths) < max_seq_length / 4:  # keep the bars readable when every row is far below the limit
        ax.set_xlim(0, max(lengths) * 1.3)
        ax.annotate(f"max_seq_length = {max_seq_length} →", xy=(0.98, 0.9), xycoords="axes fraction",
                    ha="right", color="#dc2626")
    ax.set_xlabel("tokens per row (before truncation)")
    ax.set_ylabel("rows")
    ax.legend(loc="center right")
    return plots.finish(fig, path)


# --- held-out prompts for the before/after comparison (05) and evaluation ------------------------

def prompt_and_reference(row: dict, tokenizer) -> tuple[str, str, str] | None:
    """(question, prompt text, reference answer) for a held-out row: the conversation up to its last
    answer, rendered with the generation prompt; plain OIG text is cut at its last `<bot>:`."""
    messages = row.get("messages")
    if messages:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return messages[-2]["content"], prompt, messages[-1]["content"]
    text = row["text"]
    cut = text.rfind("<bot>:")
    if cut < 0:
        return None
    prompt = text[: cut + len("<bot>:")]
    reference = text[cut + len("<bot>:"):]
    if tokenizer.eos_token:
        reference = reference.replace(tokenizer.eos_token, "")
    question = prompt.split("<human>:")[-1].replace("<bot>:", "").strip()
    return question, prompt, reference.strip()


def held_out_prompts(held_out: list[dict], tokenizer, n: int) -> list[tuple[str, str, str]]:
    found = (prompt_and_reference(row, tokenizer) for row in held_out)
    return [p for p in found if p is not None][:n]
