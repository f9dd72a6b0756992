"""The code a notebook shows is the code that trains: a value changed inside 02's get_peft_model call
or 04's SFTConfig call reaches step 5's training; a value only the parameters cell may set is refused,
naming where to set it. The notebooks are executed as a learner edits them (papermill, smoke config)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def edited(tmp_path: Path, notebook: str, old: str, new: str) -> Path:
    """A copy of notebooks/`notebook` with `old` replaced by `new` in the one code cell that holds it."""
    data = json.loads((REPO / "notebooks" / notebook).read_text())
    cells = [c for c in data["cells"] if c["cell_type"] == "code" and old in "".join(c["source"])]
    assert len(cells) == 1, f"{notebook}: {old!r} is in {len(cells)} code cells"
    cells[0]["source"] = "".join(cells[0]["source"]).replace(old, new).splitlines(keepends=True)
    path = tmp_path / notebook
    path.write_text(json.dumps(data, indent=1))
    return path


def papermill(notebook: Path, run_dir: Path) -> subprocess.CompletedProcess:
    out = run_dir.parent / f"out-{notebook.name}"
    return subprocess.run([sys.executable, "-m", "papermill", "-f", "configs/smoke.yaml", "-p", "run_dir",
                           str(run_dir), str(notebook), str(out), "--no-progress-bar"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_edits_in_02s_and_04s_calls_reach_training(tmp_path):
    run_dir = tmp_path / "run"
    notebooks = REPO / "notebooks"
    for notebook in (notebooks / "03_dataset.ipynb",
                     edited(tmp_path, "02_lora.ipynb", 'r=P["lora_r"], target_modules', "r=4, target_modules"),
                     edited(tmp_path, "04_trainer.ipynb", "learning_rate=a.learning_rate,", "learning_rate=0.0004,"),
                     notebooks / "05_train_and_save.ipynb"):
        result = papermill(notebook, run_dir)
        assert result.returncode == 0, f"{notebook.name}:\n{result.stderr[-3000:]}"
    edits = json.loads((run_dir / "edits.json").read_text())
    assert edits["02"]["lora_r"]["value"] == 4 and edits["02"]["lora_r"]["parameters"] == 16
    assert edits["04"]["learning_rate"]["value"] == 0.0004
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4  # the smoke config says 16
    rates = [e["learning_rate"] for e in json.loads((run_dir / "log_history.json").read_text())
             if "learning_rate" in e]
    assert max(rates) == pytest.approx(0.0004)  # the smoke config's peak is 0.001
    shown = (run_dir.parent / "out-05_train_and_save.ipynb").read_text()
    assert "learning_rate (changed in SFTConfig)" in shown and "lora_r (changed in get_peft_model)" in shown
    assert json.loads((run_dir / "checkpoints" / "run.json").read_text())["params"]["learning_rate"] == 0.0004

    # Put the call back as it was: the edit is gone, and 05 would train at the parameters' value again.
    assert papermill(notebooks / "04_trainer.ipynb", run_dir).returncode == 0
    assert json.loads((run_dir / "edits.json").read_text())["04"] == {}

    # max_length is max_seq_length, which 03 already cut the rows to: refused, naming where to set it.
    result = papermill(edited(tmp_path, "04_trainer.ipynb", "max_length=a.max_length,", "max_length=64,"), run_dir)
    assert result.returncode != 0
    assert "SFTConfig(max_length=64)" in result.stderr and "set in 01's parameters cell" in result.stderr


def test_an_edit_in_01s_load_call_is_refused(tmp_path, tiny_model_dir):
    """01's call loads another model than its parameters name: steps 2 and 5 would load the parameters'
    model, and 03 would prepare rows for it, so the cell stops and names the parameter to set."""
    notebook = edited(tmp_path, "01_load_model.ipynb", "a.model_name, dtype=a.dtype", f"{str(tiny_model_dir)!r}, dtype=a.dtype")
    result = papermill(notebook, tmp_path / "run")
    assert result.returncode != 0
    assert "The load call in this cell gave model_name=" in result.stderr
    assert "set model_name in this notebook's parameters cell" in result.stderr


@pytest.mark.parametrize("old, new, said", [
    ('torch.manual_seed(P["random_state"])', "torch.manual_seed(7)",
     "02's get_peft_model cell built LoRA weights that start elsewhere than the parameters give (random_state=3407"),
    ("model = lora.prepare_for_training(model, gc)", "model = lora.prepare_for_training(model, True)",
     "02's get_peft_model cell set gradient checkpointing True, but the parameters (use_gradient_checkpointing='unsloth') give False"),
])
def test_an_edit_peft_does_not_record_is_refused_in_05(tmp_path, old, new, said):
    """random_state and use_gradient_checkpointing leave no trace in peft's config: 05, which builds the
    LoRA again from the parameters, compares how its weights start and checkpoint with what 02's cell
    built, and stops before training, naming the parameter to set."""
    run_dir = tmp_path / "run"
    for notebook in (REPO / "notebooks" / "03_dataset.ipynb", edited(tmp_path, "02_lora.ipynb", old, new),
                     REPO / "notebooks" / "04_trainer.ipynb"):
        assert papermill(notebook, run_dir).returncode == 0, notebook.name
    result = papermill(REPO / "notebooks" / "05_train_and_save.ipynb", run_dir)
    assert result.returncode != 0 and said in result.stderr, result.stderr[-3000:]
    assert "in 02's parameters cell instead" in result.stderr
    assert not (run_dir / "adapter").exists()  # nothing trained, nothing saved
