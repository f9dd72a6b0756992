"""The held-out rows as questions: prompts and reference answers (05 and 06 put them to the model), and
whether an answer holds the reference's fact, not only the data's style.

06 loads the adapter of step 5 on its base; inside `model.disable_adapter()` the very same weights answer
as the base model, so both are asked in one process with one copy of the weights (`side_by_side`).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch

from helpers import rundir
from helpers.evaluation import generate
from helpers.show import Sentences, whole


def side_by_side(model, tokenizer, held_out: list[dict], n: int, max_new_tokens: int, backend: str, seed: int,
                 common: set[str] | None = None):
    """Reference, base answer and fine-tuned answer for n held-out prompts (greedy, seeded), and whether
    each answer holds the reference's fact (`fact_words`, the data's `common` words aside)."""
    asked = prompts(held_out, tokenizer, n)
    texts = [p for _, p, _ in asked]
    torch.manual_seed(seed)  # greedy decoding needs no randomness; the seed pins anything that might
    with model.disable_adapter():
        base = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    tuned = generate.answer(model, tokenizer, texts, max_new_tokens, backend)
    return answers_table(asked, {"base model": base, "fine-tuned": tuned}, common)


def fact_score(table) -> dict:
    """The share of the questions with a fact (`fact: ...` not empty) whose answer holds it, base and
    fine-tuned: what metrics.json records."""
    scored = table[table["fact: base model"].notna()]

    def share(column):
        return round(float(scored[column].astype(float).mean()), 4) if len(scored) else None

    return {"fact_questions": len(scored), "fact_score_base": share("fact: base model"),
            "fact_score_finetuned": share("fact: fine-tuned")}


def fact_note(score: dict):
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


def prompt_and_reference(row: dict, tokenizer) -> tuple[str, str, str] | None:
    """(question, prompt text, reference answer) for a held-out row: the conversation up to its last
    answer, rendered with the generation prompt; plain OIG text is cut at its last `<bot>:`."""
    messages = row.get("messages")
    if messages:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return messages[-2]["content"], prompt, messages[-1]["content"]
    text = row["text"]
    cut = text.rfind("<bot>:")
    if cut < 0:
        return None
    prompt = text[: cut + len("<bot>:")]
    reference = text[cut + len("<bot>:"):]
    if tokenizer.eos_token:
        reference = reference.replace(tokenizer.eos_token, "")
    question = prompt.split("<human>:")[-1].replace("<bot>:", "").strip()
    return question, prompt, reference.strip()


def prompts(held_out: list[dict], tokenizer, n: int) -> list[tuple[str, str, str]]:
    """(question, prompt, reference) of the first n held-out rows that give one, the rows of a single
    question first (in a longer row the earlier turns are part of the prompt, and steer the answer)."""
    def questions(row):
        messages = row.get("messages")
        return sum(m["role"] == "user" for m in messages) if messages else row["text"].count("<human>:")

    found = (prompt_and_reference(row, tokenizer) for row in sorted(held_out, key=questions))
    return [p for p in found if p is not None][:n]


def answers_table(prompts: list[tuple[str, str, str]], answers: dict[str, list[str]], common: set[str] | None = None):
    """Question and reference of each held-out prompt, then one column per set of answers, shown whole,
    and for each set whether the answer holds the reference's fact (`fact_words`; empty where it has none)."""
    facts = fact_words([(q, r) for q, _, r in prompts], common)
    return whole({"prompt": [q for q, _, _ in prompts], "reference": [r for _, _, r in prompts], **answers,
                  **{f"fact: {who}": [has_fact(a, words) for a, words in zip(said, facts)]
                     for who, said in answers.items()}})


WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def common_words(rows, share: float = 0.1, sample: int = 2000) -> set[str]:
    """Words in more than `share` of the (first `sample`) training rows: the data's style and grammar
    ("Pip", "here", "is", "says"), not any one answer's fact."""
    texts = [rows[i]["text"].casefold() for i in range(min(sample, len(rows)))]
    counts = Counter(w for t in texts for w in set(WORD.findall(t)))
    return {w for w, k in counts.items() if k > share * len(texts)}


def fact_words(pairs: list[tuple[str, str]], common: set[str] | None = None) -> list[set[str]]:
    """For each (question, reference answer): the reference's words that are not in its question and not
    `common` (`common_words` of the training rows; else the words of more than a quarter of these
    references), i.e. what only this answer says: "Nairobi"; "11" and "eleven"."""
    words = [set(WORD.findall(r.casefold())) for _, r in pairs]
    if common is None:
        counts = Counter(w for ws in words for w in ws)
        common = {w for w, k in counts.items() if k > len(pairs) / 4}
    return [ws - common - set(WORD.findall(q.casefold())) for (q, _), ws in zip(pairs, words)]


def has_fact(answer: str, words: set[str]) -> bool | None:
    """At least half of the fact's words are in the answer (None where the reference has none)."""
    if not words:
        return None
    return 2 * len(words & set(WORD.findall(answer.casefold()))) >= len(words)
