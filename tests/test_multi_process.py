"""Data-parallel training as `make train-multi` runs it (`accelerate launch --multi_gpu --num_processes 2
-m tools.train`), here on the CPU: two processes joined by gloo. The run folder must be the notebooks'
(so 06-08 run on it), and each process must have trained rows of its own."""
import json
import subprocess
import sys

import pytest

from helpers import rundir

REPO = rundir.REPO_ROOT
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, training_config):
    folder = tmp_path_factory.mktemp("multi")
    run_dir = folder / "run"
    config = training_config(folder / "multi.yaml", max_steps=3, save_steps=100, max_new_tokens=16)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tools.train", str(config), "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return config, run_dir


def test_two_processes_train_rows_of_their_own_into_the_notebooks_run_folder(two_process_run):
    _, run_dir = two_process_run
    for path in ("params.json", "data_report.json", "data/train.arrow", "data/eval.arrow", "log_history.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.json"):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["train_steps"] == 3
    assert len(metrics["peak_memory_gib_per_process"]) == 2
    rows = json.loads((run_dir / "rows_trained.json").read_text())
    assert rows["processes"] == 2
    first, second = rows["rows"]
    assert len(first) == len(second) == 3 * 2  # steps x rows a pass, in each process
    assert -1 not in first + second  # every key found in data/train.arrow
    assert not set(first) & set(second), rows  # data parallel: no row trained twice in a step's data


def test_notebooks_06_to_08_run_on_its_result(two_process_run):
    config, run_dir = two_process_run
    done = subprocess.run([sys.executable, "-m", "tools.run", str(config), "--run-dir", str(run_dir),
                           "--only", "06", "--only", "07", "--only", "08"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_loss_finetuned"] < metrics["eval_loss_base"]
    assert (run_dir / "model.gguf").exists()
