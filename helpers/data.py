"""Step 3: load the dataset, check it, split off held-out rows, and save the prepared split.

The post's data is OIG `unified_chip2`: one JSON object per line with a `text` field holding
`<human>: ...` / `<bot>: ...` turns. The model trains on that text as it is (plus an end-of-sequence
token), exactly as `SFTTrainer(dataset_text_field="text")` does in the post.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

from helpers import rundir
from helpers.params import ParameterError

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
BOT_TAG = "<bot>:"


class DatasetError(ValueError):
    """The data cannot be used; the message names the file, the row and what was expected."""


def _is_url(name: str) -> bool:
    return urlparse(name).scheme in ("http", "https")


def load_rows(dataset: str, text_field: str, max_rows: int | None = None):
    """A `datasets.Dataset` from a local file, an http(s) URL or a hub dataset name, checked row by row."""
    from datasets import load_dataset

    from helpers.model import hub_reachable

    local = rundir.find_file(dataset)
    if local is not None:
        if local.suffix.lower() not in LOADERS:
            raise DatasetError(f"Dataset file {local}: unknown file type '{local.suffix}'; expected one of "
                               f"{', '.join(LOADERS)}.")
        where = str(local)
        ds = load_dataset(LOADERS[local.suffix.lower()], data_files={"train": str(local)}, split="train")
    elif _is_url(dataset):
        if not hub_reachable(dataset):
            raise DatasetError(f"Parameter 'dataset' = '{dataset}' is a URL, and its host is not reachable from "
                               f"this machine (offline). Download the file elsewhere and pass its local path, "
                               f"e.g. -p dataset data/unified_chip2.jsonl.")
        where = dataset
        suffix = Path(urlparse(dataset).path).suffix.lower()
        ds = load_dataset(LOADERS.get(suffix, "json"), data_files={"train": dataset}, split="train")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) and not dataset.endswith(tuple(LOADERS)):
        if not hub_reachable():
            raise DatasetError(f"Parameter 'dataset' = '{dataset}' looks like a hub dataset name, and the hub "
                               f"is not reachable from this machine (offline). Pass a local file instead.")
        where = dataset
        ds = load_dataset(dataset, split="train")
    else:
        raise DatasetError(f"Parameter 'dataset' = '{dataset}': no such file (looked in {Path.cwd()} and "
                           f"{rundir.REPO_ROOT}), and it is neither an http(s) URL nor a hub name.")
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    check_text_rows(ds, text_field, where)
    return ds


def check_text_rows(ds, text_field: str, where: str) -> None:
    """Every row must hold a non-empty string in `text_field`; the first bad row is named (1-based)."""
    if text_field not in ds.column_names:
        raise DatasetError(f"{where}: no column '{text_field}' (parameter 'dataset_text_field'); the columns "
                           f"are {ds.column_names}.")
    if len(ds) == 0:
        raise DatasetError(f"{where}: the dataset has no rows.")
    for i, value in enumerate(ds[text_field], start=1):
        if not isinstance(value, str):
            raise DatasetError(f"{where}, row {i}: field '{text_field}' is {type(value).__name__}, expected text.")
        if not value.strip():
            raise DatasetError(f"{where}, row {i}: field '{text_field}' is empty.")


def split(ds, eval_fraction: float, seed: int):
    """(train, eval) with `eval_fraction` of the rows held out; at least one row on each side."""
    if eval_fraction == 0:
        return ds, ds.select([])
    n_eval = max(1, round(len(ds) * eval_fraction))
    if n_eval >= len(ds):
        raise DatasetError(f"Only {len(ds)} rows: too few to hold out {eval_fraction:.0%} and still train. "
                           f"Lower 'eval_fraction' or add rows.")
    parts = ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def save_split(run_dir: Path, train, held_out, text_field: str) -> Path:
    """Write data/train.jsonl and data/eval.jsonl (only the text column) into the run folder, atomically."""
    final = Path(run_dir) / "data"
    tmp = Path(run_dir) / ".data.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, part in (("train", train), ("eval", held_out)):
        with (tmp / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for text in part[text_field]:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    rundir.replace_dir(tmp, final)
    return final


def load_split(run_dir: Path):
    """The split that 03_dataset saved: (train, eval) as `datasets.Dataset` with a `text` column."""
    from datasets import load_dataset

    folder = Path(run_dir) / "data"
    files = {name: folder / f"{name}.jsonl" for name in ("train", "eval")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"No prepared dataset in {folder} (missing {', '.join(missing)}): "
                                f"run 03_dataset.ipynb with this run_dir first.")
    train = load_dataset("json", data_files=str(files["train"]), split="train")
    if files["eval"].stat().st_size == 0:
        return train, train.select([])
    return train, load_dataset("json", data_files=str(files["eval"]), split="train")


def examples(ds, text_field: str, n: int = 3, width: int = 160):
    import pandas as pd

    texts = [t if len(t) <= width else t[: width - 1] + "…" for t in ds[text_field][:n]]
    return pd.DataFrame({text_field: texts})


def token_lengths(tokenizer, texts) -> list[int]:
    """Tokens per row as the trainer sees them (the text plus one end-of-sequence token)."""
    return [len(ids) + 1 for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


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
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend(loc="center right")
    return plots.finish(fig, path)


def prompt_and_reference(text: str) -> tuple[str, str] | None:
    """Split an OIG row at its last `<bot>:` turn: the prompt the model sees, and the answer it should give."""
    cut = text.rfind(BOT_TAG)
    if cut < 0:
        return None
    return text[: cut + len(BOT_TAG)], text[cut + len(BOT_TAG):].strip()


def held_out_prompts(held_out, text_field: str, n: int) -> list[tuple[str, str]]:
    pairs = (prompt_and_reference(t) for t in held_out[text_field])
    return [p for p in pairs if p is not None][:n]
