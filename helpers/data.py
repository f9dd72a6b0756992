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

import contextlib
import gc
import hashlib
import json
import os
import random
import shutil
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from helpers import data_read, formats, progress, rundir
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
    rows: list[dict]      # {"text", "input_ids", and "messages" (chat formats), "spans" + "labels" (responses only)}
    lengths: list[int]    # tokens per kept row before any truncation
    report: Report


SHOWN_PROBLEMS = 50
CHUNK = 4096  # rows rendered and tokenized per batch: large enough for all cores, small enough for memory


def prepare(params: dict, tokenizer) -> Prepared:
    """Read, check, render and measure the rows named by the parameters; report what happened.

    Any previous prepared split in the run folder is removed first, so a failure never leaves an
    old split that looks like the result of this one. The report is written either way.
    """
    run_dir = Path(params["run_dir"])
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    report = Report(source=str(params["dataset"]), max_seq_length=params["max_seq_length"])
    try:
        with no_cycle_collection():
            prepared = _prepare(params, tokenizer, report)
    except DatasetError as e:
        report.error = str(e)
        rundir.write_json(run_dir / "data_report.json", asdict(report))
        raise
    rundir.write_json(run_dir / "data_report.json", asdict(report))
    return prepared


@contextlib.contextmanager
def no_cycle_collection():
    """Python's cycle collector runs again and again while millions of row objects are made (none of
    them in a cycle): a sixth of 03's time at 210k rows. Off for the block, back on after."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


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
    system = formats.system_message_for(tokenizer, params["system_message"])
    for record in raw.records:
        try:
            messages = formats.with_system(formats.to_messages(record.value, fmt, params["dataset_text_field"]),
                                           system)
        except formats.RowProblem as e:
            problems.append(data_read.Problem(record.ordinal, record.where, e.reason, e.detail))
            continue
        # a 16-byte digest per row, not a second copy of every row's text
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
                    problems.append(data_read.Problem(ordinal, where, "too long",
                                                      f"{n} tokens > max_seq_length {limit}"))
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
    return Prepared(rows, lengths, report)


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


def encode(tokenizer, texts: list[str], offsets: bool = False) -> list[tuple[list[int], list | None]]:
    """(token ids, character offsets or None) per text, through the tokenizer's batch path on all cores.
    A BOS token is added only where the tokenizer adds one and the text does not already start with it
    (chat templates often write it); generation prompts follow the same rule (`add_bos`)."""
    out: list = [None] * len(texts)
    groups: dict[bool, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(add_bos(tokenizer, text), []).append(i)
    with parallel_tokenizer():
        for add, where in groups.items():
            for i, pair in zip(where, _encode_batch(tokenizer, [texts[i] for i in where], add, offsets)):
                out[i] = pair
    return out


def _encode_batch(tokenizer, texts: list[str], add_special_tokens: bool, offsets: bool):
    """The Rust tokenizer itself where it is set up plainly (no truncation or padding of its own): it
    skips transformers' per-row conversion, a sixth of the time at 210k rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets,
                        return_attention_mask=False)
        return zip(enc["input_ids"], enc["offset_mapping"] if offsets else [None] * len(texts))
    if offsets:
        return ((e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens))
    return ((e.ids, None) for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens))


def add_bos(tokenizer, text: str) -> bool:
    """Whether to let the tokenizer add its special tokens (BOS) to `text`: not when it starts with BOS."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


@contextlib.contextmanager
def parallel_tokenizer():
    """The fast tokenizer's batch path uses every core only while TOKENIZERS_PARALLELISM allows it; the
    workbook keeps it off elsewhere (forked processes would warn or hang), so it is on for this block."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = old if old is not None else "false"


def answer_labels(ids, offsets, spans) -> list[int]:
    """Labels for `train_on_responses_only`: a token's id where it lies inside an answer span, else -100."""
    return [t if b > a and any(s <= a < e for s, e in spans) else -100 for t, (a, b) in zip(ids, offsets)]


def training_dataset(split, max_seq_length: int | None = None):
    """What the trainer reads: the `input_ids` (and `labels`, where some tokens stay out of the loss) of a
    prepared split, already truncated to `max_seq_length` by 03, so that TRL and unsloth train on exactly
    the same tokens. unsloth would otherwise read every row once to check that (minutes at 210k rows);
    it believes a dataset's `_unsloth_truncated_to` instead."""
    dataset = split.select_columns([c for c in ("input_ids", "labels") if c in split.column_names])
    if max_seq_length is not None:
        dataset._unsloth_truncated_to = max_seq_length
    return dataset


def held_out_count(rows: int, eval_fraction: float) -> int:
    return 0 if eval_fraction == 0 else max(1, round(rows * eval_fraction))


def split(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) with `eval_fraction` of the rows held out, chosen with `seed`; at least one each."""
    if eval_fraction == 0:
        return list(rows), []
    n_eval = held_out_count(len(rows), eval_fraction)
    if n_eval >= len(rows):
        raise DatasetError(f"Only {len(rows)} usable rows: too few to hold out {eval_fraction:.0%} and still "
                           f"train. Lower 'eval_fraction' or add rows.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


SPLIT_KEYS = ("model_name", "max_seq_length", "train_on_responses_only", "dataset", "dataset_format",
              "dataset_text_field", "system_message", "max_rows", "eval_fraction", "seed")


def save_split(run_dir: Path, train: list[dict], held_out: list[dict], params: dict | None = None) -> Path:
    """data/train.arrow and data/eval.arrow (and meta.json: what the token ids depend on), atomically.
    Held-out rows keep their messages, from which steps 5-6 make prompts; training rows do not."""
    final = Path(run_dir) / "data"
    with rundir.building(final) as tmp:
        for name, part in (("train", train), ("eval", held_out)):
            _write_arrow(tmp / f"{name}.arrow", part, keep_messages=name == "eval")
        meta = {k: params[k] for k in SPLIT_KEYS} if params else {}
        rundir.write_json(tmp / "meta.json", {**meta, "rows": {"train": len(train), "eval": len(held_out)}})
    return final


def _write_arrow(path: Path, rows: list[dict], keep_messages: bool, batch_rows: int = 8192) -> None:
    """An Arrow stream file, written a batch of rows at a time (no second copy of the whole split)."""
    import pyarrow as pa

    batches = (_record_batch(rows[i:i + batch_rows], keep_messages) for i in range(0, len(rows), batch_rows))
    first = next(batches, None) or _record_batch(rows, keep_messages)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, first.schema) as writer:
        writer.write_batch(first)
        for batch in batches:
            writer.write_batch(batch)


def _record_batch(rows: list[dict], keep_messages: bool):
    import pyarrow as pa

    def token_column(key):
        arrays = [np.frombuffer(r[key], dtype=np.int32) if isinstance(r[key], array) else
                  np.asarray(r[key], dtype=np.int32) for r in rows]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))

    columns = {"text": pa.array([r["text"] for r in rows], type=pa.large_string()),
               "input_ids": token_column("input_ids")}
    if rows and "labels" in rows[0]:
        columns["labels"] = token_column("labels")
        columns["spans"] = pa.array([r["spans"] for r in rows], type=pa.list_(pa.list_(pa.int32())))
    if keep_messages and rows and "messages" in rows[0]:
        columns["messages"] = pa.array([r["messages"] for r in rows])
    return pa.record_batch(list(columns.values()), names=list(columns))


def load_split(run_dir: Path, params: dict | None = None):
    """The rows that 03_dataset saved, (train, eval), as memory-mapped `datasets.Dataset`s: opening
    210k rows takes milliseconds. With `params`, refuses a split made for other settings."""
    from datasets import Dataset

    folder = Path(run_dir) / "data"
    files = {name: folder / f"{name}.arrow" for name in ("train", "eval")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"No prepared dataset in {folder} (missing {', '.join(missing)}): "
                                f"run 03_dataset.ipynb with this run_dir first.")
    if params:
        meta = rundir.read_json(folder / "meta.json", default={})
        changed = [f"{k} ({meta[k]!r} then, {params[k]!r} now)" for k in SPLIT_KEYS if k in meta and meta[k] != params[k]]
        if changed:
            raise DatasetError(f"The prepared dataset in {folder} was made with other settings: "
                               f"{', '.join(changed)}. Run 03_dataset.ipynb again with this run_dir.")
    return tuple(Dataset.from_file(str(files[name])) for name in ("train", "eval"))


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
    from helpers.tables import whole

    shown = report.problems[:n]
    return whole(shown, columns=["where", "reason", "detail"]) if shown else "No bad rows."


def report_lines(report: dict) -> list[str]:
    """The report as plain lines, for the runner's console output (from data_report.json)."""
    lines = [f"data: {report['source']} ({report.get('format')}): read {report['rows_read']}, "
             f"kept {report['kept']}, truncated {report['truncated']}"]
    lines += [f"  dropped {n}: {reason}" for reason, n in report.get("dropped", {}).items()]
    lines += [f"  fixed {n}: {what}" for what, n in report.get("fixes", {}).items()]
    lines += [f"  {p['where']}: {p['reason']} ({p['detail']})" for p in report.get("problems", [])[:5]]
    return lines


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


def token_lengths(tokenizer, rows) -> list[int]:
    return [len(ids) for ids, _ in encode(tokenizer, [r["text"] for r in rows])]


def length_stats(lengths: list[int], max_seq_length: int):
    import numpy as np
    import pandas as pd

    arr = np.asarray(lengths)
    rows = [("rows", len(arr)), ("tokens in all", int(arr.sum())), ("median tokens", float(np.median(arr))),
            ("longest", int(arr.max())), (f"longer than max_seq_length={max_seq_length}", int((arr > max_seq_length).sum()))]
    # formatted here: a column mixing counts would otherwise show them all as floats
    return pd.DataFrame([(k, f"{v:g}" if isinstance(v, float) else f"{v:,}") for k, v in rows],
                        columns=["what", "value"]).set_index("what")


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


def answers_table(prompts: list[tuple[str, str, str]], answers: dict[str, list[str]]):
    """Question and reference of each held-out prompt, then one column per set of answers, shown whole."""
    from helpers.tables import whole

    return whole({"prompt": [q for q, _, _ in prompts], "reference": [r for _, _, r in prompts], **answers})


def system_note(tokenizer, params: dict):
    """What system message the rows got, in a sentence (the template may add one nobody asked for)."""
    from helpers.tables import Sentences

    default = formats.template_system(tokenizer)
    chosen = params["system_message"]
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


def split_note(train: list, held_out: list):
    from helpers.tables import Sentences

    total = len(train) + len(held_out)
    return Sentences(f"**{len(train):,} rows to train on, {len(held_out):,} held out** "
                     f"({len(held_out) / total:.0%} of {total:,}), saved in the run folder's `data/`.")
