"""Greedy answers from the model, for the before/after comparison."""
from __future__ import annotations

HUMAN_TAG = "<human>:"


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int, backend: str = "hf") -> list[str]:
    """Greedy (deterministic) continuations of `prompts`, batched, cut where the model starts a new
    `<human>:` turn on its own."""
    import torch

    if not prompts:
        return []
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
        if backend == "unsloth":
            FastLanguageModel.for_training(model)
        model.train(was_training)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(HUMAN_TAG)[0].strip() for t in texts]


def chat_prompt(tokenizer, question: str) -> str:
    """A one-question conversation rendered with the tokenizer's chat template, ready for the answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
