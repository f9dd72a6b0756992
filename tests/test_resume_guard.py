"""Resume never mixes two trainings: a command whose inputs differ from those of the checkpoints it would
continue is refused before anything runs, and the run folder is left byte for byte as it was."""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.params import ParameterError
from helpers.training import checkpoints
from tests.test_crash_safety import wait_for
from tools import runlock

REPO = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    """Every file under `folder`: its path and a digest of its bytes (the runner's lock aside: a killed
    runner leaves one, which the next takes over)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != runlock.NAME}


def command(tool, config, run_dir, *parameters):
    return [sys.executable, "-m", tool, str(config), "--run-dir", str(run_dir),
            *[a for pair in parameters for a in ("-p", *pair)]]


def run(*args):
    return subprocess.run(command(*args), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_an_interrupted_training_is_continued_only_with_its_own_inputs(tmp_path, training_config):
    data = tmp_path / "rows.jsonl"
    shutil.copy(REPO / "data" / "pip_chip2.jsonl", data)
    config = training_config(tmp_path / "c.yaml", dataset=str(data))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(command("tools.train", config, run_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(lambda: bool(checkpoints.complete(run_dir)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = snapshot(run_dir)

    # another LoRA rank over the r=16 checkpoint: refused, naming it (was: 420 lines of "size mismatch")
    result = run("tools.train", config, run_dir, ("resume", "true"), ("lora_r", "8"))
    assert result.returncode == 2 and "lora_r: 16 -> 8" in result.stderr, result.stderr
    assert "mix two trainings" in result.stderr and "set resume False" in result.stderr
    assert snapshot(run_dir) == before

    # the same command after the dataset file changed: refused (was: steps 1-2 on the old rows, 3-8 on the new)
    original = data.read_bytes()
    lines = original.splitlines(keepends=True)
    data.write_bytes(b"".join(lines[1:] + lines[:1]))  # same rows, another order: the same size
    result = run("tools.train", config, run_dir)
    assert result.returncode == 2 and f"the content of the dataset file {data}" in result.stderr, result.stderr
    assert snapshot(run_dir) == before

    # the file as it was (a new modification time, the same bytes): the training continues
    data.write_bytes(original)
    result = run("tools.train", config, run_dir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and metrics["train_steps"] == 8


@pytest.mark.slow
def test_resume_true_over_a_finished_training_is_refused(tmp_path, training_config):
    config = training_config(tmp_path / "c.yaml", max_steps=6)
    run_dir = tmp_path / "run"
    only = [a for n in ("01", "02", "03", "04", "05") for a in ("--only", n)]
    done = subprocess.run(command("tools.run", config, run_dir) + only, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    before = snapshot(run_dir)
    result = subprocess.run(command("tools.run", config, run_dir, ("resume", "true"), ("max_steps", "8"),
                                    ("learning_rate", "1e-4")) + only, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the training in" in result.stderr and "finished (checkpoint-6): there is nothing to continue" in result.stderr
    assert snapshot(run_dir) == before

    # resume 'auto' over the finished run with fewer steps: a new training, and it says what it deletes
    result = subprocess.run(command("tools.run", config, run_dir, ("max_steps", "2")) + only, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    executed = (run_dir / "05_train_and_save.ipynb").read_text()
    assert "Training from the start: the finished training's checkpoints (checkpoint-4, checkpoint-6) are deleted" \
        in executed and "max_steps: 6 -> 2" in executed


def fake_checkpoints(tmp_path, trains, finished=False) -> Path:
    folder = tmp_path / "checkpoints"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / checkpoints.MARKER).write_text("step 2\n")
    (folder / "run.json").write_text(json.dumps({"trains": trains, "finished": finished}))
    return folder


TRAINS = {"sft_config": {"learning_rate": 2e-4, "max_steps": 8}, "lora": {"r": 16}, "lora_weights": "a", "rows": "b"}


def test_05_refuses_rows_that_differ_from_the_checkpoints(tmp_path):
    # a learner's edit in 03's cells (a .filter) changes no parameter: 05 itself sees the rows differ
    folder = fake_checkpoints(tmp_path, TRAINS)
    assert checkpoints.resume_from(folder, "auto", TRAINS) == folder / "checkpoint-2"
    for mode in ("auto", True):
        with pytest.raises(ParameterError, match=r"Changed: 03's training rows \(data/train.arrow\)"):
            checkpoints.resume_from(folder, mode, {**TRAINS, "rows": "c"})
    with pytest.raises(ParameterError, match=r"04's SFTConfig learning_rate: 0.0002 -> 0.0001"):
        checkpoints.resume_from(folder, "auto", {**TRAINS, "sft_config": {"learning_rate": 1e-4, "max_steps": 8}})
    assert checkpoints.resume_from(folder, False, {**TRAINS, "rows": "c"}) is None
    assert (folder / "checkpoint-2").is_dir()  # refusing deletes nothing


def test_05_refuses_to_continue_a_finished_training(tmp_path):
    folder = fake_checkpoints(tmp_path, TRAINS, finished=True)
    with pytest.raises(ParameterError, match="finished .checkpoint-2.: there is nothing to continue"):
        checkpoints.resume_from(folder, True, TRAINS)
    assert checkpoints.resume_from(folder, "auto", TRAINS) is None  # 'auto' trains again
