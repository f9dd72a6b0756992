"""Crash-safe training through `python -m tools.train` (what notebook 05 and `make train-multi` run):
a SIGKILLed run resumes to the same result as an uninterrupted one; SIGTERM saves a checkpoint first."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.training import checkpoints

REPO = checkpoints.rundir.REPO_ROOT
pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path, training_config):
    return training_config(tmp_path / "crash.yaml")  # slow enough (about a second a step) to be killed mid-run


def train_cmd(config, run_dir):
    return [sys.executable, "-m", "tools.train", str(config), "--run-dir", str(run_dir)]


def wait_for(predicate, process, timeout=300):
    start = time.time()
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() - start < timeout
        time.sleep(0.05)


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(config, tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(train_cmd(config, whole), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(config, killed), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: bool(checkpoints.complete(killed)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapter").exists()  # nothing that looks like a finished result
    first = checkpoints.complete(killed)[-1]

    resumed = subprocess.run(train_cmd(config, killed), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a, b = metrics(whole), metrics(killed)
    assert b["resumed_from"] is not None and int(b["resumed_from"].rsplit("-", 1)[1]) >= int(first.name.split("-")[1])
    assert a["train_steps"] == b["train_steps"] == 8
    assert abs(a["final_step_loss"] - b["final_step_loss"]) < 1e-3
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
    steps = [e["step"] for e in json.loads((killed / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, 9))  # the log carries over the steps before the kill


# Started in the killed process only (PYTHONPATH): the first held-out evaluation while training (05's
# second call of the loss function; its first is before training) marks a file and waits to be killed.
EVALUATION_HOOK = """
import os, time
from helpers.evaluation import loss

calls, measure = [], loss.mean_token_loss

def marked(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        open(os.environ["EVALUATING"], "w").close()
        time.sleep(600)
    return measure(*args, **kwargs)

loss.mean_token_loss = marked
"""


def test_sigkill_during_an_evaluation_then_resume_matches_an_uninterrupted_run(tmp_path, training_config):
    config = training_config(tmp_path / "eval.yaml", eval_steps=3)
    whole = tmp_path / "whole"
    done = subprocess.run(train_cmd(config, whole), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    hook, mark, killed = tmp_path / "hook", tmp_path / "evaluating", tmp_path / "killed"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EVALUATION_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "EVALUATING": str(mark)}
    proc = subprocess.Popen(train_cmd(config, killed), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(mark.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()
    assert [p.name for p in checkpoints.complete(killed)] == ["checkpoint-2"]  # the evaluation was step 3's

    resumed = subprocess.run(train_cmd(config, killed), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a, b = metrics(whole), metrics(killed)
    assert b["resumed_from"].endswith("checkpoint-2")
    assert [s for s, _ in a["eval_history"]] == [s for s, _ in b["eval_history"]] == [3, 6, 8]
    assert all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a["eval_history"], b["eval_history"]))
    assert abs(a["eval_loss_finetuned"] - b["eval_loss_finetuned"]) < 1e-4
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3


def test_sigterm_saves_a_checkpoint_before_stopping(config, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ}
    proc = subprocess.Popen(train_cmd(config, run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    # training has started once it recorded its parameters; let it take a step or so (no checkpoint yet)
    wait_for(lambda: (run_dir / "checkpoints" / "run.json").exists(), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "SIGTERM at step" in err and "checkpoint saved in" in err
    saved = checkpoints.complete(run_dir)
    assert saved, "no complete checkpoint after SIGTERM"
    assert not json.loads((run_dir / "checkpoints" / "run.json").read_text())["finished"]
    resumed = subprocess.run(train_cmd(config, run_dir), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(run_dir)["train_steps"] == 8 and metrics(run_dir)["resumed_from"].endswith(saved[-1].name)


def test_resume_true_without_a_checkpoint_is_an_error(config, tmp_path):
    result = subprocess.run(train_cmd(config, tmp_path / "run") + ["-p", "resume", "true"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode != 0 and "'resume' = True, but" in result.stderr


def test_ctrl_c_of_the_runner_saves_the_current_step_and_the_same_command_goes_on(tmp_path, training_config):
    import random

    # no checkpoint of its own before the end (save_steps 100): the one that Ctrl-C saves is all there is
    config = training_config(tmp_path / "c.yaml", save_steps=100)
    only = [a for n in ("01", "02", "03", "04", "05") for a in ("--only", n)]

    def command(run_dir):
        return [sys.executable, "-m", "tools.run", str(config), "--run-dir", str(run_dir), *only]

    whole = tmp_path / "whole"
    assert subprocess.run(command(whole), cwd=REPO, capture_output=True, timeout=900).returncode == 0
    run_dir, stop_at = tmp_path / "run", random.randint(2, 6)
    # its own process group, as a terminal's foreground job, which Ctrl-C signals whole
    proc = subprocess.Popen(command(run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    progress = run_dir / "progress.json"
    wait_for(lambda: progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= stop_at, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (stop_at, out, err)
    assert "Traceback" not in err and "stopped: SIGINT in 05_train_and_save, at step" in err, err
    saved = checkpoints.complete(run_dir)
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= stop_at

    resumed = subprocess.run(command(run_dir), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a, b = metrics(whole), metrics(run_dir)
    assert b["resumed_from"].endswith(saved[0].name) and a["train_steps"] == b["train_steps"] == 8
    assert b["train_tokens"] == a["train_tokens"]  # no step trained twice or lost
    assert b["train_runtime_s"] > json.loads((saved[0] / "counts-0.json").read_text())["train_runtime_s"]
    losses = [[e["loss"] for e in json.loads((d / "log_history.json").read_text()) if "loss" in e] for d in (whole, run_dir)]
    assert len(losses[0]) == len(losses[1]) == 8
    assert max(abs(x - y) for x, y in zip(*losses)) < 1e-4, (stop_at, losses)
