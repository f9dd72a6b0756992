"""The held-out loss 05 and 06 report: the mean over answer tokens (every token where nothing is
masked), computed in batches of about the same token count, the logits a chunk at a time so that a
vocabulary of 128k never sits in memory for a whole batch; and step 6's comparison of the base model
with the fine-tuned one by it."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from helpers import rundir
from helpers.show import Sentences


# Logits are made this many positions at a time: a full 2048-token row of a 128k-word vocabulary would
# be 1 GiB of float32 logits per row at once.
LOGIT_CHUNK = 1024


TOKENS_PER_BATCH = 8192  # an evaluation batch holds at most this many positions (padding included)


def mean_token_loss(model, dataset, batch_size: int) -> float:
    """Mean negative log-likelihood per predicted token (labels of -100 left out), weighted by tokens:
    every token counts once, whatever batch it falls in. The one definition of held-out loss in the
    workbook (05 before and after training, 06, compare). Rows are batched by length (at most
    `batch_size` rows and TOKENS_PER_BATCH positions) and the output layer runs LOGIT_CHUNK positions
    at a time, so memory stays bounded on long rows and large vocabularies."""
    rows = sorted((dataset[i] for i in range(len(dataset))), key=lambda row: len(row["input_ids"]))
    total, count = 0.0, 0
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(rows, batch_size):
                ids, labels, mask = (t.to(device) for t in _pad(batch))
                hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                loss, n = _chunked_nll(head, hidden[:, :-1], labels[:, 1:])
                total, count = total + loss, count + n
    finally:
        model.train(was_training)
    return total / count


def _decoder_and_head(model):
    """The transformer body and the output layer of a causal LM (peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _batches(rows: list[dict], batch_size: int):
    """Consecutive rows (sorted by length) in batches of at most `batch_size` rows and TOKENS_PER_BATCH
    positions, padding included."""
    batch, width = [], 0
    for row in rows:
        n = len(row["input_ids"])
        if batch and (len(batch) == batch_size or max(width, n) * (len(batch) + 1) > TOKENS_PER_BATCH):
            yield batch
            batch, width = [], 0
        batch.append(row)
        width = max(width, n)
    if batch:
        yield batch


def _pad(batch: list[dict]):
    width = max(len(r["input_ids"]) for r in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        ids[i, :n] = torch.as_tensor(row["input_ids"])
        labels[i, :n] = torch.as_tensor(row.get("labels") or row["input_ids"])
        mask[i, :n] = 1
    return ids, labels, mask


def _chunked_nll(head, hidden, labels) -> tuple[float, int]:
    """Summed NLL and token count of `labels` (-100 ignored), LOGIT_CHUNK positions of logits at a time."""
    keep = labels != -100
    hidden, labels = hidden[keep], labels[keep]  # only positions that count need logits
    total = 0.0
    for start in range(0, len(labels), LOGIT_CHUNK):
        logits = head(hidden[start:start + LOGIT_CHUNK]).float()
        total += F.cross_entropy(logits, labels[start:start + LOGIT_CHUNK], reduction="sum").item()
    return total, len(labels)


def eval_rows(held_out, max_eval_rows: int):
    """The held-out rows that are measured: the first `max_eval_rows` (the split is already shuffled)."""
    return held_out.select(range(min(len(held_out), max_eval_rows)))


def held_out_loss(model, held_out, max_eval_rows: int, batch_size: int) -> float | None:
    """Token-weighted held-out loss of `model` on the first `max_eval_rows` held-out rows, `batch_size`
    rows a pass (None when nothing was held out)."""
    if not len(held_out):
        return None
    from helpers.data.split import for_training

    return mean_token_loss(model, for_training(eval_rows(held_out, max_eval_rows), None), batch_size)


LOSS_KEYS = ("eval_loss_base", "eval_loss_finetuned", "perplexity_base", "perplexity_finetuned", "eval_rows_measured")


def loss_record(base: float | None, finetuned: float | None, rows: int) -> dict:
    """The metrics of one run's held-out losses, as 05 measures them and 06 shows them."""
    if base is None or finetuned is None:
        return {}
    return {"eval_loss_base": base, "eval_loss_finetuned": finetuned, "perplexity_base": math.exp(base),
            "perplexity_finetuned": math.exp(finetuned), "eval_rows_measured": rows}


def compare(model, held_out, *, run_dir, max_eval_rows: int, per_device_eval_batch_size: int) -> dict:
    """Held-out loss and perplexity of the base model and of the fine-tuned one: what 05 measured (read
    from run_dir/metrics.json) where it did, for the adapter saved now, else measured here with the
    adapter switched off and on, on the first `max_eval_rows` rows."""
    if not len(held_out):
        raise ValueError("No held-out rows: set eval_fraction > 0 in 03_dataset to evaluate.")
    metrics = rundir.read_json(Path(run_dir) / "metrics.json", default={})
    if "eval_loss_finetuned" in metrics and metrics.get("adapter_saved_at") == rundir.adapter_stamp(run_dir):
        return {k: metrics[k] for k in LOSS_KEYS} | {"measured_in": "05_train_and_save"}
    with model.disable_adapter():
        base = held_out_loss(model, held_out, max_eval_rows, per_device_eval_batch_size)
    tuned = held_out_loss(model, held_out, max_eval_rows, per_device_eval_batch_size)
    return loss_record(base, tuned, len(eval_rows(held_out, max_eval_rows))) | {"measured_in": "06_evaluate"}


def loss_table(result: dict):
    return pd.DataFrame({"held-out loss (nats/token)": [result["eval_loss_base"], result["eval_loss_finetuned"]],
                         "perplexity": [result["perplexity_base"], result["perplexity_finetuned"]]},
                        index=["base model", "fine-tuned"]).round(3)


def explain(result: dict, train_on_responses_only: bool):
    """What the two losses mean, in sentences (which tokens counted, what the drop says)."""
    base, tuned = result["eval_loss_base"], result["eval_loss_finetuned"]
    drop = "drop" if tuned < base else "rise"
    text = (f"On the held-out rows, the loss went from **{base:.3f} to {tuned:.3f}** nats per token "
            f"({tuned / base:.2f}x). A loss of {tuned:.2f} means the model gives the right next token a "
            f"probability of e^-{tuned:.2f} = {math.exp(-tuned):.0%} on average (geometric mean), against "
            f"{math.exp(-base):.1%} before. Perplexity e^loss says the same as a count: the base model was as "
            f"unsure as if choosing among {math.exp(base):.0f} equally likely tokens, the fine-tuned one among "
            f"{math.exp(tuned):.1f}.")
    if tuned >= base:
        text += " **Training made the model worse** on rows it did not train on."
    if train_on_responses_only:
        text += (f"\n\nOnly the answers' tokens counted (`train_on_responses_only` is on): the {drop} is the "
                 f"model predicting the answers {'better' if tuned < base else 'worse'}.")
    else:
        text += ("\n\n**Every token counted** here, not only the answers (`train_on_responses_only` is off, "
                 f"as in the post): the system message and the questions too. Part of the {drop} is the model "
                 "learning text that repeats in every row (the template's system line, \"Pip here!\", "
                 "\"Happy to help!\"), which is easy. Set `train_on_responses_only = True` in 03 to measure "
                 "(and train) the answers alone.")
    return Sentences(text)
