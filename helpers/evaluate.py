"""Step 6: did it get better? The base model and the fine-tuned one, on the same held-out rows.

The adapter from step 5 is put on top of a freshly loaded base model with peft; inside
`model.disable_adapter()` the very same weights answer as the base model, so both are measured in
one process with one copy of the weights.
"""
from __future__ import annotations

import math
from pathlib import Path

from helpers import generate
from helpers.machinery import data_report, rundir
from helpers.machinery.token_loss import LOSS_KEYS, eval_rows, held_out_loss, loss_record
from helpers.machinery.rundir import adapter_dir, adapter_stamp
from helpers import model as models


def load_finetuned(params: dict):
    """(model with the run's adapter, tokenizer, LoadInfo). `with model.disable_adapter():` is the base."""
    from peft import PeftModel

    folder = adapter_dir(params["run_dir"])
    model, tokenizer, info = models.load({**params, "run_dir": None})  # don't overwrite 01's record
    model = PeftModel.from_pretrained(model, str(folder))
    model.eval()
    return model, tokenizer, info


def compare_losses(model, held_out, *, run_dir, max_eval_rows: int, per_device_eval_batch_size: int) -> dict:
    """Held-out loss and perplexity of the base model and of the fine-tuned one: what 05 measured (read
    from run_dir/metrics.json) where it did, for the adapter saved now, else measured here with the
    adapter switched off and on, on the first `max_eval_rows` rows."""
    if not len(held_out):
        raise ValueError("No held-out rows: set eval_fraction > 0 in 03_dataset to evaluate.")
    metrics = rundir.read_json(Path(run_dir) / "metrics.json", default={})
    if "eval_loss_finetuned" in metrics and metrics.get("adapter_saved_at") == adapter_stamp(run_dir):
        return {k: metrics[k] for k in LOSS_KEYS} | {"measured_in": "05_train_and_save"}
    with model.disable_adapter():
        base = held_out_loss(model, held_out, max_eval_rows, per_device_eval_batch_size)
    tuned = held_out_loss(model, held_out, max_eval_rows, per_device_eval_batch_size)
    return loss_record(base, tuned, len(eval_rows(held_out, max_eval_rows))) | {"measured_in": "06_evaluate"}


def loss_table(result: dict):
    import pandas as pd

    return pd.DataFrame({"held-out loss (nats/token)": [result["eval_loss_base"], result["eval_loss_finetuned"]],
                         "perplexity": [result["perplexity_base"], result["perplexity_finetuned"]]},
                        index=["base model", "fine-tuned"]).round(3)


def explain(result: dict, train_on_responses_only: bool):
    """What the two losses mean, in sentences (which tokens counted, what the drop says)."""
    from helpers.machinery.tables import Sentences

    base, tuned = result["eval_loss_base"], result["eval_loss_finetuned"]
    text = (f"On the held-out rows, the loss went from **{base:.3f} to {tuned:.3f}** nats per token "
            f"({tuned / base:.2f}x). A loss of {tuned:.2f} means the model gives the right next token a "
            f"probability of e^-{tuned:.2f} = {math.exp(-tuned):.0%} on average (geometric mean), against "
            f"{math.exp(-base):.1%} before. Perplexity e^loss says the same as a count: the base model was as "
            f"unsure as if choosing among {math.exp(base):.0f} equally likely tokens, the fine-tuned one among "
            f"{math.exp(tuned):.1f}.")
    if train_on_responses_only:
        text += ("\n\nOnly the answers' tokens counted (`train_on_responses_only` is on): the drop is the "
                 "model predicting the answers better.")
    else:
        text += ("\n\n**Every token counted** here, not only the answers (`train_on_responses_only` is off, "
                 "as in the post): the system message and the questions too. Part of the drop is the model "
                 "learning text that repeats in every row (the template's system line, \"Pip here!\", "
                 "\"Happy to help!\"), which is easy. Set `train_on_responses_only = True` in 03 to measure "
                 "(and train) the answers alone.")
    return Sentences(text)


def side_by_side(model, tokenizer, held_out: list[dict], n: int, max_new_tokens: int, backend: str, seed: int,
                 common: set[str] | None = None):
    """Reference, base answer and fine-tuned answer for n held-out prompts (greedy, seeded), and whether
    each answer holds the reference's fact (`data_report.fact_words`, the data's `common` words aside)."""
    import torch

    prompts = data_report.held_out_prompts(held_out, tokenizer, n)
    texts = [p for _, p, _ in prompts]
    torch.manual_seed(seed)  # greedy decoding needs no randomness; the seed pins anything that might
    with model.disable_adapter():
        base = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    tuned = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    return data_report.answers_table(prompts, {"base model": base, "fine-tuned": tuned}, common)


def fact_score(table) -> dict:
    """The share of the questions with a fact (`fact: ...` not empty) whose answer holds it, base and
    fine-tuned: what metrics.json records."""
    scored = table[table["fact: base model"].notna()]

    def share(column):
        return round(float(scored[column].astype(float).mean()), 4) if len(scored) else None

    return {"fact_questions": len(scored), "fact_score_base": share("fact: base model"),
            "fact_score_finetuned": share("fact: fine-tuned")}


def fact_note(score: dict):
    from helpers.machinery.tables import Sentences

    n, base, tuned = score["fact_questions"], score["fact_score_base"], score["fact_score_finetuned"]
    if not n:
        return Sentences("No held-out question has a fact to check (set `num_fact_questions` above 0).")
    return Sentences(f"**The fact**, not the style: of {n} held-out questions, the base model's answer holds the "
                     f"words only the reference has (\"Nairobi\"; \"11\", \"eleven\") in **{base:.0%}** of them, "
                     f"the fine-tuned model's in **{tuned:.0%}**. No question or answer of these rows is in the "
                     f"training rows (step 3 split them apart), so a fact right here was not seen in training.")


def save(run_dir, result: dict, table) -> Path:
    """evaluation.csv (the side-by-side answers) and the losses in metrics.json."""
    path = Path(run_dir) / "evaluation.csv"
    tmp = path.with_name(".evaluation.csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    rundir.update_metrics(Path(run_dir), **result)
    return path
