"""Read a dataset source into raw records, noting every line that cannot be read.

Local files are parsed here line by line rather than through `datasets.load_dataset`, which stops at
the first bad line: the workbook counts and names every bad line (file and line number), removes a
byte-order mark and CRLF line endings instead of training on them, and skips lines that are not UTF-8.
A URL is downloaded once into a cache and then read like a local file; a hub dataset goes through
`datasets` (its rows arrive already parsed).
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from helpers.machinery import rundir

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """The data cannot be used; the message names the file, the row and what was expected."""


@dataclass
class Record:
    ordinal: int  # 1-based position among the rows read (for max_rows)
    where: str    # "line 3", "row 5", "item 2": how a person finds it in the file
    value: Any


@dataclass
class Problem:
    ordinal: int
    where: str
    reason: str
    detail: str


@dataclass
class RawData:
    source: str
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    fixes: Counter = field(default_factory=Counter)  # e.g. "byte-order mark removed": 1

    @property
    def rows_read(self) -> int:
        return len(self.records) + len(self.problems)

    def first(self, n: int) -> "RawData":
        """Only the first n rows read (bad ones count too), for `max_rows`."""
        return RawData(self.source, [r for r in self.records if r.ordinal <= n],
                       [p for p in self.problems if p.ordinal <= n], self.fixes)


def is_url(name: str) -> bool:
    return urlparse(name).scheme in ("http", "https")


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # `org/name`, as the hub names models and datasets


def is_hub_name(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name)) and not name.lower().endswith(SUFFIXES)


def locate(dataset: str) -> tuple[str, Path | None]:
    """What `dataset` names: ("file", path), ("url", None) or ("hub", None); a DatasetError naming the
    parameter when it is none of them (so the runner can refuse it before any notebook starts)."""
    try:
        local = rundir.find_file(dataset)
    except OSError as e:  # a folder on the way that this user may not enter
        raise DatasetError(f"Parameter 'dataset' = '{dataset}': {e.filename} cannot be read: {e.strerror}.") from None
    if local is not None:
        check_file(local, f"Parameter 'dataset' = '{dataset}': ")
        return "file", local
    if is_url(dataset):
        return "url", None
    for link in _candidates(dataset):
        if link.is_symlink():  # exists() is False for a link to nowhere: say so, not "no such file"
            raise DatasetError(f"Parameter 'dataset' = '{dataset}': {link} is a symbolic link that leads to no "
                               f"file ({_why_unreachable(link)}).")
    if is_hub_name(dataset):
        return "hub", None
    raise DatasetError(f"Parameter 'dataset' = '{dataset}': no such file (looked in "
                       f"{' and '.join(dict.fromkeys(str(c.parent) for c in _candidates(dataset)))}), and it is "
                       f"neither an http(s) URL nor a hub name.")


def _candidates(name: str) -> list[Path]:
    path = Path(name).expanduser()
    return [path] if path.is_absolute() else [Path.cwd() / path, rundir.REPO_ROOT / path]


def _why_unreachable(link: Path) -> str:
    try:
        link.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "the links form a loop"
        return f"its target {os.readlink(link)} does not exist"
    return "its target is not a file"


def check_file(path: Path, prefix: str = "") -> None:
    """A DatasetError, before any row is read, for a path that is not a readable data file: a folder, an
    unknown or mislabelled type (gzip, zip, CSV named .jsonl), an empty or unreadable file."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUFFIXES)[:5]
        raise DatasetError(f"{prefix}{path} is a folder; expected one data file ({', '.join(SUFFIXES)})"
                           f"{'; in it: ' + ', '.join(inside) if inside else ''}.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(f"{prefix}dataset file {path}: unknown file type '{path.suffix}'; expected one of "
                           f"{', '.join(SUFFIXES)}.")
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise DatasetError(f"{prefix}dataset file {path} cannot be read: {e.strerror}.") from None
    if not head:
        raise DatasetError(f"{prefix}dataset file {path} is empty (0 bytes): nothing to train on.")
    looks = _looks_like(head, suffix)
    if looks:
        raise DatasetError(f"{prefix}dataset file {path} {looks}.")


def _looks_like(head: bytes, suffix: str) -> str | None:
    """What a file whose name says `suffix` really holds, where that is something else."""
    if head.startswith(b"\x1f\x8b"):
        return f"is gzip-compressed (it starts with the bytes 1f 8b), not {suffix} text: decompress it first (gunzip -k)"
    if head.startswith(b"PK\x03\x04") and suffix != ".parquet":
        return "is a zip archive: unzip it first and pass the data file inside"
    if suffix in (".jsonl", ".json"):
        first = head.removeprefix(BOM).lstrip().split(b"\n", 1)[0].strip()
        if first and first[:1] not in b"{[" and (b"," in first or b"\t" in first):
            shown = first[:80].decode("utf-8", "replace")
            return (f"does not hold JSON: its first line, '{shown}', reads like a CSV header; if it is CSV, "
                    f"name it .csv")
    return None


def read(dataset: str, split: str = "train", config: str | None = None, max_rows: int | None = None) -> RawData:
    """Raw records of `dataset` (a local file, an http(s) URL or a hub dataset name)."""
    kind, local = locate(dataset)
    if kind == "file":
        raw = read_file(local, source=dataset)
    elif kind == "url":
        raw = read_file(download(dataset), source=dataset)
    else:
        raw = read_hub(dataset, split, config)
    return raw.first(max_rows) if max_rows is not None else raw


def read_file(path: Path, source: str | None = None) -> RawData:
    check_file(path)
    suffix = path.suffix.lower()
    raw = RawData(source or str(path))
    if suffix == ".parquet":
        _read_parquet(path, raw)
        return raw
    if suffix == ".jsonl":  # line by line from the file: a 210k-row file is never held twice
        with path.open("rb") as f:
            _read_jsonl(_decoded_lines(f, raw), raw, path)
        return raw
    with path.open("rb") as f:
        lines = list(_decoded_lines(f, raw))
    {".json": _read_json, ".csv": _read_csv}[suffix](lines, raw, path)
    return raw


MAX_LINE_BYTES = 256 << 20  # a longer line is skipped unread: held whole, it would take several times its size


def _lines(f):
    """The lines of the binary file `f`, each as bytes, or as the int byte count of a line longer than
    MAX_LINE_BYTES, which is read past in pieces and never held whole."""
    while part := f.readline(MAX_LINE_BYTES + 1):
        if len(part) <= MAX_LINE_BYTES or part.endswith(b"\n"):
            yield part
            continue
        size = len(part)
        while (part := f.readline(1 << 20)) and not part.endswith(b"\n"):
            size += len(part)
        yield size + len(part)


def _decoded_lines(f, raw: RawData):
    """The lines of the binary file `f` as text, one at a time; None for a line that is not UTF-8 or
    over MAX_LINE_BYTES (recorded as a problem)."""
    for number, part in enumerate(_lines(f), start=1):
        if isinstance(part, int):
            raw.problems.append(Problem(number, f"line {number}", "too large to read",
                                        f"{part / 2**20:,.0f} MiB on one line; lines over {MAX_LINE_BYTES >> 20} "
                                        f"MiB are skipped (training sees at most max_seq_length tokens of a row)"))
            yield None
            continue
        if number == 1 and part.startswith(BOM):
            part = part[len(BOM):]
            raw.fixes["byte-order mark removed"] += 1
        if part.endswith(b"\n"):
            part = part[:-1]
        if part.endswith(b"\r"):
            part = part[:-1]
            raw.fixes["CRLF line endings converted"] += 1
        try:
            yield part.decode("utf-8")
        except UnicodeDecodeError as e:
            raw.problems.append(Problem(number, f"line {number}", "not UTF-8",
                                        f"byte 0x{part[e.start]:02x} at column {e.start + 1} is not valid UTF-8"
                                        f"{encoding_hint(part, e.start)}"))
            yield None


def encoding_hint(data: bytes, at: int) -> str:
    """Where bytes that are not UTF-8 read as Windows-1252 (Excel's and Notepad's old default), say so."""
    try:
        shown = data[max(0, at - 12):at + 12].decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return (f"; it reads as Windows-1252 ('{' '.join(shown.split())}'): convert the file with "
            f"iconv -f cp1252 -t utf-8 IN > OUT")


def _read_jsonl(lines, raw: RawData, path: Path) -> None:
    for number, line in enumerate(lines, start=1):
        if line is None:
            continue
        if not line.strip():
            raw.fixes["blank lines skipped"] += 1
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raw.problems.append(Problem(number, f"line {number}", "unparsable",
                                        f"not valid JSON at column {e.colno}: {e.msg}"))
            continue
        raw.records.append(Record(number, f"line {number}", value))


def _read_json(lines, raw: RawData, path: Path) -> None:
    bad = [p for p in raw.problems if p.reason == "not UTF-8"]
    if bad:  # one bad byte makes the whole document unreadable: there is no row to skip
        raise DatasetError(f"Dataset file {path}, {bad[0].where}: {bad[0].detail}; a .json file must be UTF-8 "
                           f"throughout (a .jsonl file would let the other rows through).")
    try:
        value = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        raise DatasetError(f"Dataset file {path}, line {e.lineno}: not valid JSON at column {e.colno}: "
                           f"{e.msg}.") from None
    if isinstance(value, dict):  # {"data": [...]} / {"train": [...]}: the one list inside
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError(f"Dataset file {path}: expected a JSON list of rows (or an object holding one "
                               f"list), got an object with keys {list(value)[:8]}.")
        value = lists[0]
    if not isinstance(value, list):
        raise DatasetError(f"Dataset file {path}: expected a JSON list of rows, got {type(value).__name__}.")
    for number, item in enumerate(value, start=1):
        raw.records.append(Record(number, f"item {number}", item))


def _read_csv(lines, raw: RawData, path: Path) -> None:
    # Lines that were not UTF-8 become empty lines, so that the reader's line numbers stay the file's.
    text = "\n".join("" if line is None else line for line in lines)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DatasetError(f"Dataset file {path}: no header row (expected column names on line 1).")
    ordinal = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            ordinal += 1
            raw.problems.append(Problem(ordinal, f"line {start}", "unparsable", f"CSV: {e}"))
            continue
        if not row:  # blank (or undecodable, already counted) line
            continue
        ordinal += 1
        if len(row) != len(header):
            raw.problems.append(Problem(ordinal, f"line {start}", "unparsable",
                                        f"{len(row)} fields, the header has {len(header)}"))
            continue
        raw.records.append(Record(ordinal, f"line {start}", dict(zip(header, row))))


def _read_parquet(path: Path, raw: RawData) -> None:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DatasetError(f"Dataset file {path}: not a readable Parquet file ({e}).") from None
    for number, row in enumerate(rows, start=1):
        raw.records.append(Record(number, f"row {number}", row))


def download(url: str) -> Path:
    """The file behind `url`, downloaded once into the cache (atomically: a cut download is not reused)."""
    import urllib.request

    from helpers.machinery.weights import cache_dir, hub_reachable

    if not hub_reachable(url):
        raise DatasetError(f"Parameter 'dataset' = '{url}' is a URL, and its host is not reachable from "
                           f"this machine (offline). Download the file elsewhere and pass its local path, "
                           f"e.g. -p dataset data/unified_chip2.jsonl.")
    name = Path(urlparse(url).path).name or "data.jsonl"
    target = cache_dir() / "downloads" / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{name}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url)
    token = os.environ.get("HF_TOKEN")
    if token and (urlparse(url).hostname or "").endswith("huggingface.co"):  # gated datasets; env only
        request.add_header("Authorization", f"Bearer {token}")
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with urllib.request.urlopen(request, timeout=60) as response, tmp.open("wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"Parameter 'dataset' = '{url}': the download failed ({e}).") from None
    tmp.replace(target)
    return target


def read_hub(name: str, split: str, config: str | None) -> RawData:
    from datasets import load_dataset

    from helpers.machinery.weights import hub_reachable

    if not hub_reachable():
        raise DatasetError(f"Parameter 'dataset' = '{name}' looks like a hub dataset name, and the hub "
                           f"is not reachable from this machine (offline). Pass a local file instead, "
                           f"e.g. -p dataset data/my_data.jsonl.")
    try:
        ds = load_dataset(name, config, split=split)
    except ValueError as e:  # unknown split or config
        raise DatasetError(f"Hub dataset '{name}' (dataset_config={config!r}, dataset_split={split!r}): {e}") \
            from None
    raw = RawData(f"{name} ({split})")
    for number, row in enumerate(ds, start=1):
        raw.records.append(Record(number, f"row {number}", row))
    return raw
