"""Where the `dataset` parameter points: a checked local file (it exists, it is one file, it holds what its
name says), an http(s) URL, or a dataset name on the hub, each refused before any work where it cannot
be read here. 03 hands what `locate` finds to the post's `load_dataset` call.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from helpers import rundir

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """The data cannot be used; the message names the file, the row and what was expected."""


@dataclass
class Source:
    """What the `dataset` parameter names: a checked local file, an http(s) URL or a hub dataset name.
    `builder` is what `load_dataset` calls such a file ("json", "csv", "parquet"); `where(i)` says how a
    person finds row i of what `load_dataset` read (a JSON Lines file's line number, else the row's)."""
    kind: str  # "file", "url" or "hub"
    name: str  # the file's absolute path, the URL or the hub name
    given: str  # the parameter as given (what reports show: no machine's paths)
    path: Path | None = None
    _lines: list | None = None

    @property
    def builder(self) -> str | None:
        suffix = Path(urlparse(self.name).path).suffix.lower() if self.kind != "hub" else ""
        return {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "json")

    @property
    def options(self) -> dict:
        """load_dataset's options for this source: `field` for a .json file that holds its rows as the one
        list inside an object ({"data": [...]}), which load_dataset would otherwise read as a single row."""
        if self.path is None or self.path.suffix.lower() != ".json":
            return {}
        with self.path.open("rb") as f:
            if f.read(4096).removeprefix(BOM).lstrip()[:1] != b"{":
                return {}
        try:
            value = json.loads(self.path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            return {}  # load_dataset stops on it, and the checked reader names the line
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError(f"Dataset file {self.path}: expected a JSON list of rows (or an object holding one "
                               f"list), got an object with keys {list(value)[:8]}.")
        return {"field": lists[0]}

    def where(self, index: int) -> str:
        if self.path is not None and self.path.suffix.lower() == ".jsonl":
            if self._lines is None:  # load_dataset skips blank lines: find each row's line once, when asked
                with self.path.open("rb") as f:
                    self._lines = [n for n, line in enumerate(f, start=1) if line.strip()]
            return f"line {self._lines[index]}" if index < len(self._lines) else f"row {index + 1}"
        return f"item {index + 1}" if self.path is not None and self.path.suffix.lower() == ".json" else f"row {index + 1}"


def is_url(name: str) -> bool:
    return urlparse(name).scheme in ("http", "https")


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # `org/name`, as the hub names models and datasets


def is_hub_name(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name)) and not name.lower().endswith(SUFFIXES)


def locate(dataset: str, configure_datasets: bool = True) -> Source:
    """What `dataset` names (a Source); a DatasetError naming the parameter when it is none of them, or
    names a URL or hub dataset that this machine cannot reach (so the runner refuses it before any
    notebook starts). For 03 (`configure_datasets`, an import of seconds the runner's check skips), also
    turns off datasets' cache of `map` results, which would outlive a change of the functions 03 maps
    with (03 saves its rows in the run folder)."""
    from helpers.model.weights import hub_reachable

    if configure_datasets:
        import logging

        import datasets

        datasets.disable_caching()
        datasets.disable_progress_bars()  # a bar per map would bury the lesson's output
        # where load_dataset stops on a bad line, read_checked says so in one line, not this logger's traceback
        logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    try:
        local = rundir.find_file(dataset)
    except OSError as e:  # a folder on the way that this user may not enter
        raise DatasetError(f"Parameter 'dataset' = '{dataset}': {e.filename} cannot be read: {e.strerror}.") from None
    if local is not None:
        check_file(local, f"Parameter 'dataset' = '{dataset}': ")
        return Source("file", str(local), dataset, local)
    if is_url(dataset):
        if not hub_reachable(dataset):
            raise DatasetError(f"Parameter 'dataset' = '{dataset}' is a URL, and its host is not reachable from "
                               f"this machine (offline). Download the file elsewhere and pass its local path, "
                               f"e.g. -p dataset data/unified_chip2.jsonl.")
        return Source("url", dataset, dataset)
    for link in _candidates(dataset):
        if link.is_symlink():  # exists() is False for a link to nowhere: say so, not "no such file"
            raise DatasetError(f"Parameter 'dataset' = '{dataset}': {link} is a symbolic link that leads to no "
                               f"file ({_why_unreachable(link)}).")
    if is_hub_name(dataset):
        if not hub_reachable():
            raise DatasetError(f"Parameter 'dataset' = '{dataset}' looks like a hub dataset name, and the hub "
                               f"is not reachable from this machine (offline). Pass a local file instead, "
                               f"e.g. -p dataset data/my_data.jsonl.")
        return Source("hub", dataset, dataset)
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
    if suffix == ".parquet":
        return None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head[1:200:2].count(0) > 50:
        found = f"the byte-order mark {head[0]:02x} {head[1]:02x}" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else \
            "a zero byte beside every character"
        return (f"is UTF-16 text ({found}), not UTF-8: convert it with iconv -f utf-16 -t utf-8 IN > OUT")
    if suffix == ".jsonl" and b"\r" in head and b"\n" not in head and len(head) > head.index(b"\r") + 1:
        return "ends its lines with a carriage return alone (CR, old Mac style): convert it with tr '\\r' '\\n' < IN > OUT"
    if suffix in (".jsonl", ".json"):
        first = head.removeprefix(BOM).lstrip().split(b"\n", 1)[0].strip()
        if first and first[:1] not in b"{[" and (b"," in first or b"\t" in first):
            shown = first[:80].decode("utf-8", "replace")
            return (f"does not hold JSON: its first line, '{shown}', reads like a CSV header; if it is CSV, "
                    f"name it .csv")
    return None


def check_text(dataset) -> None:
    """Raise where what load_dataset read holds bytes that are not UTF-8: pyarrow's JSON reader keeps them
    without a word, and the row fails later, when something reads it (the checked reader names it)."""
    import pyarrow as pa

    try:
        dataset.data.table.validate(full=True)
    except pa.ArrowInvalid as e:
        raise ValueError(f"text that is not UTF-8 ({e})") from None


def download(url: str) -> Path:
    """The file behind `url`, downloaded once into the cache (atomically: a cut download is not reused)."""
    import urllib.request

    from helpers.model.weights import cache_dir

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
