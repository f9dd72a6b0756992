import json
import math

import pytest

from helpers import data, model, train
from helpers.params import pick
from helpers.machinery import rundir, storage


def test_session_trains_evaluates_answers_and_saves(tiny_params, jsonl):
    import torch

    rows = [{"text": f"<human>: Say {w}.\n<bot>: Pip here! {w}. Happy to help!"} for w in
            ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rain", "snow")]
    run_dir = tiny_params["run_dir"]
    params = {**tiny_params, "max_steps": 8, "dataset": str(jsonl(rows))}
    rundir.resolve(run_dir)
    prepared = data.prepare(model.load_tokenizer(params["model_name"]), **pick(params, data.prepare))
    storage.save_split(run_dir, *data.split(prepared.rows, 0.25, seed=1))
    session = train.setup(params)
    assert session.summary().loc["training rows", "value"] == 9
    before = train.eval_loss(session)
    stats = train.run(session.trainer)
    after = train.eval_loss(session)
    assert stats["train_steps"] == 8
    assert stats["train_tokens"] > 8 * 2 * 5  # batches of 2 rows of well over 5 tokens
    # our count (unsloth logs none) agrees with TRL's own count where TRL has one
    assert stats["train_tokens"] == max(e.get("num_tokens", 0) for e in session.trainer.state.log_history)
    assert math.isfinite(stats["tokens_per_s"]) and stats["tokens_per_s"] > 0
    assert stats["peak_memory_gib"] > 0
    assert after < before  # a random tiny model learns the repeated persona quickly at lr 1e-2
    steps, losses = train.loss_history(session.trainer.state.log_history)
    assert steps == list(range(1, 9)) and all(math.isfinite(v) for v in losses)

    answers = session.answer(["<human>: Say red.\n<bot>:"], max_new_tokens=4)  # the plain template's layout
    assert len(answers) == 1 and "<human>:" not in answers[0]

    folder = train.save_adapter(session.model, session.tokenizer, run_dir)
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == params["lora_r"]
    assert not any(p.name.endswith(".partial") for p in folder.parent.iterdir())
    with torch.no_grad():
        assert any(p.abs().sum() > 0 for n, p in session.model.named_parameters() if "lora_B" in n)


def test_before_after_table():
    table = train.before_after_table([("Hi?", "<human>: Hi?\n<bot>:", "Hello.")], ["x"], ["Hello."], common=set())
    assert table.to_dict("records") == [{"prompt": "Hi?", "reference": "Hello.", "before": "x", "after": "Hello.",
                                         "fact: before": False, "fact: after": True}]


def test_report_to_tensorboard_logs_into_the_run_folder(tiny_params, jsonl, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [{"text": f"<human>: Say {w}.\n<bot>: Pip here! {w}."} for w in ("red", "blue", "green", "cat", "dog", "sun")]
    run_dir = tiny_params["run_dir"]
    params = {**tiny_params, "report_to": "tensorboard", "dataset": str(jsonl(rows))}
    rundir.resolve(run_dir)
    prepared = data.prepare(model.load_tokenizer(params["model_name"]), **pick(params, data.prepare))
    storage.save_split(run_dir, *data.split(prepared.rows, 0.34, seed=1))
    session = train.setup(params)
    stats = train.run(session.trainer, params)
    logs = rundir.resolve(run_dir) / "tensorboard"
    assert f"TensorBoard logs: {logs}" in capsys.readouterr().out
    events = EventAccumulator(str(logs))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == stats["train_steps"] == 3
    assert losses[-1] == pytest.approx(stats["final_step_loss"], rel=1e-5)
    assert not list((rundir.resolve(run_dir) / "checkpoints").glob("runs"))  # not transformers' default place
