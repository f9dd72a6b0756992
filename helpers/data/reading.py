"""The checked reader, for the files the post's call cannot read.

Step 3 reads its data with the post's call, `datasets.load_dataset`, which stops at the first bad line of a
file. `read_checked` then reads it line by line instead: it names every bad line (file and line number),
removes a byte-order mark and CRLF line endings instead of training on them, skips lines that are not
UTF-8 or too large to hold, and hands each row over as its JSON text (Arrow keeps one type per column,
and a messy file mixes them).
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from helpers.data.sources import BOM, DatasetError, Source, download

COLUMNS = ("where", "json", "problem", "detail")  # what the checked reader hands over for each row


class Lines:
    """What the checked reader read: (ordinal, where, value, problem, detail) per row, and the repairs."""

    def __init__(self):
        self.rows, self.fixes = [], Counter()

    def row(self, ordinal: int, where: str, value) -> None:
        self.rows.append((ordinal, where, value, None, None))

    def problem(self, ordinal: int, where: str, reason: str, detail: str) -> None:
        self.rows.append((ordinal, where, None, reason, detail))

    def dataset(self):
        """Every row, in file order, as a `datasets.Dataset` of COLUMNS (`json`: None where unreadable)."""
        from datasets import Dataset

        rows = sorted(self.rows, key=lambda r: r[0])
        return Dataset.from_dict({"where": [r[1] for r in rows], "problem": [r[3] for r in rows],
                                  "json": [None if r[3] else json.dumps(r[2], ensure_ascii=False) for r in rows],
                                  "detail": [r[4] for r in rows]})


def read_checked(source: Source, error: Exception):
    """After `load_dataset` raised `error` on `source`: its rows read line by line, the bad ones named
    (a Dataset of COLUMNS, see Lines.dataset), and what was repaired on the way in ({repair: count})."""
    if source.kind == "hub":  # the hub's rows arrive parsed: there is no line to skip
        raise DatasetError(f"Hub dataset '{source.name}': {type(error).__name__}: {error}") from None
    why = str(error.__cause__ or error).strip().splitlines()
    print(f"load_dataset stopped ({type(error.__cause__ or error).__name__}: {why[0][:120] if why else ''}); "
          f"reading {source.given} line by line instead")
    lines = read_file(source.path or download(source.name))
    return lines.dataset(), dict(lines.fixes)


def read_file(path: Path) -> Lines:
    """Every line of a .jsonl, .json or .csv file, the bad ones as problems (a .parquet file load_dataset
    could not read is damaged: there is no line to skip)."""
    suffix, lines = path.suffix.lower(), Lines()
    if suffix == ".parquet":
        raise DatasetError(f"Dataset file {path}: not a readable Parquet file.")
    with path.open("rb") as f:
        if suffix == ".jsonl":  # line by line from the file: a 210k-row file is never held twice
            _read_jsonl(_decoded_lines(f, lines), lines)
        else:
            {".json": _read_json, ".csv": _read_csv}[suffix](list(_decoded_lines(f, lines)), lines, path)
    return lines


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


def _decoded_lines(f, lines: Lines):
    """The lines of the binary file `f` as text, one at a time; None for a line that is not UTF-8 or
    over MAX_LINE_BYTES (recorded as a problem)."""
    for number, part in enumerate(_lines(f), start=1):
        if isinstance(part, int):
            lines.problem(number, f"line {number}", "too large to read",
                          f"{part / 2**20:,.0f} MiB on one line; lines over {MAX_LINE_BYTES >> 20} MiB are skipped "
                          f"(training sees at most max_seq_length tokens of a row)")
            yield None
            continue
        if number == 1 and part.startswith(BOM):
            part = part[len(BOM):]
            lines.fixes["byte-order mark removed"] += 1
        part = part.removesuffix(b"\n")
        if part.endswith(b"\r"):
            part = part[:-1]
            lines.fixes["CRLF line endings converted"] += 1
        try:
            yield part.decode("utf-8")
        except UnicodeDecodeError as e:
            lines.problem(number, f"line {number}", "not UTF-8", f"byte 0x{part[e.start]:02x} at column "
                          f"{e.start + 1} is not valid UTF-8{encoding_hint(part, e.start)}")
            yield None


def encoding_hint(data: bytes, at: int) -> str:
    """Where bytes that are not UTF-8 read as Windows-1252 (Excel's and Notepad's old default), say so."""
    try:
        shown = data[max(0, at - 12):at + 12].decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return (f"; it reads as Windows-1252 ('{' '.join(shown.split())}'): convert the file with "
            f"iconv -f cp1252 -t utf-8 IN > OUT")


def _read_jsonl(texts, lines: Lines) -> None:
    for number, text in enumerate(texts, start=1):
        if text is None:
            continue
        if not text.strip():
            lines.fixes["blank lines skipped"] += 1
            continue
        try:
            lines.row(number, f"line {number}", json.loads(text))
        except (ValueError, RecursionError) as e:
            lines.problem(number, f"line {number}", "unparsable", unparsable(e))


def unparsable(e: Exception) -> str:
    """Why json.loads refused a text, in words (a JSONDecodeError says where)."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON at column {e.colno}: {e.msg}"
    if isinstance(e, RecursionError):
        return "nested deeper than the JSON reader follows (about 1,000 levels of lists or objects)"
    return f"a value this reader refuses: {str(e).split(';')[0]}"  # e.g. an integer of over 4,300 digits


def _read_json(texts, lines: Lines, path: Path) -> None:
    bad = [r for r in lines.rows if r[3] == "not UTF-8"]
    if bad:  # one bad byte makes the whole document unreadable: there is no row to skip
        raise DatasetError(f"Dataset file {path}, {bad[0][1]}: {bad[0][4]}; a .json file must be UTF-8 "
                           f"throughout (a .jsonl file would let the other rows through).")
    try:
        value = json.loads("\n".join(texts))
    except (ValueError, RecursionError) as e:
        where = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DatasetError(f"Dataset file {path}{where}: {unparsable(e)}.") from None
    if isinstance(value, dict):  # {"data": [...]} / {"train": [...]}: the one list inside
        found = [v for v in value.values() if isinstance(v, list)]
        if len(found) != 1:
            raise DatasetError(f"Dataset file {path}: expected a JSON list of rows (or an object holding one "
                               f"list), got an object with keys {list(value)[:8]}.")
        value = found[0]
    if not isinstance(value, list):
        raise DatasetError(f"Dataset file {path}: expected a JSON list of rows, got {type(value).__name__}.")
    for number, item in enumerate(value, start=1):
        lines.row(number, f"item {number}", item)


def _read_csv(texts, lines: Lines, path: Path) -> None:
    # Lines that were not UTF-8 become empty lines, so that the reader's line numbers stay the file's.
    reader = csv.reader(io.StringIO("\n".join("" if text is None else text for text in texts)))
    header = next(reader, None)
    if not header:
        raise DatasetError(f"Dataset file {path}: no header row (expected column names on line 1).")
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            lines.problem(start, f"line {start}", "unparsable", f"CSV: {e}")
            continue
        if not row:  # blank (or undecodable, already counted) line
            continue
        if len(row) != len(header):
            lines.problem(start, f"line {start}", "unparsable", f"{len(row)} fields, the header has {len(header)}")
        else:
            lines.row(start, f"line {start}", dict(zip(header, row)))
