"""Held-out rows that are really unseen, and the split on disk.

`by_question` holds out about `eval_fraction` of the rows, whole groups of rows that share a question
or an answer at a time, so that no held-out question or answer is also trained on. `save` writes the
two sides as `data/train.arrow` and `data/eval.arrow` (Arrow files of token ids that steps 5 and 6
memory-map: milliseconds at 210k rows) and `data/meta.json`; `load` opens them.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from helpers import rundir
from helpers.data.sources import DatasetError

TRAIN_COLUMNS = ("text", "input_ids", "labels", "spans")  # held-out rows keep their messages too (prompts)


def held_out_count(rows: int, eval_fraction: float) -> int:
    return 0 if eval_fraction == 0 else max(1, round(rows * eval_fraction))


def by_question(rows, eval_fraction: float, seed: int):
    """(train, held_out), Datasets: about `eval_fraction` of `rows` held out, chosen with `seed`, whole
    groups of rows that share a question or an answer at a time (`overlap_groups`)."""
    n_eval = held_out_count(len(rows), eval_fraction)
    if n_eval >= len(rows):  # e.g. every OIG row broken but one
        raise DatasetError(f"only {len(rows)} usable row{'s' * (len(rows) > 1)}: too few to hold out "
                           f"{eval_fraction:.0%} and still train. Fix the file (the report lists the first bad "
                           f"rows), or lower eval_fraction.")
    if n_eval == 0:
        return rows, rows.select([])
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
    return (rows.select([i for i in range(len(rows)) if i not in held]),
            rows.select(sorted(held)))


def turn_keys(row: dict) -> list[bytes]:
    """A digest of each question and answer of a row, case and spacing ignored (of its whole text where it
    has no turns)."""
    messages = row.get("messages")
    texts = [m["content"] for m in messages if m["role"] in ("user", "assistant")] if messages else [row["text"]]
    return [hashlib.blake2b(" ".join(t.split()).casefold().encode(), digest_size=16).digest() for t in texts]


def overlap_groups(rows) -> list[list[int]]:
    """Row indices grouped so that rows sharing a question or an answer, directly or through other rows,
    are in one group (union-find over `turn_keys`)."""
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    first = {}
    for i, row in enumerate(_rows(rows, ("messages", "text"))):
        for key in turn_keys(row):
            parent[root(i)] = root(first.setdefault(key, i))
    groups = {}
    for i in range(len(rows)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _rows(rows, columns):
    """The rows of a Dataset (or a list of dicts) with only `columns`, a batch at a time."""
    if isinstance(rows, list):
        yield from rows
        return
    for batch in rows.select_columns([c for c in columns if c in rows.column_names]).iter(batch_size=4096):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def shared_with_training(train, held_out) -> int:
    """How many held-out rows have a question or an answer that a training row has too (0 after `by_question`)."""
    seen = {key for row in _rows(train, ("messages", "text")) for key in turn_keys(row)}
    return sum(any(key in seen for key in turn_keys(row)) for row in _rows(held_out, ("messages", "text")))


def save(run_dir, train, held_out, params: dict) -> Path:
    """data/train.arrow and data/eval.arrow (and meta.json: where the rows came from), whole or not at all."""
    final = Path(rundir.resolve(run_dir)) / "data"
    with rundir.building(final) as tmp:
        _write(tmp / "train.arrow", train, TRAIN_COLUMNS)
        _write(tmp / "eval.arrow", held_out, TRAIN_COLUMNS + ("messages",))
        rundir.write_json(tmp / "meta.json", {"dataset": params["dataset"], "seed": params["seed"],
                                              "rows": {"train": len(train), "eval": len(held_out)}})
    return final


def _write(path: Path, rows, columns) -> None:
    """An Arrow stream file of `columns` of `rows`, a batch at a time (no second copy of the whole split)."""
    import pyarrow as pa

    kept = rows.select_columns([c for c in columns if c in rows.column_names]).with_format("arrow")
    schema = kept.features.arrow_schema
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in kept.iter(batch_size=8192):
            writer.write_table(batch.cast(schema))


def load(run_dir):
    """(train, held_out) as step 3 saved them, memory-mapped `datasets.Dataset`s."""
    from datasets import Dataset

    folder = Path(run_dir) / "data"
    files = [folder / f"{name}.arrow" for name in ("train", "eval")]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"No prepared dataset in {folder} (missing {', '.join(missing)}): "
                                f"run 03_dataset.ipynb with this run_dir first.")
    if problem := rundir.damage(folder):
        raise ValueError(f"{problem}: run 03_dataset.ipynb with this run_dir again to make it anew.")
    return tuple(Dataset.from_file(str(p)) for p in files)


def for_training(rows, max_length: int | None):
    """What the trainer reads of a split: `input_ids` (and `labels`, where some tokens stay out of the
    loss), cut to `max_length` (SFTConfig's: an edit of it in 04 cuts the rows here). unsloth would
    otherwise read every row once to check their length (minutes at 210k rows); it believes a dataset's
    `_unsloth_truncated_to` instead."""
    import pyarrow.compute as pc

    dataset = rows.select_columns([c for c in ("input_ids", "labels") if c in rows.column_names])
    if max_length is not None and len(dataset):
        longest = pc.max(pc.list_value_length(dataset.data.column("input_ids"))).as_py()
        if longest > max_length:
            dataset = dataset.map(lambda row: {k: v[:max_length] for k, v in row.items()})
        dataset._unsloth_truncated_to = max_length
    return dataset
