"""Each dataset format trains end to end on CPU with the smoke config: the notebooks' own cells, 01-05, run
in this process (the runner's kernels are tested in test_runner.py)."""
import json
import math

import pytest

from conftest import notebooks
from helpers import rundir
from helpers.data.formats import parse_oig
from tools.config import load as load_config

REPO = rundir.REPO_ROOT


def pip_rows_as(fmt: str, n: int = 80) -> list[dict]:
    """The bundled Pip rows rewritten in another dataset format."""
    rows = [json.loads(line) for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()]
    if fmt == "alpaca":  # one exchange per row, no two alike
        pairs = {}
        for conv in (parse_oig(r["text"]) for r in rows):
            pairs.update({(q["content"], a["content"]): None for q, a in zip(conv[::2], conv[1::2])})
        return [{"instruction": q, "input": "", "output": a} for q, a in list(pairs)[:n]]
    rows = rows[:n]
    convs = [parse_oig(r["text"]) for r in rows]
    if fmt == "conversations":
        return [{"messages": c} for c in convs]
    if fmt == "sharegpt":
        who = {"user": "human", "assistant": "gpt"}
        return [{"conversations": [{"from": who[m["role"]], "value": m["content"]} for m in c]} for c in convs]
    return rows  # oig, and plain text when named


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["oig", "alpaca", "conversations", "sharegpt", "text"])
def test_each_format_trains_end_to_end(fmt, tmp_path, bundled_dir):
    path = tmp_path / f"pip_{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pip_rows_as(fmt)))
    values = {**load_config(REPO / "configs" / "smoke.yaml"), "dataset": str(path),
              "run_dir": str(tmp_path / "run"), "dataset_format": "text" if fmt == "text" else "auto",
              "train_on_responses_only": fmt != "text"}
    run = notebooks(values, "01", "02", "03", "04", "05")
    report = run["03"]["report"]
    assert report.format == {"sharegpt": "conversations"}.get(fmt, fmt) and report.kept == 80
    trainer = run["05"]["trainer"]
    batch = next(iter(trainer.get_train_dataloader()))  # what the model is trained on
    assert (-100 in batch["labels"][batch["attention_mask"].bool()]) == (fmt != "text")  # prompts masked
    stats = run["05"]["m"].stats
    assert stats["train_steps"] == 4 and math.isfinite(stats["train_loss"])
    assert run["05"]["eval_loss_after"] < run["05"]["eval_loss_before"]
    assert len(run["05"]["answers_after"]) == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
