"""tools.compare on hand-made run folders, tools.sweep's planning, and a real sweep on the smoke config."""
import json
import subprocess
import sys

import pytest

from tools import compare, sweep
from helpers.params import ParameterError

REPO = compare.rundir.REPO_ROOT


def fake_run(folder, lora_r, eval_after, losses):
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"lora_r": lora_r, "learning_rate": 5e-4, "run_dir": str(folder)}))
    (folder / "metrics.json").write_text(json.dumps({"train_loss": sum(losses) / len(losses), "eval_loss_base": 3.5,
                                                     "eval_loss_finetuned": eval_after, "tokens_per_s": 70.0,
                                                     "train_runtime_s": 100.0}))
    (folder / "log_history.json").write_text(json.dumps([{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
                                                        + [{"train_runtime": 100.0}]))
    return folder


def test_compare_ranks_runs_and_labels_them_by_what_differs(tmp_path):
    runs = [fake_run(tmp_path / "a", 8, 0.9, [3.0, 2.0, 1.5]), fake_run(tmp_path / "b", 32, 0.6, [3.0, 1.5, 1.0]),
            fake_run(tmp_path / "c", 16, 0.7, [3.0, 1.8, 1.2])]
    png, table = compare.compare(runs, tmp_path / "out")
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| rank | run | train loss | held-out loss before | held-out loss after")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["lora_r=32", "lora_r=16", "lora_r=8"]  # best first
    assert " | 0.6 | " in lines[2]
    assert png.stat().st_size > 5000


def test_compare_cli_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "tools.compare", str(tmp_path / "empty")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and f"{tmp_path / 'empty'}: no finished training here" in result.stderr


def test_sweep_values_are_parsed_and_checked():
    assert sweep.parse_values("lora_r", "8,16,32") == [8, 16, 32]
    assert sweep.parse_values("learning_rate", "1e-4, 2e-4") == [1e-4, 2e-4]
    assert sweep.parse_values("target_modules", "[q_proj, v_proj], [q_proj]") == [["q_proj", "v_proj"], ["q_proj"]]
    with pytest.raises(ParameterError, match="'lora_r' = 0 is below its minimum"):
        sweep.parse_values("lora_r", "8,0")
    with pytest.raises(ParameterError, match="Did you mean 'lora_r'"):
        sweep.parse_values("lora_rank", "8")
    combos = sweep.combinations({"lora_r": [8, 16], "learning_rate": [1e-4, 2e-4]})
    assert len(combos) == 4 and combos[1] == {"lora_r": 8, "learning_rate": 2e-4}
    assert sweep.folder_name(combos[1]) == "lora_r=8-learning_rate=0.0002"


def test_sweep_list_hands_out_one_command_per_combination(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.sweep", "configs/smoke.yaml", "-p", "lora_r", "8,16",
                             "-p", "learning_rate", "1e-4,2e-4", "--out", str(tmp_path), "--list"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and lines[0].startswith("1: python -m tools.run configs/smoke.yaml --run-dir")
    assert f"{tmp_path}/lora_r=16-learning_rate=0.0002 -p lora_r 16 -p learning_rate 0.0002" in lines[3]
    assert lines[4] == f"then: python -m tools.compare {tmp_path}/*/ --out {tmp_path}"
    assert not any(tmp_path.iterdir())  # listing runs nothing


def test_sweep_bad_value_stops_before_any_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.sweep", "configs/smoke.yaml", "-p", "lora_r", "8,x",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "'lora_r' = 'x' has type str" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_sweep_of_three_ranks_on_the_smoke_config(tmp_path):
    # the sweep's default, 01-05: lora_r is 02's, and 05 trains the LoRA that 02 saved
    result = subprocess.run([sys.executable, "-m", "tools.sweep", "configs/smoke.yaml", "-p", "lora_r", "8,16,32",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    for r in (8, 16, 32):
        metrics = json.loads((tmp_path / f"lora_r={r}" / "metrics.json").read_text())
        assert metrics["train_steps"] == 4
        adapter = json.loads((tmp_path / f"lora_r={r}" / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == r  # each run really used its own value
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert len(table) == 5 and {line.split(" | ")[1] for line in table[2:]} == {"lora_r=8", "lora_r=16", "lora_r=32"}
    assert (tmp_path / "comparison.png").stat().st_size > 5000
    assert "comparison.md" in result.stdout
