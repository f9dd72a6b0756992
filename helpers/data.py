"""Step 3: read the dataset, check every row, render it as the model will see it, split and save it.

Nothing here trains; everything that can be wrong with the data is found here, before a model is
loaded for training: unreadable lines, missing or empty fields, wrong types, turns that don't
alternate, duplicates, rows longer than `max_seq_length`. Bad rows are skipped and counted
(`on_bad_rows: skip`) or stop the step (`fail`); the report lands in the notebook and in
`data_report.json`.

At the post's size (210k rows) the costs that matter are tokenizing and copying text, so rows are
tokenized here once, in batches on all cores, and the prepared split (`data/train.arrow`,
`data/eval.arrow`, Arrow files that steps 5 and 6 memory-map) holds per row the rendered text and its
token ids, truncated to `max_seq_length` (plus the loss labels with `train_on_responses_only`, and the
messages of held-out rows, from which prompts are made). `data/meta.json` records what the ids depend
on, so a later step can tell when 03 must run again.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


from helpers.machinery import data_read, formats, progress, rundir
from helpers.machinery.data_report import SHOWN_PROBLEMS
from helpers.machinery.tokenizing import CHARS_PER_TOKEN, encode, no_cycle_collection
from helpers.machinery.data_read import DatasetError
from helpers.params import pick

__all__ = ["DatasetError", "prepare", "split", "shared_with_training"]


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
    cut_before_tokenizing: int = 0  # kept rows over CHARS_PER_TOKEN * max_seq_length characters (also truncated)
    fixes: dict = field(default_factory=dict)    # what was repaired on the way in, e.g. CRLF
    problems: list = field(default_factory=list)  # the first bad rows: where, reason, detail
    max_seq_length: int = 0
    warnings: list = field(default_factory=list)  # what works but may mislead, with the numbers
    error: str | None = None


@dataclass
class Prepared:
    rows: list[dict]      # {"text", "input_ids", and "messages" (chat formats), "spans" + "labels" (responses only)}
    lengths: list[int]    # tokens per kept row before any truncation
    report: Report


MIN_HELD_OUT = 20  # fewer held-out rows are warned about: the scores on them move in big jumps
CHUNK = 4096  # rows rendered and tokenized per batch: large enough for all cores, small enough for memory


def prepare(tokenizer, *, run_dir, dataset, dataset_format, dataset_split, dataset_config, dataset_text_field,
            max_rows, system_message, max_seq_length, train_on_responses_only, on_bad_rows, on_long_rows,
            eval_fraction) -> Prepared:
    """Read, check, render and measure the rows of `dataset`; report what happened in
    run_dir/data_report.json. The arguments are the parameters of the same names (docs/parameters.md;
    `params.pick(P, data.prepare)` takes them from a parameter dict).

    Any previous prepared split in the run folder is removed first, so a failure never leaves an
    old split that looks like the result of this one. The report is written either way.
    """
    settings = pick(locals(), prepare)  # the keyword arguments as one dict, for _prepare
    run_dir = Path(run_dir)
    forget_last_split(run_dir)
    report = Report(source=str(dataset), max_seq_length=max_seq_length)
    try:
        with no_cycle_collection():
            prepared = _prepare(settings, tokenizer, report)
    except Exception as e:
        report.error = str(e) if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
        rundir.write_json_or_remove(run_dir / "data_report.json", asdict(report))
        raise
    rundir.write_json(run_dir / "data_report.json", asdict(report))
    return prepared


def forget_last_split(run_dir: Path) -> None:
    """What an earlier run of this step left (its split, report, plot and row counts) goes first, so that
    none of it reads as this run's result when this run fails."""
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    for name in ("data_report.json", "token_lengths.png"):
        (run_dir / name).unlink(missing_ok=True)
    metrics = rundir.read_json(run_dir / "metrics.json", default={})
    if "num_train_rows" in metrics or "num_eval_rows" in metrics:
        rundir.write_json(run_dir / "metrics.json", {k: v for k, v in metrics.items()
                                                     if k not in ("num_train_rows", "num_eval_rows")})


def _prepare(params: dict, tokenizer, report: Report) -> Prepared:
    """`prepare`'s work; `params` holds its keyword arguments."""
    responses_only = params["train_on_responses_only"]
    # a *named* text format with responses-only is refused by helpers.machinery.checks before any work;
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
    system = formats.system_message_for(tokenizer, params["system_message"])
    max_chars, cut_rows = CHARS_PER_TOKEN * params["max_seq_length"], set()
    for record in raw.records:
        try:
            messages = formats.with_system(formats.to_messages(record.value, fmt, params["dataset_text_field"]),
                                           system)
        except formats.RowProblem as e:
            problems.append(data_read.Problem(record.ordinal, record.where, e.reason, e.detail))
            continue
        record.value = None  # a huge row's parsed text goes now, not with the whole file below
        messages, was_cut = cut_to_characters(messages, max_chars)
        if was_cut:
            cut_rows.add(record.ordinal)
        # a 16-byte digest per row, not a second copy of every row's text; of the row as cut, since two
        # rows that differ only beyond the cut train on the same tokens
        key = hashlib.blake2b((messages if isinstance(messages, str) else json.dumps(messages, sort_keys=True,
                              ensure_ascii=False)).encode(), digest_size=16).digest()
        if key in seen:
            problems.append(data_read.Problem(record.ordinal, record.where, "duplicate",
                                              f"exact duplicate of {seen[key]}"))
            continue
        seen[key] = record.where
        converted.append((record.ordinal, record.where, messages))
    del raw.records[:]  # the parsed file is no longer needed; at 210k rows it is hundreds of MB

    if params["on_bad_rows"] == "fail" and problems:
        problems.sort(key=lambda p: p.ordinal)
        listed = "; ".join(f"{p.where}: {p.reason} ({p.detail})" for p in problems[:5])
        raise DatasetError(f"{raw.source}: {len(problems)} bad rows and on_bad_rows = 'fail': {listed}"
                           f"{' ...' if len(problems) > 5 else ''}.")

    rows, lengths, truncated = [], [], 0
    if converted:
        report.template = _template(tokenizer, fmt)
    limit = params["max_seq_length"]
    for chunk_start in range(0, len(converted), CHUNK):
        chunk = converted[chunk_start:chunk_start + CHUNK]
        rendered = _render_chunk(tokenizer, chunk, raw.source, responses_only)
        encodings = encode(tokenizer, [text for text, _ in rendered], offsets=responses_only)
        if not responses_only and params["on_long_rows"] == "truncate":  # offsets only where a row is cut
            long = [i for i, (ids, _) in enumerate(encodings) if len(ids) > limit]
            for i, again in zip(long, encode(tokenizer, [rendered[i][0] for i in long], offsets=True)):
                encodings[i] = again
        for (ordinal, where, messages), (text, spans), (ids, offsets) in zip(chunk, rendered, encodings):
            n = len(ids)
            if n > limit:
                if params["on_long_rows"] == "drop":
                    more = f"over {max_chars:,} characters" if ordinal in cut_rows else f"{n} tokens"
                    problems.append(data_read.Problem(ordinal, where, "too long",
                                                      f"{more} > max_seq_length {limit}"))
                    continue
                cut = offsets[limit - 1][1]
                if spans is not None:
                    spans = [(s, min(e, cut)) for s, e in spans if s < cut]
                    if not spans:
                        problems.append(data_read.Problem(
                            ordinal, where, "no answer within max_seq_length",
                            f"the prompt alone fills the first {limit} tokens, so nothing would be learned"))
                        continue
                text, ids, offsets, truncated = text[:cut], ids[:limit], offsets[:limit], truncated + 1
            # array('i'): 4 bytes a token, where a list would take 8 plus an int object each
            row = {"text": text, "input_ids": array("i", ids)}
            if spans is not None:
                row["spans"] = [list(s) for s in spans]
                row["labels"] = array("i", answer_labels(ids, offsets, spans))
            if not isinstance(messages, str):
                row["messages"] = messages
            rows.append(row)
            lengths.append(n)
            report.cut_before_tokenizing += ordinal in cut_rows
        progress.note(rows=chunk_start + len(chunk), of=len(converted), what="rows checked and tokenized")

    problems.sort(key=lambda p: p.ordinal)
    report.kept, report.truncated = len(rows), truncated
    report.dropped = dict(Counter(p.reason for p in problems).most_common())
    report.problems = [asdict(p) for p in problems[:SHOWN_PROBLEMS]]
    dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items()) or "none"
    if not rows:
        raise DatasetError(f"{raw.source}: no usable rows (read {report.rows_read}, dropped: {dropped}). Nothing to "
                           f"train on; the report lists the first bad rows.")
    if held_out_count(len(rows), params["eval_fraction"]) >= len(rows):
        # e.g. every OIG row broken but one, which auto-detection then reads as plain text
        raise DatasetError(f"{raw.source}: only {len(rows)} usable row{'s' * (len(rows) > 1)} (read "
                           f"{report.rows_read}, dropped: {dropped}; read as format '{fmt}', {why}): too few to "
                           f"hold out {params['eval_fraction']:.0%} and still train. Fix the file (the report lists "
                           f"the first bad rows), or lower eval_fraction.")
    held_out = held_out_count(len(rows), params["eval_fraction"])
    if 0 < held_out < MIN_HELD_OUT:  # 0: the runner refuses it (checks), data.prepare itself allows it
        report.warnings.append(
            f"only {held_out} held-out row{'s' * (held_out > 1)} ({params['eval_fraction']:g} of {len(rows)}): one "
            f"row moves the fact score by {100 / held_out:.0f} points, and the held-out loss is as noisy; "
            f"{MIN_HELD_OUT} or more need eval_fraction {min(0.5, MIN_HELD_OUT / len(rows)):.2g} or more rows")
    return Prepared(rows, lengths, report)


def cut_to_characters(messages, max_chars: int):
    """(messages, whether cut): a plain text, or the turns' contents in order, kept to `max_chars`
    characters in all; the turn that crosses the limit is cut there and later turns are dropped."""
    if isinstance(messages, str):
        return messages[:max_chars], len(messages) > max_chars
    if sum(len(m["content"]) for m in messages) <= max_chars:
        return messages, False
    kept, room = [], max_chars
    for m in messages:
        if room <= 0:
            break
        kept.append(m if len(m["content"]) <= room else {**m, "content": m["content"][:room]})
        room -= len(m["content"])
    return kept, True


def _template(tokenizer, fmt: str) -> str:
    if fmt == "text":
        return "none: plain text, trained on as it is, EOS appended"
    if formats.ensure_chat_template(tokenizer) or tokenizer.chat_template == formats.PLAIN_CHAT_TEMPLATE:
        return "plain <human>:/<bot>: template (the tokenizer has no chat template)"
    return "the tokenizer's chat template"


def _render_chunk(tokenizer, chunk: list, source: str, spans: bool) -> list[tuple[str, list | None]]:
    """(text, answer spans or None) for each (ordinal, where, messages) of `chunk`: in one template call
    where no spans are needed; row by row otherwise, or to name the row a template refuses."""
    if not spans:
        try:
            return [(text, None) for text in formats.render_texts(tokenizer, [m for _, _, m in chunk])]
        except Exception:  # a template can raise anything; find the row it refuses, below
            pass
    return [_render(tokenizer, messages, source, where, spans) for _, where, messages in chunk]


def _render(tokenizer, messages, source: str, where: str, spans: bool = True):
    """(text, answer spans or None). The spans cost a render per turn, so they are found only where
    the loss needs them (`train_on_responses_only`)."""
    try:
        if not spans:
            return formats.render_text(tokenizer, messages), None
        return formats.render(tokenizer, messages)
    except Exception as e:  # a template can raise anything (jinja errors, its own raise_exception)
        raise DatasetError(f"{source}, {where}: the chat template cannot render this row: {e}") from None


def answer_labels(ids, offsets, spans) -> list[int]:
    """Labels for `train_on_responses_only`: a token's id where it lies inside an answer span, else -100."""
    return [t if b > a and any(s <= a < e for s, e in spans) else -100 for t, (a, b) in zip(ids, offsets)]


def held_out_count(rows: int, eval_fraction: float) -> int:
    return 0 if eval_fraction == 0 else max(1, round(rows * eval_fraction))


def split(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): about `eval_fraction` of the rows held out, chosen with `seed`, whole groups of rows
    that share a question or an answer at a time (`overlap_groups`), so that no held-out question or
    answer is also trained on and the held-out loss measures text the model has not seen."""
    if eval_fraction == 0:
        return list(rows), []
    n_eval = held_out_count(len(rows), eval_fraction)
    if n_eval >= len(rows):
        raise DatasetError(f"Only {len(rows)} usable rows: too few to hold out {eval_fraction:.0%} and still "
                           f"train. Lower 'eval_fraction' or add rows.")
    groups = overlap_groups(rows)
    random.Random(seed).shuffle(groups)
    held = set()
    for group in groups:  # a group that would overshoot is skipped; a smaller one further on may fit
        if len(held) + len(group) <= n_eval:
            held.update(group)
            if len(held) == n_eval:
                break
    if not held:
        raise DatasetError(f"Cannot hold out {eval_fraction:.0%} of {len(rows)} rows ({n_eval}) without training "
                           f"on their questions or answers: the smallest group of rows sharing one has "
                           f"{min(map(len, groups))} rows. Raise 'eval_fraction' or add rows that differ.")
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def turn_keys(row: dict) -> list[bytes]:
    """A digest of each question and answer of a prepared row, case and spacing ignored (of its whole
    text where it has no turns)."""
    messages = row.get("messages")
    texts = [m["content"] for m in messages if m["role"] in ("user", "assistant")] if messages else [row["text"]]
    return [hashlib.blake2b(" ".join(t.split()).casefold().encode(), digest_size=16).digest() for t in texts]


def shared_with_training(train: list, held_out: list) -> int:
    """How many held-out rows have a question or an answer that a training row has too (0 after `split`)."""
    seen = {key for row in train for key in turn_keys(row)}
    return sum(any(key in seen for key in turn_keys(row)) for row in held_out)


def overlap_groups(rows: list) -> list[list[int]]:
    """Row indices grouped so that rows sharing a question or an answer, directly or through other rows,
    are in one group (union-find over `turn_keys`)."""
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    first = {}
    for i, row in enumerate(rows):
        for key in turn_keys(row):
            parent[root(i)] = root(first.setdefault(key, i))
    groups = {}
    for i in range(len(rows)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


# --- what notebook 03 shows ---------------------------------------------------------------------

# --- held-out prompts for the before/after comparison (05) and evaluation ------------------------

