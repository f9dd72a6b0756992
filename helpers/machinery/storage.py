"""The prepared split on disk: `data/train.arrow` and `data/eval.arrow` (Arrow IPC, token ids as
int32 lists, read back memory-mapped), and what the trainer reads of it."""
from __future__ import annotations

from array import array
from pathlib import Path
import numpy as np
from helpers.machinery import rundir
from helpers.machinery.data_read import DatasetError


def training_dataset(split, max_seq_length: int | None = None):
    """What the trainer reads: the `input_ids` (and `labels`, where some tokens stay out of the loss) of a
    prepared split, already truncated to `max_seq_length` by 03, so that TRL and unsloth train on exactly
    the same tokens. unsloth would otherwise read every row once to check that (minutes at 210k rows);
    it believes a dataset's `_unsloth_truncated_to` instead."""
    dataset = split.select_columns([c for c in ("input_ids", "labels") if c in split.column_names])
    if max_seq_length is not None:
        dataset._unsloth_truncated_to = max_seq_length
    return dataset


SPLIT_KEYS = ("model_name", "max_seq_length", "train_on_responses_only", "dataset", "dataset_format",
              "dataset_text_field", "system_message", "max_rows", "eval_fraction", "seed")


def save_split(run_dir: Path, train: list[dict], held_out: list[dict], params: dict | None = None) -> Path:
    """data/train.arrow and data/eval.arrow (and meta.json: what the token ids depend on), atomically.
    Held-out rows keep their messages, from which steps 5-6 make prompts; training rows do not."""
    final = Path(run_dir) / "data"
    try:
        with rundir.building(final) as tmp:
            for name, part in (("train", train), ("eval", held_out)):
                _write_arrow(tmp / f"{name}.arrow", part, keep_messages=name == "eval")
            meta = {k: params[k] for k in SPLIT_KEYS} if params else {}
            rundir.write_json(tmp / "meta.json", {**meta, "rows": {"train": len(train), "eval": len(held_out)}})
    except Exception as e:  # data_report.json says what was kept: it must not stand for a split not saved
        report_path = Path(run_dir) / "data_report.json"
        report = rundir.read_json(report_path, default=None)
        if report is not None:
            rundir.write_json_or_remove(report_path, {**report, "error": f"saving the split failed: {e}"})
        raise
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
