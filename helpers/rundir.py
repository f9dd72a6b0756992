"""The run folder: where each step leaves its results for the next, written atomically."""
from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

from helpers.errors import ParameterError

REPO_ROOT = Path(__file__).resolve().parents[1]  # helpers/rundir.py


def resolve(run_dir: str | Path) -> Path:
    """Absolute run folder, created if missing. Relative paths count from the repository root, so
    JupyterLab (working folder `notebooks/`) and papermill (any working folder) agree.
    WORKBOOK_RUN_DIR replaces the notebooks' default `runs/lab` (tests use it to stay isolated)."""
    if str(run_dir) == "runs/lab" and os.environ.get("WORKBOOK_RUN_DIR"):
        run_dir = os.environ["WORKBOOK_RUN_DIR"]
    path = Path(run_dir).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK | os.X_OK) else "is read-only for this user"
    except OSError as e:  # a file there, or a folder that cannot be made
        problem = "is a file; expected a folder" if path.is_file() else f"cannot be made: {e.strerror}"
    if problem:
        raise ParameterError(f"Parameter 'run_dir' = '{run_dir}': {path} {problem}. Every step writes its results "
                             f"in the run folder: choose another (--run-dir).")
    return path


def find_file(name: str | Path) -> Path | None:
    """A user-given relative file path: from the working folder first, then from the repository root."""
    path = Path(name).expanduser()
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]):
        if candidate.exists():
            return candidate.resolve()
    return None


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; None makes a non-finite metric visible instead of invalid JSON
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main_process() -> bool:
    """Whether this process writes the run folder: under several processes (`accelerate launch`, one per
    GPU, each running 05's cells) only the first does; the others compute the same and write nothing."""
    return int(os.environ.get("RANK", "0")) == 0


MADE_BY = {"base": "01_load_model", "lora": "02_lora", "data": "03_dataset", "sft_config.json": "04_trainer",
           "adapter": "05_train_and_save", "merged": "07_export"}


def artifact(run_dir, name: str) -> Path:
    """The path of what a step saved in the run folder (`MADE_BY`); an error naming the notebook to run
    where it is missing."""
    path = Path(resolve(run_dir)) / name
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise FileNotFoundError(f"No {name} in {path.parent}: run {MADE_BY[name]}.ipynb with this run_dir first.")
    if problem := damage(path):
        raise ValueError(f"{problem}: run {MADE_BY[name]}.ipynb with this run_dir again to make it anew.")
    return path


def damage(path: Path) -> str | None:
    """What is wrong with a saved file (or the files of a saved folder) that was cut short or garbled, by
    its kind: safetensors, PyTorch's zip files, Arrow streams, JSON (headers and sizes, not every value)."""
    import pyarrow as pa

    for file in sorted(Path(path).iterdir()) if Path(path).is_dir() else [Path(path)]:
        try:
            if file.suffix == ".safetensors":  # 8 bytes of header size, a JSON header, then the tensors' bytes
                with file.open("rb") as f:
                    header = json.loads(f.read(size := int.from_bytes(f.read(8), "little")))
                end = 8 + size + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if end != file.stat().st_size:
                    return f"{file} is damaged: {file.stat().st_size:,} bytes where its header lists {end:,}"
            elif file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
                return f"{file} is damaged: not a whole PyTorch file"
            elif file.suffix == ".arrow":
                with pa.memory_map(str(file)) as source:
                    pa.ipc.open_stream(source).read_all().validate()
            elif file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
            return f"{file} is damaged ({type(e).__name__}: {str(e)[:120]})"
    return None


def write_json(path: Path, data) -> None:
    """Write to a temporary name, then rename: a killed run never leaves a half-written file."""
    if not main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def replacing(path: Path):
    """A temporary file name beside `path` to write into; renamed to `path` when the block ends, removed
    when it fails (a full disk, a kill), so `path` is either the old file or the whole new one."""
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if main_process():
        tmp.replace(path)
    else:
        tmp.unlink(missing_ok=True)


def write_json_or_remove(path: Path, data) -> None:
    """write_json, where a failure to write (the disk is full) removes `path` instead: an old file
    would read as the new result."""
    try:
        write_json(path, data)
    except OSError:
        Path(path).unlink(missing_ok=True)


def read_json(path: Path, default=None):
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def update_metrics(run_dir: Path, **values) -> dict:
    """Merge `values` into metrics.json (each step adds its own)."""
    path = Path(run_dir) / "metrics.json"
    metrics = {**read_json(path, default={}), **values}
    write_json(path, metrics)
    return metrics


@contextmanager
def building(final: Path):
    """A temporary folder to write into; when the block ends without error it replaces `final`, else it
    is removed. A killed process leaves only a `.NAME.partial` folder, never a half-written `final`."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial" if main_process() else f".{final.name}.{os.getpid()}.discarded")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main_process():
        replace_dir(tmp, final)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place; the old one (if any) goes only after the new one is done."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def files_table(folder):
    """The files of a folder (an adapter, a merged model) with their sizes in MB."""
    import pandas as pd

    rows = [(p.name, f"{p.stat().st_size / 1e6:.1f} MB") for p in sorted(Path(folder).iterdir())]
    return pd.DataFrame(rows, columns=["file", "size"]).set_index("file")


def adapter_stamp(run_dir) -> float | None:
    path = Path(run_dir) / "adapter" / "adapter_model.safetensors"
    return path.stat().st_mtime if path.exists() else None
