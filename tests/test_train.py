"""Step 5 on the tiny Llama: 05's own cells load what 01-04 left in the run folder, train it, measure it,
answer before and after, and save the adapter."""
import json
import math
from pathlib import Path

import pytest

from conftest import notebooks
from helpers.training import loop, results


def test_05_trains_what_02_to_04_built_evaluates_answers_and_saves(tiny_values):
    import torch

    run = notebooks(tiny_values, "01", "02", "03", "04", "05")["05"]
    trainer, stats = run["trainer"], run["m"].stats
    assert run["results"].summary(run["model"], run["base"], run["args"], run["train"], run["held_out"], run["gc"]) \
        .loc["training rows", "value"] == 9
    assert stats["train_steps"] == 8
    assert stats["train_tokens"] > 8 * 2 * 5  # batches of 2 rows of well over 5 tokens
    # our count (unsloth logs none) agrees with TRL's own count where TRL has one
    assert stats["train_tokens"] == max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    assert math.isfinite(stats["tokens_per_s"]) and stats["tokens_per_s"] > 0 and stats["peak_memory_gib"] > 0
    assert run["eval_loss_after"] < run["eval_loss_before"]  # a random tiny model learns the persona quickly
    steps, losses = loop.loss_history(trainer.state.log_history)
    assert steps == list(range(1, 9)) and all(math.isfinite(v) for v in losses)
    assert len(run["answers_after"]) == 2 and not any("<human>:" in a for a in run["answers_after"])
    # the trainer trained what 02 saved and 04 built: the same LoRA config, the same SFTConfig
    folder = Path(tiny_values["run_dir"])
    assert json.loads((folder / "lora" / "adapter_config.json").read_text())["r"] == run["model"].peft_config["default"].r
    assert trainer.args.to_dict() == run["args"].to_dict() and trainer.args.max_steps == 8
    saved = {p.name for p in (folder / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= saved
    assert not any(p.name.endswith(".partial") for p in folder.iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["eval_loss_finetuned"] == run["eval_loss_after"] and metrics["train_steps"] == 8
    with torch.no_grad():
        assert any(p.abs().sum() > 0 for n, p in run["model"].named_parameters() if "lora_B" in n)


def test_before_after_table():
    table = results.before_after_table([("Hi?", "<human>: Hi?\n<bot>:", "Hello.")], ["x"], ["Hello."], common=set())
    assert table.to_dict("records") == [{"prompt": "Hi?", "reference": "Hello.", "before": "x", "after": "Hello.",
                                         "fact: before": False, "fact: after": True}]


def test_report_to_tensorboard_logs_into_the_run_folder(tiny_values, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {**tiny_values, "report_to": "tensorboard", "max_steps": 3}
    stats = notebooks(values, "01", "02", "03", "04", "05")["05"]["m"].stats
    run_dir = Path(values["run_dir"])
    logs = run_dir / "tensorboard"
    assert f"TensorBoard logs: {logs}" in capsys.readouterr().out
    events = EventAccumulator(str(logs))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == stats["train_steps"] == 3
    assert losses[-1] == pytest.approx(stats["final_step_loss"], rel=1e-5)
    held_out = [(e.step, e.value) for e in events.Scalars("eval/loss")]  # the held-out loss while training
    recorded = json.loads((run_dir / "metrics.json").read_text())["eval_history"]
    assert [s for s, _ in held_out] == [s for s, _ in recorded] == [1, 2, 3]
    assert [v for _, v in held_out] == pytest.approx([v for _, v in recorded], rel=1e-6)
    assert not list((run_dir / "checkpoints").glob("runs"))  # not transformers' default place
