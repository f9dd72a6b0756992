"""JupyterLab as a learner meets it: `make lab` serves the notebooks (as root too), and in a real
browser (Debian's Chromium, driven by Playwright) notebook 01 opens from the file browser, runs top to
bottom from the Run menu, and shows its progress bar and the model's answer without an error."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("no Chromium found: install Debian's package (apt-get install chromium) or set CHROMIUM_PATH "
                "to a Chromium or Chrome binary")


def chromium() -> str | None:
    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/lib/chromium/chromium",  # Debian's binary, not its wrapper
                  shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


@contextlib.contextmanager
def serving(cmd: list[str], env: dict, log: Path, timeout_s: float = 120):
    """Start a lab command in its own process group; yield once it printed its address; stop it all."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while "JupyterLab serves" not in log.read_text():  # tools.lab says so once the server answers
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the lab did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def lab_env(tmp_path: Path, token: str) -> dict:
    """The user's own JupyterLab settings and open tabs stay out of the test (and the test out of them).
    One setting differs from JupyterLab's defaults: the notebook keeps every cell in the page (JupyterLab
    4 otherwise renders only the cells in view), so the test can read the whole notebook's outputs."""
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    return {**os.environ, "JUPYTER_TOKEN": token, "WORKBOOK_RUN_DIR": str(tmp_path / "run"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}


@pytest.mark.slow
def test_make_lab_serves_the_notebooks(tmp_path):
    """What the README says to type. Run as root here (CI), where plain `jupyter lab` refuses to start."""
    port, token = free_port(), secrets.token_hex(16)
    env = lab_env(tmp_path, token)
    with serving(["make", "-s", "lab", f"LAB_ARGS=--port {port} --no-browser"], env, tmp_path / "lab.log"):
        printed = (tmp_path / "lab.log").read_text()
        assert f"http://127.0.0.1:{port}/lab?token={token}" in printed
        status, page = get(f"http://127.0.0.1:{port}/lab/tree?token={token}", token)
        assert status == 200 and "JupyterLab" in page
        status, listing = get(f"http://127.0.0.1:{port}/api/contents", token)
        names = {item["name"] for item in json.loads(listing)["content"]}
        assert {"01_load_model.ipynb", "08_chat.ipynb"} <= names  # it opened in notebooks/
    with pytest.raises(OSError):  # stopped: nothing answers on the port any more
        get(f"http://127.0.0.1:{port}/api/status", token)


def test_lab_refuses_a_missing_folder_and_bad_threads(tmp_path):
    for args, expected in ((["--notebook-dir", str(tmp_path / "nope")], "no such folder"),
                           (["--threads", "0"], "expected a whole number >= 1"),
                           (["--cull-idle-minutes", "0"], "expected a whole number >= 1")):
        out = subprocess.run([sys.executable, "-m", "tools.lab", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and expected in out.stderr


def test_kernels_import_this_checkout_with_the_threads_asked():
    from tools import lab

    env = lab.kernel_environment("t0k", threads=3)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert lab.kernel_environment("t0k", None).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")


def test_a_bare_python_in_the_labs_terminals_is_the_workbooks(tmp_path):
    """What a "Try it" command runs: `python -m tools...` in a lab terminal, whose PATH the server gives,
    from a shell whose PATH lacks the venv (as after `make lab` without activating it)."""
    from tools import lab

    env = lab.kernel_environment("t0k", None)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    out = subprocess.run(["python", "-c", "import torch, helpers, tools.sweep, sys; print(sys.executable)"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == Path(sys.executable).parent


def test_root_gets_allow_root_and_a_workshop_gets_culling(monkeypatch, tmp_path):
    from tools import lab

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "--allow-root" in lab.command("127.0.0.1", 8888, tmp_path, False, [])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cmd = lab.command("127.0.0.1", 8888, tmp_path, False, ["--debug"], cull_idle_minutes=20)
    assert "--allow-root" not in cmd and cmd[-1] == "--debug"
    assert "--MappingKernelManager.cull_idle_timeout=1200" in cmd
    assert not any("cull" in part for part in lab.command("127.0.0.1", 8888, tmp_path, False, []))


def prompts(page) -> list[str]:
    """The code cells' prompts: `[ ]:` never run, `[*]:` queued or running, `[7]:` done."""
    return [p.strip() for p in page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_text_contents()]


def accept_kernel_dialog(page) -> bool:
    """On a first start JupyterLab may ask which kernel to use (its kernel list was still loading when
    the notebook opened); a learner clicks Select, keeping the proposed Python 3. Returns False."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    return False


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_for(condition, seconds: float, what: str, page) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        page.wait_for_timeout(250)


@pytest.mark.slow
def test_notebook_01_runs_in_jupyterlab_in_a_real_browser(tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt: make setup")
    # a copy, so that JupyterLab's saving never touches the committed notebooks
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "tools.lab", "--port", str(port), "--no-browser",
           "--notebook-dir", str(tmp_path / "notebooks")]
    with serving(cmd, lab_env(tmp_path, token), tmp_path / "lab.log"), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=["--no-sandbox"])  # root has no sandbox
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"http://127.0.0.1:{port}/lab?token={token}")
            page.locator(".jp-DirListing-item", has_text="01_load_model.ipynb").dblclick(timeout=60_000)
            page.locator(".jp-NotebookPanel .jp-Notebook-cell").first.wait_for(timeout=60_000)
            status = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator").first
            wait_for(lambda: accept_kernel_dialog(page) or status.get_attribute("data-status") == "idle", 120,
                     "the kernel did not start", page)
            page.wait_for_timeout(1000)
            accept_kernel_dialog(page)
            run_all_cells(page)
            # the stored outputs already number every cell: wait for the queue ([*]) to appear, then to empty
            queued = lambda: accept_kernel_dialog(page) or "[*]:" in prompts(page)  # noqa: E731
            try:
                wait_for(queued, 30, "Run All Cells queued nothing", page)
            except AssertionError:
                # In two full-suite runs on 2 busy cores (never alone) JupyterLab queued nothing after the
                # first Run All Cells: every prompt stayed as stored, the kernel idle. A learner clicks it
                # again; the checks below still ask for one run of every cell, in order.
                run_all_cells(page)
                wait_for(queued, 60, "Run All Cells queued nothing, twice", page)
            wait_for(lambda: all(re.fullmatch(r"\[\d+\]:", p) for p in prompts(page)), 240,
                     "the notebook did not finish", page)
            page.keyboard.press("Control+s")
            wait_for(lambda: page.locator(".jp-mod-dirty").count() == 0, 30, "the notebook was not saved", page)
            outputs = page.locator(".jp-NotebookPanel .jp-OutputArea").all_inner_texts()
            # tqdm's notebook bar is an ipywidgets box: label, progress bar, counts
            bar = page.locator(".jp-OutputArea-output .widget-hbox", has=page.locator(".widget-hprogress"))
            bar_text = bar.first.inner_text().replace("\u2007", " ") if bar.count() else ""  # tqdm pads with figure spaces
            bar_width = (bar.first.locator(".progress-bar").get_attribute("style") or "") if bar.count() else ""
            if bar.count():
                bar.first.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "01_load_model.png"))
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"))  # what the browser showed when it went wrong
            print(f"screenshot of the failure: {tmp_path / 'failed.png'}")
            raise
        finally:
            browser.close()
    print(f"screenshot: {tmp_path / '01_load_model.png'}")
    shown = "\n".join(outputs)
    assert "Traceback" not in shown and "Error" not in shown, shown[-2000:]
    assert "Oslo" in shown  # the model's answer to "What is the capital of Norway?"
    # transformers' weight-loading bar, rendered as a widget and full
    assert "Loading weights: 100%" in bar_text and "width: 100%" in bar_width, (bar_text, bar_width)
    saved = json.loads((tmp_path / "notebooks" / "01_load_model.ipynb").read_text())
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))  # one fresh kernel, in order
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in code for o in c["outputs"])
    assert (tmp_path / "01_load_model.png").stat().st_size > 50_000


def test_without_chromium_the_browser_test_says_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CHROMIUM_PATH", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert chromium() is None
    assert "apt-get install chromium" in INSTALL_HINT and "CHROMIUM_PATH" in INSTALL_HINT
    monkeypatch.setattr(os, "access", lambda path, mode: path == "/opt/chrome/chrome")
    monkeypatch.setenv("CHROMIUM_PATH", "/opt/chrome/chrome")
    assert chromium() == "/opt/chrome/chrome"
