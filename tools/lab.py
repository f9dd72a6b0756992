"""Start JupyterLab on the notebooks: what `make lab` runs.

    python -m tools.lab [--port 8888] [--ip 127.0.0.1] [--threads N] [--cull-idle-minutes M]
                          [--no-browser] [JUPYTER ARGS...]

It opens in `notebooks/`, works as root (containers, cloud VMs: JupyterLab refuses root unless told
`--allow-root`), takes the next free port when the asked one is taken, and prints the address to open
once the server answers. Kernels import `helpers` from this checkout and, with `--threads N`, use N
CPU threads each: on a machine shared by a workshop, give each participant cores // participants
(docs/workshop.md). The token comes from JUPYTER_TOKEN when set, else a new random one.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers.rundir import REPO_ROOT
from tools.kernels import pythonpath_with_repo

READY_TIMEOUT_S = 120


def free_port(ip: str, wanted: int, tries: int = 50) -> int:
    for port in range(wanted, wanted + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("" if ip in ("0.0.0.0", "*") else ip, port))
                return port
            except OSError:
                continue
    raise SystemExit(f"error: no free port in {wanted}-{wanted + tries - 1} on {ip}; pass --port")


def command(ip: str, port: int, notebook_dir: Path, open_browser: bool, extra: list[str],
            cull_idle_minutes: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0",  # the port was checked free; the printed address must be right
           f"--ServerApp.root_dir={notebook_dir}", f"--ServerApp.open_browser={open_browser}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    if cull_idle_minutes:
        cmd += [f"--MappingKernelManager.cull_idle_timeout={60 * cull_idle_minutes}",
                "--MappingKernelManager.cull_interval=60"]
    return cmd + extra


def kernel_environment(token: str, threads: int | None) -> dict:
    """The server's environment, which its kernels and terminals inherit: this Python's folder first on
    PATH, so that `python -m tools.sweep ...` in a lab terminal (or `!python` in a cell) finds the
    workbook's packages without activating the venv."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != bin_dir)])
    env = {**os.environ, "JUPYTER_TOKEN": token, "PATH": path,
           "PYTHONPATH": pythonpath_with_repo(os.environ.get("PYTHONPATH"))}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def wait_until_serving(port: int, token: str, proc: subprocess.Popen) -> bool:
    """True once the server answers an authenticated API call; False if it exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def address(ip: str, port: int, token: str) -> str:
    host = socket.gethostname() if ip in ("0.0.0.0", "*", "") else ip
    return f"http://{host}:{port}/lab?token={token}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8888, help="first port to try (default 8888)")
    ap.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--threads", type=int, help="CPU threads per kernel (OMP_NUM_THREADS)")
    ap.add_argument("--cull-idle-minutes", type=int, metavar="M",
                    help="shut down a kernel idle for M minutes (a workshop's shared machine: every open "
                         "notebook's kernel holds its model; each notebook runs again from the run folder)")
    ap.add_argument("--notebook-dir", type=Path, default=REPO_ROOT / "notebooks")
    ap.add_argument("--no-browser", action="store_true", help="do not try to open a browser")
    args, extra = ap.parse_known_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads {args.threads}: expected a whole number >= 1")
    if args.cull_idle_minutes is not None and args.cull_idle_minutes < 1:
        ap.error(f"--cull-idle-minutes {args.cull_idle_minutes}: expected a whole number >= 1")
    if not args.notebook_dir.is_dir():
        ap.error(f"--notebook-dir {args.notebook_dir}: no such folder")
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    port = free_port(args.ip, args.port)
    # a desktop has a display to open a browser on; a server or container has none (and Python's
    # webbrowser would then start a text browser inside this terminal)
    open_browser = not args.no_browser and (sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))
    cmd = command(args.ip, port, args.notebook_dir.resolve(), open_browser, extra, args.cull_idle_minutes)
    proc = subprocess.Popen(cmd, env=kernel_environment(token, args.threads))
    signal.signal(signal.SIGTERM, _stop)  # `kill` of this process stops the server too (finally below)
    try:
        if wait_until_serving(port, token, proc):
            print(f"\n    JupyterLab serves {args.notebook_dir} at\n\n    {address(args.ip, port, token)}\n\n"
                  f"    Open 01_load_model.ipynb and run it (Run > Run All Cells). Ctrl-C stops the server.\n",
                  flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # Jupyter asks to confirm one SIGINT; two stop it at once
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def _stop(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
