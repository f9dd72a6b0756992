"""A file of the run folder cut short (a full disk, a copy that stopped) is named, with what to run again;
a damaged checkpoint is passed over for the one before it. Each was a message naming no file ("incomplete
metadata", "checkpoint file is corrupted", "Expected to be able to read 38496 bytes")."""
import json

import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from helpers import rundir
from helpers.training import checkpoints


def cut(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def saved_folder(folder):
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(64, 64)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": torch.zeros(256)}, folder / "optimizer.pt")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 16}))
    table = pa.table({"input_ids": [[1, 2, 3]] * 500})
    with pa.OSFile(str(folder / "train.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return folder


@pytest.mark.parametrize("name, says", [
    ("adapter_model.safetensors", "bytes where its header lists"),
    ("optimizer.pt", "not a whole PyTorch file"),
    ("train.arrow", "is damaged (OSError: Expected to be able to read"),
    ("adapter_config.json", "is damaged (JSONDecodeError"),
])
def test_each_kind_of_file_cut_short_is_named(tmp_path, name, says):
    folder = saved_folder(tmp_path / "saved")
    assert rundir.damage(folder) is None
    cut(folder / name)
    assert rundir.damage(folder).startswith(f"{folder / name} ") and says in rundir.damage(folder)


def test_a_damaged_adapter_names_the_file_and_the_step_to_run_again(tmp_path):
    saved_folder(tmp_path / "adapter")
    cut(tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"adapter_model.safetensors is damaged: .* run 05_train_and_save.ipynb "
                                         r"with this run_dir again"):
        rundir.artifact(tmp_path, "adapter")


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before_it(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        saved_folder(folder / f"checkpoint-{step}")
        (folder / f"checkpoint-{step}" / checkpoints.MARKER).write_text(f"step {step}\n")
    (folder / "run.json").write_text(json.dumps({"trains": {}, "finished": False}))
    cut(folder / "checkpoint-4" / "optimizer.pt")
    assert checkpoints.resume_from(folder, "auto", {}) == folder / "checkpoint-2"
    assert "checkpoint-4 cannot be resumed from: " in capsys.readouterr().out
    cut(folder / "checkpoint-2" / "adapter_model.safetensors")
    assert checkpoints.whole(folder) is None


def test_every_process_keeps_its_own_counts_in_a_checkpoint(tmp_path, monkeypatch):
    # under accelerate launch each process resumes from its own tokens and seconds; rundir.write_json
    # writes on the main process only, which left every other process counting from zero
    from types import SimpleNamespace

    monkeypatch.setenv("RANK", "1")
    (tmp_path / "checkpoint-2").mkdir()
    stop = checkpoints.callback(lambda: {"train_tokens": 123, "train_runtime_s": 4.5})
    stop.on_save(SimpleNamespace(output_dir=str(tmp_path), process_index=1),
                 SimpleNamespace(global_step=2, is_world_process_zero=False), None)
    assert checkpoints.counted(tmp_path / "checkpoint-2", 1) == {"train_tokens": 123, "train_runtime_s": 4.5}
    assert not (tmp_path / "checkpoint-2" / checkpoints.MARKER).exists()  # the main process marks it
