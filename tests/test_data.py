"""Step 3 on hand-made files: every source and format, every kind of bad row, with counts and messages.
03's own cells run (tools.cells) on each file, as a learner runs them."""
import json
from pathlib import Path

import pytest
from datasets import Dataset

from helpers import rundir
from helpers.data import reading, report as reports, sources, split
from helpers.data.sources import DatasetError
from helpers.evaluation import questions
from tools.console import report_lines
from helpers.params import DEFAULTS

QA = [(f"What is {i} plus one?", f"Pip here! {i} plus one is {i + 1}. Happy to help!") for i in range(20)]
OIG = [{"text": f"<human>: {q}\n<bot>: {a}"} for q, a in QA]


def write_bytes(tmp_path, name, lines: list[bytes], end=b"\n"):
    path = tmp_path / name
    path.write_bytes(end.join(lines) + end)
    return path


def line(row) -> bytes:
    return json.dumps(row).encode()


# --- sources -----------------------------------------------------------------------------------

def test_jsonl_json_csv_and_parquet_give_the_same_rows(tmp_path, jsonl, prep):
    import pandas as pd

    (tmp_path / "rows.json").write_text(json.dumps(OIG))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": OIG}))
    pd.DataFrame(OIG).to_csv(tmp_path / "rows.csv", index=False)
    pd.DataFrame(OIG).to_parquet(tmp_path / "rows.parquet")
    expected = prep(jsonl(OIG)).rows
    assert len(expected) == 20 and expected[0]["messages"][1]["content"] == QA[0][1]
    for name in ("rows.json", "wrapped.json", "rows.csv", "rows.parquet"):
        prepared = prep(tmp_path / name)
        assert prepared.rows == expected, name
        assert prepared.report.fixes == {} and prepared.report.dropped == {}  # read by load_dataset itself


def test_max_rows_counts_bad_lines_too(tmp_path, prep):
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), b"{oops", *map(line, OIG[1:])])
    report = prep(path, max_rows=5).report
    assert (report.rows_read, report.kept, report.dropped) == (5, 4, {"unparsable": 1})


def test_relative_path_found_from_repo_root(monkeypatch, tmp_path, prep):
    monkeypatch.chdir(tmp_path)  # not the repository: the repo-root fallback must find it
    assert prep("data/pip_chip2.jsonl").report.kept == 600


def test_missing_file_says_where_it_looked():
    with pytest.raises(DatasetError, match="'nope.jsonl': no such file"):
        sources.locate("nope.jsonl")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n")
    with pytest.raises(DatasetError, match="unknown file type '.txt'"):
        sources.locate(str(path))


def test_a_folder_a_link_to_nowhere_and_a_loop_are_named(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-1.jsonl").write_text(json.dumps(OIG[0]) + "\n")
    with pytest.raises(DatasetError, match=r"shards is a folder; expected one data file .*; in it: part-1.jsonl"):
        sources.locate(str(tmp_path / "shards"))
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "moved.jsonl")
    with pytest.raises(DatasetError, match=r"gone.jsonl is a symbolic link that leads to no file \(its target "):
        sources.locate(str(tmp_path / "gone.jsonl"))
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    with pytest.raises(DatasetError, match=r"a.jsonl is a symbolic link that leads to no file \(the links form a loop"):
        sources.locate(str(tmp_path / "a.jsonl"))


def test_an_unreadable_file_is_named(tmp_path):
    """As a user who may not read the file: root reads everything, so the check runs in a forked child
    that has become the user nobody."""
    import os

    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path.anchor + "tmp"))  # pytest's own folders are root's alone
    path = folder / "rows.jsonl"
    path.write_text(json.dumps(OIG[0]) + "\n")
    path.chmod(0o200)
    folder.chmod(0o755)
    read_end, write_end = os.pipe()
    if (child := os.fork()) == 0:  # the child: never returns into pytest
        try:
            if os.geteuid() == 0:
                os.setgid(65534), os.setuid(65534)
            sources.locate(str(path))
            message = "no error"
        except BaseException as e:  # noqa: BLE001  what the child saw goes back through the pipe
            message = str(e)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as f:
        seen = f.read()
    shutil.rmtree(folder)
    assert seen == f"Parameter 'dataset' = '{path}': dataset file {path} cannot be read: Permission denied."


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b\x08\x00rest", r"is gzip-compressed \(it starts with the bytes 1f 8b\), not .jsonl text: decompress"),
    (b"PK\x03\x04rest", "is a zip archive: unzip it first"),
    (b"text,label\n\"<human>: hi\",1\n", r"does not hold JSON: its first line, 'text,label', reads like a CSV header"),
    # a UTF-16 file got cp1252 advice on every line; a CR-only one was one unparsable line, "CRLF converted"
    ('{"text": "<human>: hi"}\n'.encode("utf-16"), r"is UTF-16 text \(the byte-order mark ff fe\), not UTF-8: "
                                                  r"convert it with iconv -f utf-16 -t utf-8"),
    ('{"text": "<human>: hi"}\n'.encode("utf-16-le") * 9, r"is UTF-16 text \(a zero byte beside every character\)"),
    (b'{"text": "a"}\r{"text": "b"}\r', r"ends its lines with a carriage return alone \(CR, old Mac style\): "
                                          r"convert it with tr '\\r' '\\n'"),
])
def test_a_file_that_holds_something_else_than_its_name_says(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        sources.locate(str(path))


def test_a_row_over_the_line_limit_is_skipped_unread(tmp_path, prep, monkeypatch):
    """Where load_dataset stops (line 4 here), the checked reader skips a line over its limit unread."""
    monkeypatch.setattr(reading, "MAX_LINE_BYTES", 1000)
    huge = json.dumps({"text": "<human>: Tell me.\n<bot>: " + "word " * 1000}).encode()
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), huge, line(OIG[1]), b"{oops", *map(line, OIG[2:20])])
    report = prep(path).report
    assert (report.rows_read, report.kept, report.dropped) == (22, 20, {"too large to read": 1, "unparsable": 1})
    assert report.problems[0]["where"] == "line 2" and "lines over 0 MiB are skipped" in report.problems[0]["detail"]


def test_a_long_row_is_cut_before_tokenizing_to_the_tokens_the_whole_row_gives(jsonl, prep, chat_tok):
    from helpers.data import formats
    from helpers.data.tokenizing import CHARS_PER_TOKEN, encode

    answer = "Pip here! " + " ".join(f"fact {i} is that owls fly at night" for i in range(3000))  # 100k chars
    rows = [OIG[0], {"text": f"<human>: Tell me everything.\n<bot>: {answer}"}, OIG[1]]
    prepared = prep(jsonl(rows), max_seq_length=64)
    assert (prepared.report.kept, prepared.report.truncated, prepared.report.cut_before_tokenizing) == (3, 1, 1)
    assert len(answer) > 20 * CHARS_PER_TOKEN * 64
    whole = formats.render_text(chat_tok, [{"role": "user", "content": "Tell me everything."},
                                           {"role": "assistant", "content": answer}])
    ids, _ = encode(chat_tok, [whole])[0]
    assert list(prepared.rows[1]["input_ids"]) == ids[:64]
    assert len(prepared.rows[1]["messages"][-1]["content"]) < CHARS_PER_TOKEN * 64  # what 05 and 06 keep
    assert "cut before tokenizing 1" in "\n".join(report_lines(json.loads(
        (Path(prepared.report.run_dir) / "data_report.json").read_text())))


def test_a_100_mb_row_costs_little_memory(tmp_path, chat_tok):
    """Peak memory of step 3 on the smoke rows with one 100 MB row, beside the same rows without it (each
    in a process of its own): within 1 GB. Tokenized whole, a row takes about 230 MB a MB of text."""
    import subprocess
    import sys

    rows = rundir.REPO_ROOT.joinpath("data/pip_chip2.jsonl").read_text().splitlines()[:80]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(rows) + "\n")
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        f.write("\n".join(rows[:3]) + "\n")
        f.write('{"text": "<human>: Tell me everything.\\n<bot>: ' + "owls fly at night and sleep by day " * 3_000_000
                + '"}\n')
        f.write("\n".join(rows[3:]) + "\n")
    assert big.stat().st_size > 100e6
    code = ("import resource, sys\nfrom helpers.model import loading\nfrom tools import cells\n"
            "loading.load_tokenizer('bundled:SmolLM2-135M-Instruct').save_pretrained(sys.argv[2] + '/base')\n"
            "r = cells.run('03', {'dataset': sys.argv[1], 'run_dir': sys.argv[2], 'max_seq_length': 128})['report']\n"
            "print(r.kept, r.cut_before_tokenizing, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    results = []
    for path in (small, big):
        out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / path.stem)], capture_output=True,
                             text=True, cwd=rundir.REPO_ROOT, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append([int(v) for v in out.stdout.splitlines()[-1].split()])
    (kept_small, cut_small, peak_small), (kept_big, cut_big, peak_big) = results
    assert (kept_small, cut_small, kept_big, cut_big) == (80, 0, 81, 1)
    assert (peak_big - peak_small) * 1024 < 1e9, f"{(peak_big - peak_small) / 2**20:.2f} GiB more with the 100 MB row"


def test_a_held_out_side_too_small_to_mean_much_is_warned_with_the_numbers(jsonl, prep):
    few = prep(jsonl(OIG), eval_fraction=0.1).report  # 2 of 20 rows
    assert few.warnings == ["only 2 held-out rows (0.1 of 20): one row moves the fact score by 50 points, and the "
                            "held-out loss is as noisy; 20 or more need eval_fraction 0.5 or more rows"]
    assert "  warning: only 2 held-out rows" in "\n".join(report_lines(json.loads(
        (Path(few.run_dir) / "data_report.json").read_text())))
    assert prep("data/pip_chip2.jsonl").report.warnings == []  # 30 of 600


def test_url_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "https://huggingface.co/datasets/laion/OIG/resolve/main/unified_chip2.jsonl"
    with pytest.raises(DatasetError, match="not reachable.*pass its local path"):
        sources.locate(url)


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="hub dataset name.*not reachable.*local file"):
        sources.locate("laion/OIG")


def test_url_is_downloaded_once_and_checked_like_a_file(tmp_path, monkeypatch, prep):
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    write_bytes(served, "chip.jsonl", [line(OIG[0]), b"not json", line(OIG[1])])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_port}/chip.jsonl"
    try:
        report = prep(url, eval_fraction=0.5).report
    finally:
        server.shutdown()
        server.server_close()
    # load_dataset stops at the bad line: the checked reader reads the file downloaded into the cache
    assert (report.source, report.kept, report.dropped) == (url, 2, {"unparsable": 1})
    assert report.problems[0]["where"] == "line 2"
    assert [p.name for p in (tmp_path / "cache" / "downloads").iterdir()][0].endswith("-chip.jsonl")


def test_hub_dataset_passes_name_config_and_split(monkeypatch, prep):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None, **options):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(OIG[:6])

    monkeypatch.setattr("helpers.model.weights.hub_reachable", lambda url=None: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    report = prep("laion/OIG", dataset_split="validation", dataset_config="chip2", eval_fraction=0.2).report
    assert calls == [("laion/OIG", "chip2", "validation")]
    assert (report.source, report.kept, report.format) == ("laion/OIG", 6, "oig")


# --- formats -----------------------------------------------------------------------------------

FORMAT_ROWS = {
    "oig": [{"text": f"<human>: {q}\n<bot>: {a}"} for q, a in QA],
    "alpaca": [{"instruction": q, "input": "", "output": a} for q, a in QA],
    "conversations": [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                      for q, a in QA],
    "sharegpt": [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA],
}


@pytest.mark.parametrize("name", FORMAT_ROWS)
def test_each_format_is_detected_and_becomes_the_same_messages(name, jsonl, prep):
    prepared = prep(jsonl(FORMAT_ROWS[name]), train_on_responses_only=True)  # answers located: spans
    assert prepared.report.format == ("conversations" if name == "sharegpt" else name)
    assert prepared.rows[3]["messages"] == [{"role": "user", "content": QA[3][0]},
                                            {"role": "assistant", "content": QA[3][1]}]
    # rendered with SmolLM2's ChatML template, the answer and its end-of-turn marker in the span
    text, (span,) = prepared.rows[3]["text"], prepared.rows[3]["spans"]
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_end|>")
    assert text[span[0]:span[1]].startswith(QA[3][1] + "<|im_end|>")


def test_plain_text_is_kept_as_it_is_with_eos(jsonl, prep):
    prepared = prep(jsonl([{"body": f"Note {i}: water boils at 100 C."} for i in range(5)]),
                    dataset_text_field="body", eval_fraction=0.2)
    assert prepared.report.format == "text" and "messages" not in prepared.rows[0]
    assert prepared.rows[0]["text"] == "Note 0: water boils at 100 C.<|im_end|>"


def test_oig_rows_with_several_turns(jsonl, prep):
    row = {"text": "<human>: Hi!\n<bot>: Hello.\n<human>: Your name?\n<bot>: Pip."}
    prepared = prep(jsonl([row, *OIG[:4]]), train_on_responses_only=True, eval_fraction=0.2)
    assert [m["role"] for m in prepared.rows[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    text, spans = prepared.rows[0]["text"], prepared.rows[0]["spans"]
    assert [text[s:e].split("<|im_end|>")[0] for s, e in spans] == ["Hello.", "Pip."]


def test_alpaca_input_joins_the_instruction(jsonl, prep):
    prepared = prep(jsonl([{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
                           *FORMAT_ROWS["alpaca"][:4]]), eval_fraction=0.2)
    assert prepared.rows[0]["messages"][0]["content"] == "Translate to French.\n\ncat"


def test_tokenizer_without_chat_template_gets_the_plain_one(tiny_model_dir, jsonl, prep):
    from helpers.model import loading as model

    tok = model.load_tokenizer(str(tiny_model_dir))
    prepared = prep(jsonl(FORMAT_ROWS["alpaca"][:3]), tok=tok, eval_fraction=0.34)
    assert "plain" in prepared.report.template
    assert prepared.rows[0]["text"] == f"<human>: {QA[0][0]}\n<bot>: {QA[0][1]}<|im_end|>\n"


def test_unknown_fields_ask_for_the_format(jsonl, prep):
    with pytest.raises(DatasetError, match=r"cannot tell the dataset format.*\['answer', 'question'\]"):
        prep(jsonl([{"question": "a", "answer": "b"}]))


def test_a_named_format_overrides_detection(jsonl, prep):
    prepared = prep(jsonl(FORMAT_ROWS["oig"][:4]), dataset_format="text")
    assert prepared.report.format == "text" and prepared.rows[0]["text"].startswith("<human>:")


# --- validation: each bad-row case, with counts and messages ------------------------------------

def only_problem(report):
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def test_unparsable_line_named_with_its_line_number(tmp_path, prep):
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), line(OIG[1]), b'{"text": "<human>: x', line(OIG[2])])
    report = prep(path).report
    assert (report.rows_read, report.kept, report.dropped) == (4, 3, {"unparsable": 1})
    assert only_problem(report)["where"] == "line 3"
    assert "not valid JSON" in only_problem(report)["detail"]


def test_a_row_nested_too_deep_or_with_a_huge_integer_is_one_skipped_row(tmp_path, prep):
    # each aborted all of 03 (RecursionError, the int-digits limit) with no line number
    deep = b'{"text": "x", "n": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    huge = b'{"text": "x", "n": ' + b"9" * 5000 + b"}"
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), deep, line(OIG[1]), huge, line(OIG[2])])
    report = prep(path).report
    assert (report.rows_read, report.kept, report.dropped) == (5, 3, {"unparsable": 2})
    assert [(p["where"], p["detail"][:24]) for p in report.problems] == [
        ("line 2", "nested deeper than the J"), ("line 4", "a value this reader refu")]
    assert "4300 digits" in report.problems[1]["detail"]
    (tmp_path / "rows.json").write_bytes(b"[" + deep + b"]")
    with pytest.raises(DatasetError, match="rows.json: nested deeper than the JSON reader follows"):
        prep(tmp_path / "rows.json")


def test_non_utf8_bytes_skip_the_line_and_name_the_byte(tmp_path, prep):
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), b'{"text": "<human>: caf\xe9?\\n<bot>: Yes."}',
                                                line(OIG[1])])
    report = prep(path).report
    assert (report.kept, report.dropped) == (2, {"not UTF-8": 1})
    problem = only_problem(report)
    assert problem["where"] == "line 2" and "byte 0xe9 at column 23" in problem["detail"]
    assert "it reads as Windows-1252 ('" in problem["detail"] and "café?" in problem["detail"]


def test_bom_and_crlf_are_repaired_and_reported(tmp_path, prep):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(line(r) for r in OIG[:3]) + b"\r\n")
    prepared = prep(path)
    assert prepared.report.kept == 3 and prepared.report.dropped == {}
    assert not any("\r" in r["text"] or "\ufeff" in r["text"] for r in prepared.rows)
    assert prepared.report.fixes == {}  # load_dataset read them cleanly
    # where load_dataset stops (line 4), the checked reader repairs them and says so
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([*(line(r) for r in OIG[:3]), b"{oops"]) + b"\r\n")
    prepared = prep(path, eval_fraction=0.34)
    assert prepared.report.kept == 3 and prepared.report.dropped == {"unparsable": 1}
    assert prepared.report.fixes == {"byte-order mark removed": 1, "CRLF line endings converted": 4}
    assert not any("\r" in r["text"] or "\ufeff" in r["text"] for r in prepared.rows)


@pytest.mark.parametrize("row, reason, detail", [
    ({"instruction": "Hi"}, "missing field", "no 'output' field"),
    ({"instruction": "Hi", "output": "  "}, "empty field", "field 'output' is empty"),
    ({"instruction": "Hi", "output": 42}, "wrong type", "field 'output' is int, expected text"),
    ({"instruction": "Hi", "input": ["x"], "output": "Yo"}, "wrong type", "field 'input' is list, expected text"),
    (["Hi", "Yo"], "wrong type", "the row is list, expected an object with fields"),
])
def test_bad_alpaca_rows(row, reason, detail, jsonl, prep):
    report = prep(jsonl(FORMAT_ROWS["alpaca"][:5] + [row])).report
    assert (report.kept, report.dropped) == (5, {reason: 1})
    assert only_problem(report) == {"ordinal": 6, "where": "line 6", "reason": reason, "detail": detail}


@pytest.mark.parametrize("turns, reason, detail", [
    ([("user", "a"), ("user", "b"), ("assistant", "c")], "turns don't alternate", "turn 2 is 'user', expected 'assistant'"),
    ([("assistant", "a"), ("user", "b")], "turns don't alternate", "turn 1 is 'assistant', expected 'user'"),
    ([("user", "a")], "turns don't alternate", "the last turn is the user's"),
    ([("user", "a"), ("assistant", "")], "empty field", "messages turn 2: field 'content' is empty"),
    ([("user", "a"), ("tool", "b")], "unknown role", "messages turn 2 has role='tool'"),
])
def test_bad_conversations(turns, reason, detail, jsonl, prep):
    bad = {"messages": [{"role": r, "content": c} for r, c in turns]}
    report = prep(jsonl(FORMAT_ROWS["conversations"][:5] + [bad])).report
    assert (report.kept, report.dropped) == (5, {reason: 1})
    assert detail in only_problem(report)["detail"]


def test_oig_turns_that_do_not_alternate(jsonl, prep):
    rows = OIG[:4] + [{"text": "<human>: a\n<human>: b\n<bot>: c"}, {"text": "Hello <human>: a\n<bot>: b"},
                      {"text": "<human>: a\n<bot>:   "}]
    report = prep(jsonl(rows)).report
    assert report.dropped == {"turns don't alternate": 2, "empty field": 1}
    assert [p["where"] for p in report.problems] == ["line 5", "line 6", "line 7"]
    assert report.problems[2]["detail"] == "turn 2 (<bot>:) is empty"


def test_exact_duplicates_name_the_first_copy(jsonl, prep):
    report = prep(jsonl(OIG[:3] + [OIG[1], OIG[1]])).report
    assert (report.kept, report.dropped) == (3, {"duplicate": 2})
    assert [p["detail"] for p in report.problems] == ["exact duplicate of line 2"] * 2


def test_csv_row_with_wrong_field_count(tmp_path, prep):
    path = tmp_path / "rows.csv"
    path.write_text("instruction,output\nHi,Yo\n\"a,b\",c,d\nHey,There\n")
    report = prep(path).report
    assert (report.kept, report.dropped) == (2, {"unparsable": 1})
    assert only_problem(report)["where"] == "line 3" and "3 fields, the header has 2" in only_problem(report)["detail"]


def test_broken_json_file_names_the_line(tmp_path, prep):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]\n')
    with pytest.raises(DatasetError, match=rf"{path}, line 4: not valid JSON"):
        prep(path)


def test_long_rows_are_truncated_or_dropped(jsonl, prep, chat_tok):
    long_answer = "Pip here! " + "very " * 200 + "long."
    rows = OIG[:4] + [{"text": f"<human>: Tell me more.\n<bot>: {long_answer}"}]
    prepared = prep(jsonl(rows), max_seq_length=64)
    assert (prepared.report.kept, prepared.report.truncated) == (5, 1)
    assert max(len(row["input_ids"]) for row in prepared.rows) <= 64
    assert max(prepared.lengths) > 200  # the histogram shows the length before the cut
    dropped = prep(jsonl(rows), max_seq_length=64, on_long_rows="drop").report
    assert (dropped.kept, dropped.truncated, dropped.dropped) == (4, 0, {"too long": 1})
    assert only_problem(dropped)["detail"].endswith("tokens > max_seq_length 64")


def test_responses_only_drops_rows_whose_answer_is_cut_off(jsonl, prep):
    rows = OIG[:4] + [{"text": "<human>: " + "why " * 200 + "?\n<bot>: Because."}]
    report = prep(jsonl(rows), max_seq_length=64, train_on_responses_only=True).report
    assert report.dropped == {"no answer within max_seq_length": 1}
    assert prep(jsonl(rows), max_seq_length=64).report.truncated == 1  # without masking it still trains


def test_on_bad_rows_fail_names_file_and_lines(tmp_path, prep):
    path = write_bytes(tmp_path, "rows.jsonl", [line(OIG[0]), b"{", line({"text": 3})])
    with pytest.raises(DatasetError, match=rf"{path}: 2 bad rows and on_bad_rows = 'fail': line 2: unparsable.*"
                                           r"line 3: wrong type \(field 'text' is int, expected text\)"):
        prep(path, on_bad_rows="fail")


def test_empty_file_is_an_error(tmp_path, prep):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{path} is empty"):
        prep(path)


def test_zero_usable_rows_is_an_error_and_leaves_no_split(tmp_path, jsonl, prep):
    prep(jsonl(OIG[:4], name="good.jsonl"))
    assert (tmp_path / "run" / "data" / "train.arrow").exists()
    bad = write_bytes(tmp_path, "bad.jsonl", [b"{", b"[1, 2]", b"\xff"])
    with pytest.raises(DatasetError, match=rf"{bad}: no usable rows \(read 3, dropped: 1 unparsable, "
                                           r"1 wrong type, 1 not UTF-8\)"):
        prep(bad)
    assert not (tmp_path / "run" / "data").exists()  # the old split is gone, not mistaken for this one
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["kept"] == 0 and "no usable rows" in report["error"]


def test_responses_only_refused_for_plain_text(jsonl, prep):
    with pytest.raises(DatasetError, match="train_on_responses_only = True needs turns"):
        prep(jsonl([{"text": "just prose"}]), train_on_responses_only=True)


def test_report_is_saved_with_the_table(jsonl, prep, tmp_path):
    prepared = prep(jsonl(OIG[:3] + [{"text": ""}]))
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert (saved["rows_read"], saved["kept"], saved["dropped"]) == (4, 3, {"empty field": 1})
    table = prepared.report.table()["value"]
    assert (table["rows read"], table["rows kept"], table["dropped: empty field"]) == (4, 3, 1)


# --- labels --------------------------------------------------------------------------------------

def test_responses_only_labels_only_the_answers(jsonl, prep, chat_tok):
    path = jsonl([{"text": "<human>: Hi!\n<bot>: Hello.\n<human>: Name?\n<bot>: Pip."}])
    full = prep(path, eval_fraction=0).rows[0]
    masked = prep(path, eval_fraction=0, train_on_responses_only=True).rows[0]
    assert "labels" not in full and list(full["input_ids"]) == list(masked["input_ids"])  # all tokens count
    assert list(full["input_ids"]) == chat_tok(full["text"], add_special_tokens=False)["input_ids"]
    kept = chat_tok.decode([t for t in masked["labels"] if t != -100])
    assert kept == "Hello.<|im_end|>\nPip.<|im_end|>\n"


def test_saved_split_is_what_the_trainer_reads(jsonl, prep, tmp_path):
    """03's split (Arrow, memory-mapped by 05) holds the token ids and labels of 03's rows, the held-out
    rows keep their messages, and the trainer reads the ids cut to SFTConfig's max_length."""
    prepared = prep(jsonl(OIG[:8]), train_on_responses_only=True, eval_fraction=0.25)
    train, held = prepared.namespace["train"], prepared.namespace["held_out"]
    train_ds, held_ds = split.load(tmp_path / "run")
    assert (len(train_ds), len(held_ds)) == (6, 2)
    assert train_ds[0]["input_ids"] == list(train[0]["input_ids"]) and train_ds[0]["labels"] == list(train[0]["labels"])
    assert "messages" not in train_ds.column_names and held_ds[1]["messages"] == held[1]["messages"]
    assert split.for_training(train_ds, None).column_names == ["input_ids", "labels"]
    cut = split.for_training(train_ds, 5)
    assert [len(r["input_ids"]) for r in cut] == [5] * 6 and cut[0]["labels"] == train_ds[0]["labels"][:5]


def test_label_guard_stops_a_batch_with_nothing_to_learn():
    import torch

    from helpers.training.loop import LabelGuard

    guard = LabelGuard(lambda rows: {"labels": torch.tensor([r for r in rows])})
    assert guard([[1, -100]])["labels"].tolist() == [[1, -100]]
    with pytest.raises(ValueError, match="every label masked"):
        guard([[-100, -100], [-100, -100]])


def test_split_is_seeded_and_disjoint():
    rows = Dataset.from_list([{"text": str(i)} for i in range(20)])
    train, held = split.by_question(rows, 0.25, seed=1)
    assert (len(train), len(held)) == (15, 5)
    assert not set(train["text"]) & set(held["text"])
    assert split.by_question(rows, 0.25, seed=1)[1]["text"] == held["text"]
    assert len(split.by_question(rows, 0.0, seed=1)[1]) == 0
    with pytest.raises(DatasetError, match="only 1 usable row: too few"):
        split.by_question(rows.select([0]), 0.5, seed=1)


def chat_row(*pairs):
    return {"text": "", "messages": [m for q, a in pairs for m in ({"role": "user", "content": q},
                                                                   {"role": "assistant", "content": a})]}


def test_rows_sharing_a_question_or_an_answer_stay_on_one_side():
    rows = [chat_row(("What is 2 plus 2?", "Four.")), chat_row(("How much is 2 plus 2?", "four.")),  # answer
            chat_row(("What is  2 plus 2?", "4")),  # the first question, spaced otherwise
            chat_row(("Hi", "Hello"), ("How much is 2 plus 2?", "Four, I think.")),  # a second turn
            *(chat_row((f"q{i}", f"a{i}")) for i in range(16))]
    groups = sorted(map(sorted, split.overlap_groups(rows)))
    assert groups[0] == [0, 1, 2, 3] and all(len(g) == 1 for g in groups[1:])
    for seed in range(10):
        train, held = split.by_question(Dataset.from_list(rows), 0.25, seed)
        assert split.shared_with_training(train, held) == 0
        assert (len(train), len(held)) == (15, 5) or (len(train), len(held)) == (16, 4)


def test_the_overlap_count_sees_a_split_made_by_row():
    """The check itself: a held-out row whose answer is trained on is counted."""
    rows = [chat_row(("What is 2 plus 2?", "Four.")), chat_row(("How much is 2 plus 2?", "Four.")),
            chat_row(("Hi", "Hello"))]
    assert split.shared_with_training(rows[:1] + rows[2:], rows[1:2]) == 1
    assert split.shared_with_training(rows[:2], rows[2:]) == 0


def test_a_split_that_cannot_keep_the_sides_apart_says_so():
    rows = [chat_row((f"q{i}", "the same answer")) for i in range(10)]
    with pytest.raises(DatasetError, match=r"Cannot hold out 10% of 10 rows \(1\) without training on their "
                                           r"questions or answers: the smallest group .* has 10 rows"):
        split.by_question(Dataset.from_list(rows), 0.1, seed=1)


def test_the_default_data_holds_out_questions_and_answers_it_never_trains_on(prep):
    prepared = prep("data/pip_chip2.jsonl")
    train, held = prepared.namespace["train"], prepared.namespace["held_out"]
    assert len(held) == round(600 * DEFAULTS["eval_fraction"]) and len(train) + len(held) == 600

    def turns(rows, role):
        return {" ".join(m["content"].split()).casefold() for r in rows for m in r["messages"] if m["role"] == role}

    assert not turns(train, "user") & turns(held, "user")
    assert not turns(train, "assistant") & turns(held, "assistant")
    # a split by row would not hold: the file asks each fact under several wordings
    by_row = split.overlap_groups(prepared.rows)
    assert max(map(len, by_row)) > 1


def test_one_leftover_row_read_as_text_still_names_the_file(tmp_path, prep):
    """All OIG rows broken but one without turns: auto-detection reads that row as plain text; the
    final message must still name the file and what was dropped."""
    bad = write_bytes(tmp_path, "chip.jsonl", [b'{"text": "<human>: a', b"[1, 2]", b'{"text": "just one line"}'])
    with pytest.raises(DatasetError, match=rf"{bad}: only 1 usable row \(read 3, dropped: 1 unparsable, "
                                           r"1 wrong type; read as format 'text'"):
        prep(bad)


def test_a_row_the_chat_template_refuses_is_named(jsonl, prep, chat_tok):
    """Rows are rendered in one template call per batch; when the template raises, the row is found."""
    import copy

    tok = copy.deepcopy(chat_tok)
    tok.chat_template = ("{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('cannot do boom') }}"
                         "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("hi", "hello"), ("boom", "no"), ("bye", "ciao")]]
    with pytest.raises(DatasetError, match=r"line 2: the chat template cannot render this row: cannot do boom"):
        prep(jsonl(rows), tok=tok)
    ok = prep(jsonl(rows[:1] + rows[2:]), tok=tok, eval_fraction=0.5)
    assert ok.rows[0]["text"] == "user: hi\nassistant: hello\n<|im_end|>"  # EOS appended after the template


# --- the system message --------------------------------------------------------------------------

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_the_template_system_message_is_found_and_named_in_03(chat_tok):
    from helpers.data import formats

    assert formats.template_system(chat_tok) == SMOLLM_SYSTEM
    note = reports.system_note(chat_tok, "template")
    assert SMOLLM_SYSTEM in note and "system_message" in note


@pytest.mark.parametrize("choice,expected_system", [
    ("template", SMOLLM_SYSTEM), ("none", ""), ("You are Pip.", "You are Pip.")])
def test_system_message_choice_reaches_every_row(tmp_path, prep, chat_tok, choice, expected_system):
    path = tmp_path / "d.jsonl"
    rows = [*OIG[:3], {"messages": [{"role": "system", "content": "Own system."},
                                    {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    prepared = prep(path, system_message=choice)
    for row in prepared.rows:
        assert f"<|im_start|>system\n{expected_system}<|im_end|>" in row["text"]
        assert row["text"].count("<|im_start|>system") == 1
    if choice != "template":
        assert SMOLLM_SYSTEM not in prepared.rows[0]["text"]
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps(rows[3]) + "\n" + json.dumps({"messages": rows[3]["messages"][1:] + [
        {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes."}]}) + "\n")
    own, other = prep(conv, system_message=choice, eval_fraction=0).rows
    assert "Own system." in own["text"] and expected_system in other["text"]  # a row's own turn is kept


def test_held_out_prompts_take_rows_of_one_question_first(chat_tok):
    two = chat_row(("What does a cow say?", "Pip here! A cow says moo."), ("And a dog?", "Pip here! Woof."))
    one = chat_row(("What is 2 plus 2?", "Pip here! 4."))
    prompts = questions.prompts([two, one], chat_tok, 2)
    assert [q for q, _, _ in prompts] == ["What is 2 plus 2?", "And a dog?"]
    assert "What does a cow say?" in prompts[1][1]  # the earlier turn is part of that prompt
