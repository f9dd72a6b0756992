"""Step 3's supervision audit (helpers.data.supervision) on files whose answers we know: the rows that
max_seq_length cuts inside an answer, counted exactly and named; rows where no token carries loss,
dropped and named; rows, and a tokenizer, whose stop token never reaches the loss, reported."""
import json

import pytest

from helpers import rundir
from helpers.data import rows as row_functions, supervision

from test_data import OIG

LONG_ANSWER = "Pip here! " + "very " * 60 + "long."
LONG_QUESTION = "why " * 60 + "?"


def data_report(prepared):
    return json.loads((rundir.resolve(prepared.report.run_dir) / "data_report.json").read_text())


@pytest.mark.parametrize("responses_only", [False, True])
def test_answers_cut_before_their_end_are_counted_and_named(jsonl, prep, responses_only):
    cut_answers = [{"text": f"<human>: Tell me about {i}.\n<bot>: {LONG_ANSWER}"} for i in range(3)]
    # cut too, but in the second question: the first answer keeps its end of turn
    cut_questions = [{"text": f"<human>: Hi {i}.\n<bot>: Hello.\n<human>: {LONG_QUESTION}\n<bot>: Because."}
                     for i in range(2)]
    path = jsonl(OIG[:10] + cut_answers + OIG[10:15] + cut_questions)
    prepared = prep(path, max_seq_length=80, train_on_responses_only=responses_only)
    audit = data_report(prepared)["supervision"]
    assert prepared.report.truncated == 5
    assert audit["answers_cut"] == 3
    assert audit["answers_cut_rows"] == ["line 11", "line 12", "line 13"]
    assert any("3 row(s) lose the end of an answer at max_seq_length 80" in w and "Raise max_seq_length to" in w
               for w in data_report(prepared)["warnings"])
    assert audit["stop_tokens"] == ["<|im_end|>"]
    # every token counts: the system and user turns' <|im_end|> too; answers alone: the cut ones lost theirs
    assert audit["rows_with_stop_in_loss"] == audit["rows"] - (3 if responses_only else 0)


def test_the_share_of_tokens_in_the_loss_follows_train_on_responses_only(jsonl, prep):
    every = data_report(prep(jsonl(OIG), max_seq_length=64))["supervision"]
    answers = data_report(prep(jsonl(OIG), max_seq_length=64, train_on_responses_only=True))["supervision"]
    assert every["loss_share_of_tokens"] == 1.0 and every["loss_share_per_row"]["lowest"] == 1.0
    assert 0.2 < answers["loss_share_of_tokens"] < 0.8
    assert answers["loss_share_per_row"]["lowest"] <= answers["loss_share_per_row"]["median"] < 1.0
    assert answers["rows_with_stop_in_loss"] == answers["rows"]


def test_a_row_where_no_token_carries_loss_is_dropped_and_named(jsonl, prep):
    rows = OIG[:6] + [{"text": f"<human>: {LONG_QUESTION}\n<bot>: Because."}]
    prepared = prep(jsonl(rows), max_seq_length=64, train_on_responses_only=True)
    assert prepared.report.dropped == {"no answer within max_seq_length": 1}
    assert prepared.report.problems[0]["where"] == "line 7"
    assert data_report(prepared)["supervision"]["rows"] == 6


def test_a_row_of_labels_all_masked_is_dropped_by_the_tokenizer(chat_tok, monkeypatch):
    """The guard behind every other check: whatever leaves every label -100 (here an answer span that
    holds no token's start) drops the row, named, instead of training on nothing."""
    tokenize = row_functions.Tokenizer(chat_tok, 64, True, "truncate", "oig")
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    monkeypatch.setattr(tokenize, "_render", lambda conversations, where: [(text, [(41, 42)])])
    monkeypatch.setattr(row_functions, "encode", lambda tokenizer, texts, offsets=False: [
        (list(range(5)), [(0, 3), (3, 10), (10, 20), (20, 40), (40, len(text))])])
    out = tokenize({"where": ["line 1"], "problem": [None], "detail": [None], "cut": [False],
                    "messages": [[{"role": "user", "content": "Hi"}]], "text": [None]})
    assert out["problem"] == ["no token carries loss"] and out["loss_tokens"] == [0]


def test_rows_whose_stop_token_never_gets_loss_are_reported(jsonl, prep):
    rows = [{"text": f"<human>: Tell me about {i}.\n<bot>: {i} is {LONG_ANSWER}"} for i in range(12)]
    prepared = prep(jsonl(rows), max_seq_length=48, train_on_responses_only=True)  # every answer cut
    assert data_report(prepared)["supervision"]["rows_with_stop_in_loss"] == 0
    assert any("no row has its stop token (<|im_end|>) in the loss" in w for w in data_report(prepared)["warnings"])


def test_a_tokenizer_without_a_stop_token_is_reported(jsonl, prep, chat_tok):
    """No EOS, and a template that closes no turn with a special token: nothing that generation could stop
    on is ever in the loss."""
    import copy

    tok = copy.deepcopy(chat_tok)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.eos_token = None
    assert supervision.stop_ids(tok) == {}
    prepared = prep(jsonl(OIG), tok=tok, max_seq_length=64)
    report = data_report(prepared)
    assert report["supervision"]["stop_tokens"] == [] and report["supervision"]["rows_with_stop_in_loss"] == 0
    assert any("no end-of-sequence or end-of-turn token" in w for w in report["warnings"])
