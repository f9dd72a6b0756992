"""One runner per run folder: two commands writing one folder would leave an adapter trained on one
dataset beside the params, split and report of another.

    with runlock.held(run_dir):
        ...

The lock is an flock on run_dir/.runner.lock, which the kernel drops when its process ends however it
ends; the file also names the holder (pid, start time, command) for the message another runner prints.
A file left by a process that died is taken over, saying so.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from helpers.params import ParameterError

NAME = ".runner.lock"


@contextlib.contextmanager
def held(run_dir: Path):
    path = Path(run_dir) / NAME
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ParameterError(f"Run folder {run_dir} is in use by another runner ({holder(handle.read())}). "
                                 f"Wait for it to end, or use another --run-dir.") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed this file as we opened it: lock the one now there
    handle.seek(0)
    if left := handle.read().strip():
        print(f"Run folder {run_dir}: taking over the lock left by a runner that no longer runs "
              f"({holder(left)}).", flush=True)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:300]}))
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def holder(text: str) -> str:
    try:
        who = json.loads(text)
        return f"pid {who['pid']}, started {who['started']}: {who['command']}"
    except (ValueError, KeyError, TypeError):
        return "a runner that did not say who it is"
