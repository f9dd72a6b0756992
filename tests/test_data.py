import pytest

from helpers import data
from helpers.data import DatasetError

ROWS = [{"text": f"<human>: question {i}?\n<bot>: answer {i}."} for i in range(20)]


def test_loads_jsonl_csv_and_parquet(jsonl, tmp_path):
    import pandas as pd

    path = jsonl(ROWS)
    pd.DataFrame(ROWS).to_csv(tmp_path / "rows.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "rows.parquet")
    for source in (path, tmp_path / "rows.csv", tmp_path / "rows.parquet"):
        ds = data.load_rows(str(source), "text")
        assert ds["text"] == [r["text"] for r in ROWS]


def test_max_rows(jsonl):
    assert len(data.load_rows(str(jsonl(ROWS)), "text", max_rows=5)) == 5


def test_relative_path_found_from_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the repository: the repo-root fallback must find it
    assert len(data.load_rows("data/pip_chip2.jsonl", "text")) == 600


def test_missing_column_names_file_and_columns(jsonl):
    path = jsonl([{"prompt": "a"}])
    with pytest.raises(DatasetError, match=f"{path}: no column 'text'.*'prompt'"):
        data.load_rows(str(path), "text")


def test_empty_text_names_the_row(jsonl):
    path = jsonl(ROWS[:3] + [{"text": "  "}])
    with pytest.raises(DatasetError, match=f"{path}, row 4: field 'text' is empty"):
        data.load_rows(str(path), "text")


def test_non_text_value_names_the_row(jsonl):
    path = jsonl([{"text": "fine"}, {"text": None}])
    with pytest.raises(DatasetError, match="row 2: field 'text' is NoneType, expected text"):
        data.load_rows(str(path), "text")


def test_missing_file_says_where_it_looked():
    with pytest.raises(DatasetError, match="'nope.jsonl': no such file"):
        data.load_rows("nope.jsonl", "text")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n")
    with pytest.raises(DatasetError, match="unknown file type '.txt'"):
        data.load_rows(str(path), "text")


def test_url_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "https://huggingface.co/datasets/laion/OIG/resolve/main/unified_chip2.jsonl"
    with pytest.raises(DatasetError, match="not reachable.*pass its local path"):
        data.load_rows(url, "text")


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="hub dataset name.*not reachable"):
        data.load_rows("laion/OIG", "text")


def test_split_is_seeded_and_disjoint(jsonl):
    ds = data.load_rows(str(jsonl(ROWS)), "text")
    train, held = data.split(ds, 0.25, seed=1)
    assert (len(train), len(held)) == (15, 5)
    assert not set(train["text"]) & set(held["text"])
    assert data.split(ds, 0.25, seed=1)[1]["text"] == held["text"]
    assert len(data.split(ds, 0.0, seed=1)[1]) == 0


def test_split_refuses_to_leave_nothing_to_train(jsonl):
    ds = data.load_rows(str(jsonl(ROWS[:1])), "text")
    with pytest.raises(DatasetError, match="too few"):
        data.split(ds, 0.5, seed=1)


def test_save_and_load_split_round_trip(jsonl, tmp_path):
    ds = data.load_rows(str(jsonl(ROWS)), "text")
    train, held = data.split(ds, 0.2, seed=3)
    data.save_split(tmp_path, train, held, "text")
    assert not (tmp_path / ".data.partial").exists()
    again_train, again_held = data.load_split(tmp_path)
    assert again_train["text"] == train["text"] and again_held["text"] == held["text"]


def test_load_split_without_step_3_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 03_dataset.ipynb"):
        data.load_split(tmp_path)


def test_prompt_and_reference_split_at_last_bot_turn():
    text = "<human>: hi\n<bot>: hello\n<human>: 2+2?\n<bot>: 4."
    assert data.prompt_and_reference(text) == ("<human>: hi\n<bot>: hello\n<human>: 2+2?\n<bot>:", "4.")
    assert data.prompt_and_reference("no turns here") is None


def test_token_lengths_count_the_eos(bundled_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_dir)
    text = "<human>: What is the capital of Norway?"
    assert data.token_lengths(tok, [text]) == [len(tok(text, add_special_tokens=False)["input_ids"]) + 1]
    stats = data.length_stats([3, 5, 700], 512)
    assert stats.loc["longer than max_seq_length=512", "value"] == 1
