"""Each dataset format trains end to end on CPU with the smoke config: prepared by the helpers of
03_dataset, trained, evaluated and saved by those of 05_train_and_save (the runner's own chain is
tested in test_runner.py; here the notebooks' kernels are skipped to keep the suite short)."""
import json
import math

import pytest

from helpers import data, params, train
from helpers.machinery import data_report, rundir, storage
from helpers import model as models
from helpers.machinery.formats import parse_oig

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
    P = {**params.DEFAULTS, **params.load_config(REPO / "configs" / "smoke.yaml"), "dataset": str(path),
         "run_dir": str(tmp_path / "run"), "dataset_format": "text" if fmt == "text" else "auto",
         "train_on_responses_only": fmt != "text"}
    params.check(P)
    rundir.resolve(P["run_dir"])

    prepared = data.prepare(models.load_tokenizer(P["model_name"]), **params.pick(P, data.prepare))
    assert prepared.report.format == {"sharegpt": "conversations"}.get(fmt, fmt)
    assert prepared.report.kept == 80
    storage.save_split(P["run_dir"], *data.split(prepared.rows, P["eval_fraction"], P["seed"]))

    session = train.setup(P)
    batch = next(iter(session.trainer.get_train_dataloader()))  # what the model is trained on
    assert (-100 in batch["labels"][batch["attention_mask"].bool()]) == (fmt != "text")  # prompts masked
    before = train.eval_loss(session)
    stats = train.run(session.trainer)
    after = train.eval_loss(session)
    assert stats["train_steps"] == 4 and math.isfinite(stats["train_loss"])
    assert after < before
    answers = session.answer([p for _, p, _ in data_report.held_out_prompts(session.held_out, session.tokenizer, 2)], 8)
    assert len(answers) == 2
    adapter = train.save_adapter(session.model, session.tokenizer, P["run_dir"])
    assert (adapter / "adapter_model.safetensors").exists()
