import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_dataset", REPO / "data" / "make_dataset.py")
make_dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_dataset)


def test_committed_file_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "rows.jsonl"
    make_dataset.main(["--out", str(out)])
    assert out.read_bytes() == (REPO / "data" / "pip_chip2.jsonl").read_bytes()


def test_rows_are_oig_format_distinct_and_enough():
    rows = [json.loads(line) for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    assert len(rows) >= 300
    assert len({r["text"] for r in rows}) == len(rows)
    for row in rows:
        assert list(row) == ["text"]
        turns = row["text"].split("\n")
        assert turns[0].startswith("<human>: ") and turns[-1].startswith("<bot>: Pip here! ")
        assert all(t.startswith(("<human>: ", "<bot>: ")) for t in turns)


def test_other_seed_gives_other_rows():
    assert make_dataset.make_rows(20, seed=1) != make_dataset.make_rows(20, seed=2)
    assert make_dataset.make_rows(20, seed=1) == make_dataset.make_rows(20, seed=1)
