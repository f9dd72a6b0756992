"""Greedy answers from the model, for the before/after comparison; the rules every prompt follows.

A prompt is tokenized by the same rule as a training row (`tokenizing.encode`: BOS added where the tokenizer
adds one and the text lacks it), and generation stops at end-of-sequence *and* at the chat template's
end-of-turn token, which differ for many models (Llama 3.1 ends a turn with `<|eot_id|>`, not its
`<|end_of_text|>`).
"""
from __future__ import annotations

import torch

from helpers.data import formats
from helpers.data.tokenizing import encode


HUMAN_TAG = "<human>:"


def prompt_batch(tokenizer, prompts: list[str], device):
    """input_ids + attention_mask of `prompts`, left-padded (generation continues at the right edge)."""
    ids = [row for row, _ in encode(tokenizer, prompts)]
    width = max(len(r) for r in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in ids], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


def stop_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: EOS (the tokenizer's and the model's generation config's) and the
    token the chat template closes an assistant turn with."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    turn_end = formats.end_of_turn_token(tokenizer)
    if turn_end is not None:
        ids.add(tokenizer.convert_tokens_to_ids(turn_end))
    return sorted(i for i in ids if i is not None)


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int, backend: str = "hf") -> list[str]:
    """Greedy (deterministic) continuations of `prompts`, batched, cut where the model starts a new
    `<human>:` turn on its own."""
    if not prompts:
        return []
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    was_training = model.training
    model.eval()
    try:
        batch = prompt_batch(tokenizer, prompts, model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(tokenizer, model))
    finally:
        if backend == "unsloth":
            FastLanguageModel.for_training(model)
        model.train(was_training)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(HUMAN_TAG)[0].strip() for t in texts]


def chat_prompt(tokenizer, question: str) -> str:
    """A one-question conversation rendered with the tokenizer's chat template, ready for the answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
