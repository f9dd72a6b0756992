import json
import math

from helpers import rundir
from tools.kernels import pythonpath_with_repo
from tools.console import progress_line


def test_relative_run_dir_counts_from_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKBOOK_RUN_DIR", raising=False)
    path = rundir.resolve("runs/test-resolve")
    try:
        assert path == rundir.REPO_ROOT / "runs" / "test-resolve" and path.is_dir()
    finally:
        path.rmdir()


def test_env_replaces_only_the_notebook_default(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBOOK_RUN_DIR", str(tmp_path / "env"))
    assert rundir.resolve("runs/lab") == tmp_path / "env"
    assert rundir.resolve(tmp_path / "mine") == tmp_path / "mine"


def test_write_json_is_atomic_and_keeps_non_finite_visible(tmp_path):
    path = tmp_path / "m.json"
    rundir.write_json(path, {"a": 1.5, "b": math.nan, "c": [math.inf]})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": [None]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_update_metrics_merges(tmp_path):
    rundir.update_metrics(tmp_path, backend="hf")
    assert rundir.update_metrics(tmp_path, train_loss=1.0) == {"backend": "hf", "train_loss": 1.0}


def test_replace_dir_swaps_in_a_complete_folder(tmp_path):
    final, tmp = tmp_path / "adapter", tmp_path / ".adapter.partial"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    rundir.replace_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_find_file_tries_cwd_then_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert rundir.find_file("data/pip_chip2.jsonl") == rundir.REPO_ROOT / "data" / "pip_chip2.jsonl"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pip_chip2.jsonl").write_text("{}\n")
    assert rundir.find_file("data/pip_chip2.jsonl") == tmp_path / "data" / "pip_chip2.jsonl"
    assert rundir.find_file("nope.jsonl") is None


def test_progress_lines_read_like_a_person_would_write_them():
    assert progress_line({"step": 30, "of": 120, "loss": 1.23456, "left_s": 130}) == \
        "step 30/120, loss 1.2346, about 2 min 10 s left"
    assert progress_line({"step": 1, "of": 4, "loss": None, "left_s": None}) == "step 1/4"
    assert progress_line({"rows": 4096, "of": 210289, "what": "rows checked and tokenized"}) == \
        "4,096/210,289 rows checked and tokenized"


def test_progress_is_written_only_under_the_runner(tmp_path, monkeypatch):
    from helpers.training import progress

    monkeypatch.delenv(progress.ENV, raising=False)
    progress.note(force=True, step=1, of=2)
    assert not (tmp_path / "progress.json").exists()
    monkeypatch.setenv(progress.ENV, str(tmp_path))
    progress.note(force=True, step=1, of=2)
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 1


def test_kernels_find_this_checkout_first_on_pythonpath():
    import os

    repo = str(rundir.REPO_ROOT)
    assert pythonpath_with_repo(None) == repo
    assert pythonpath_with_repo(f"/a{os.pathsep}{repo}{os.pathsep}/b").split(os.pathsep) == [repo, "/a", "/b"]
    assert pythonpath_with_repo(f"{os.pathsep}/a").split(os.pathsep) == [repo, "/a"]
