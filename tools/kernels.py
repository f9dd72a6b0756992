"""The Python kernels the runner executes notebooks in.

Starting a kernel and importing torch, transformers and unsloth costs seconds (on a GPU machine, tens of
seconds) before a notebook does anything. So by default (`shared`) one kernel runs the notebooks one
after another, its namespace emptied before each, as after a restart: the libraries are imported once.

A kernel has a flavour. Where the run uses unsloth, its kernel imports unsloth first, before
transformers, as unsloth requires; a notebook that loads the model with plain transformers (07, marked
`"workbook": {"unpatched_transformers": true}` in its metadata) must not run where unsloth has patched
transformers' model classes, so it gets a plain kernel, and the next notebook an unsloth one again.
`fresh` starts a new kernel for every notebook, as JupyterLab does.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from helpers import rundir

# Before each notebook in a shared kernel: an empty namespace, figures closed, GPU cache released, and the
# peak-memory counters reset, so that each notebook's figures are its own.
FRESH_NAMESPACE = """
get_ipython().run_line_magic("reset", "-f")
import gc as _gc, os as _os, sys as _sys
_os.environ["WORKBOOK_NOTEBOOK"] = {name!r}
if "matplotlib.pyplot" in _sys.modules:
    _sys.modules["matplotlib.pyplot"].close("all")
_gc.collect()
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_available():
    _sys.modules["torch"].cuda.empty_cache()
    _sys.modules["torch"].cuda.reset_peak_memory_stats()
"""
# After each notebook: what it cost in memory.
COSTS = """
import json as _json, resource as _resource, sys as _sys
_c = {"peak_rss_gib": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 2**20}
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_available():
    _c["peak_gpu_gib"] = _sys.modules["torch"].cuda.max_memory_reserved() / 2**30
print("WORKBOOK_RESULT " + _json.dumps(_c))
"""
# Right after a kernel starts: the libraries every notebook of the run needs (unsloth first, where used).
# A plain kernel on a GPU machine loads 07's base in 4-bit through bitsandbytes (unsloth imports it itself),
# and its CUDA context costs a second or two: both are done while the notebook before it runs.
WARM = {"unsloth": "import unsloth\n",
        "plain": "import importlib.util, torch\nif torch.cuda.is_available():\n    torch.cuda.init()\n"
                 "    if importlib.util.find_spec('bitsandbytes'):\n        import bitsandbytes\n"}
WARM_COMMON = "import torch, transformers, peft, pandas, matplotlib.pyplot\nimport helpers.model.loading, helpers.params\n"


def pythonpath_with_repo(pythonpath: str | None) -> str:
    """PYTHONPATH for a kernel: this checkout first, so that its `helpers` is the one imported (kernels
    start in notebooks/, and the repository need not be an installed package), then the rest."""
    paths = [p for p in (pythonpath or "").split(os.pathsep) if p and p != str(rundir.REPO_ROOT)]
    return os.pathsep.join([str(rundir.REPO_ROOT), *paths])


def wants_unpatched(notebook: Path) -> bool:
    meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]
    return bool(meta.get("workbook", {}).get("unpatched_transformers"))


class Kernels:
    """Hands out the kernel each notebook runs in (`for_notebook`), starting and stopping them as the
    mode and the notebooks' flavours ask. `prepare(next notebook)` starts the next one's kernel in the
    background while the current notebook runs, where it will need a new one: a kernel switch then
    costs nothing (importing unsloth alone takes tens of seconds on a GPU machine)."""

    def __init__(self, mode: str, uses_unsloth: bool, cwd: Path):
        self.mode, self.uses_unsloth, self.cwd = mode, uses_unsloth, cwd
        self.km, self.flavour, self.warming = None, None, None
        self.spare = None  # (flavour, kernel manager, Background of its imports), started ahead

    def flavour_for(self, notebook: Path) -> str:
        return "unsloth" if self.uses_unsloth and not wants_unpatched(notebook) else "plain"

    def _launch(self, flavour: str):
        # the asynchronous manager: with it nbclient checks every second, while waiting for a cell's
        # reply, that the kernel still lives, and raises DeadKernelError; with the blocking one the
        # wait for the reply blocks that check and a killed kernel leaves the runner waiting forever
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        km = AsyncKernelManager(kernel_name="python3")
        run_sync(km.start_kernel)(cwd=str(self.cwd), extra_arguments=["--log-level=ERROR"])
        return km, Background(run_in_kernel, km, WARM[flavour] + WARM_COMMON)

    def start(self, flavour: str, background: bool = False) -> None:
        """A new kernel of `flavour`, its imports running (in a thread with `background`, so that the
        runner can do its own work meanwhile)."""
        self.shutdown()
        self.km, self.warming = self._launch(flavour)
        self.flavour = flavour
        if not background:
            self.warming, warming = None, self.warming
            warming.result()

    def _needs_new(self, flavour: str) -> bool:
        return self.km is None or self.mode == "fresh" or flavour != self.flavour

    def prepare(self, notebook: Path) -> None:
        """Start the kernel that `notebook` (the one after the current) will need, if it needs a new one."""
        flavour = self.flavour_for(notebook)
        if self.spare is None and self._needs_new(flavour):
            self.spare = (flavour, *self._launch(flavour))

    def for_notebook(self, notebook: Path):
        """The kernel manager to run `notebook` in, its namespace empty."""
        if self.warming is not None:
            self.warming, warming = None, self.warming
            warming.result()
        flavour = self.flavour_for(notebook)
        if self._needs_new(flavour):
            if self.spare is not None and self.spare[0] == flavour:
                self._stop(self.km)
                self.flavour, self.km, warming = self.spare
                self.spare = None
                warming.result()
            else:
                self.start(flavour)
        run_in_kernel(self.km, FRESH_NAMESPACE.format(name=notebook.stem))
        return self.km

    def costs(self) -> dict:
        return run_in_kernel(self.km, COSTS)

    @staticmethod
    def _stop(km) -> None:
        from jupyter_core.utils import run_sync

        if km is not None and km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)

    def shutdown(self) -> None:
        for warming in (self.warming, self.spare[2] if self.spare else None):
            if warming is not None:
                warming.thread.join()  # its error, if any, no longer matters
        self._stop(self.km)
        self._stop(self.spare[1] if self.spare else None)
        self.km, self.warming, self.spare = None, None, None


class Background:
    """`function(*args)` in a thread; `result()` waits and raises what it raised."""

    def __init__(self, function, *args):
        self.value, self.error = None, None

        def work():
            try:
                self.value = function(*args)
            except BaseException as e:  # handed to the caller of result()
                self.error = e

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def run_in_kernel(km, code: str) -> dict:
    """Run `code` in the kernel of `km`; returns the JSON it prints after WORKBOOK_RESULT, if any.
    Raises when the code fails (a kernel that cannot import its libraries is no kernel to run in)."""
    found, errors = {}, []

    def output(msg):
        content = msg.get("content", {})
        if msg.get("msg_type") == "error":
            errors.append(f"{content.get('ename')}: {content.get('evalue')}")
        for line in content.get("text", "").splitlines():
            if line.startswith("WORKBOOK_RESULT "):
                found.update(json.loads(line.split(" ", 1)[1]))

    from jupyter_client.blocking import BlockingKernelClient

    client = BlockingKernelClient()  # a blocking client of the (asynchronous) manager's kernel
    client.load_connection_info(km.get_connection_info())
    client.start_channels()
    try:
        wait_until_ready(client, km, timeout=120)
        client.execute_interactive(code, store_history=False, output_hook=output, timeout=600)
    finally:
        client.stop_channels()
    if errors:
        raise RuntimeError(f"The notebook kernel could not run the runner's code: {errors[0]}")
    return found


def wait_until_ready(client, km, timeout: float) -> None:
    """`client.wait_for_ready`, where only the kernel's process ending counts as its death: a client made
    from connection info judges by the heartbeat, which a kernel still importing its first modules on a
    busy machine does not answer yet, and it would call that kernel dead."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.wait_for_ready(timeout=max(1.0, deadline - time.monotonic()))
        except RuntimeError:
            if exit_code(km) is not None or time.monotonic() >= deadline:
                raise


def exit_code(km) -> int | None:
    """The exit status of the kernel process of `km`; None while it runs (or where it cannot be seen)."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return process.poll() if process is not None else None


def interrupt(km) -> None:
    """SIGINT to the kernel of `km`, as JupyterLab's interrupt button sends it (the kernel runs in a session of
    its own, out of reach of the terminal's Ctrl-C); usable in a signal handler, where the manager's own
    asynchronous call cannot be awaited."""
    import signal

    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)


def how_it_ended(km) -> str:
    """How the kernel of `km` ended, in words, with what to do where it was the out-of-memory killer."""
    import signal

    returncode = exit_code(km)
    if returncode is None:
        return "its process is gone"
    if returncode < 0:
        number = -returncode
        name = signal.Signals(number).name if number in set(signal.Signals) else f"signal {number}"
        if number == signal.SIGKILL:
            return (f"killed by {name} (signal {number}), most often the system's out-of-memory killer: lower "
                    f"max_rows, max_seq_length or per_device_train_batch_size, or close other notebooks")
        return f"ended by {name} (signal {number})"
    return f"its process exited with code {returncode}"
