"""Step 6: did it get better? The base model and the fine-tuned one, on the same held-out rows.

The adapter from step 5 is put on top of a freshly loaded base model with peft; inside
`model.disable_adapter()` the very same weights answer as the base model, so both are measured in
one process with one copy of the weights.
"""
from __future__ import annotations

import math
from pathlib import Path

from helpers import data, generate, rundir
from helpers import model as models


def adapter_dir(run_dir) -> Path:
    folder = Path(run_dir) / "adapter"
    if not (folder / "adapter_config.json").exists():
        raise FileNotFoundError(f"No adapter in {folder}: run 05_train_and_save.ipynb with this run_dir first.")
    return folder


def load_finetuned(params: dict):
    """(model with the run's adapter, tokenizer, LoadInfo). `with model.disable_adapter():` is the base."""
    from peft import PeftModel

    folder = adapter_dir(params["run_dir"])
    model, tokenizer, info = models.load({**params, "run_dir": None})  # don't overwrite 01's record
    model = PeftModel.from_pretrained(model, str(folder))
    model.eval()
    return model, tokenizer, info


def mean_token_loss(model, dataset, batch_size: int) -> float:
    """Mean negative log-likelihood per predicted token (labels of -100 left out), weighted by tokens:
    every token counts once, whatever batch it falls in."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start:start + batch_size]
            width = max(len(ids) for ids in rows["input_ids"])
            ids = torch.zeros(len(rows["input_ids"]), width, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for i, (row_ids, row_labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
                ids[i, :len(row_ids)] = torch.tensor(row_ids)
                labels[i, :len(row_labels)] = torch.tensor(row_labels)
                mask[i, :len(row_ids)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            target = labels[:, 1:].to(device)
            total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


def compare_losses(model, tokenizer, held_out: list[dict], params: dict) -> dict:
    """Held-out loss and perplexity of the base model and of the fine-tuned one."""
    if not held_out:
        raise ValueError("No held-out rows: set eval_fraction > 0 in 03_dataset to evaluate.")
    dataset = data.training_dataset(held_out, tokenizer, params["max_seq_length"],
                                    params["train_on_responses_only"], "eval")
    with model.disable_adapter():
        base = mean_token_loss(model, dataset, params["per_device_eval_batch_size"])
    tuned = mean_token_loss(model, dataset, params["per_device_eval_batch_size"])
    return {"eval_loss_base": base, "eval_loss_finetuned": tuned,
            "perplexity_base": math.exp(base), "perplexity_finetuned": math.exp(tuned)}


def loss_table(result: dict):
    import pandas as pd

    return pd.DataFrame({"held-out loss (nats/token)": [result["eval_loss_base"], result["eval_loss_finetuned"]],
                         "perplexity": [result["perplexity_base"], result["perplexity_finetuned"]]},
                        index=["base model", "fine-tuned"]).round(3)


def side_by_side(model, tokenizer, held_out: list[dict], n: int, max_new_tokens: int, backend: str, seed: int):
    """Reference, base answer and fine-tuned answer for n held-out prompts (greedy, seeded)."""
    import pandas as pd
    import torch

    prompts = data.held_out_prompts(held_out, tokenizer, n)
    texts = [p for _, p, _ in prompts]
    torch.manual_seed(seed)  # greedy decoding needs no randomness; the seed pins anything that might
    with model.disable_adapter():
        base = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    tuned = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    return pd.DataFrame({"prompt": [q for q, _, _ in prompts], "reference": [r for _, _, r in prompts],
                         "base model": base, "fine-tuned": tuned})


def save(run_dir, result: dict, table) -> Path:
    """evaluation.csv (the side-by-side answers) and the losses in metrics.json."""
    path = Path(run_dir) / "evaluation.csv"
    tmp = path.with_name(".evaluation.csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    rundir.update_metrics(Path(run_dir), **result)
    return path
