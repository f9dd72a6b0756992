"""What 03 shows of the prepared data (the report, problem rows, an example, the token lengths, notes
on the system message and the split), and the held-out prompts that 05 and 06 answer."""
from __future__ import annotations

import re
from collections import Counter

from helpers.machinery import formats
from helpers.machinery.tokenizing import CHARS_PER_TOKEN, encode


SHOWN_PROBLEMS = 50


def report_table(report):
    import pandas as pd

    rows = [("source", report.source), ("format", f"{report.format} ({report.format_reason})"),
            ("rendered with", report.template), ("rows read", report.rows_read), ("rows kept", report.kept)]
    rows += [(f"dropped: {reason}", n) for reason, n in report.dropped.items()]
    rows += [(f"truncated to max_seq_length={report.max_seq_length}", report.truncated)]
    if report.cut_before_tokenizing:
        rows += [(f"of which cut to {CHARS_PER_TOKEN} characters a token before tokenizing", report.cut_before_tokenizing)]
    rows += [(f"fixed: {what}", n) for what, n in report.fixes.items()]
    rows += [("warning", text) for text in report.warnings]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def problems_table(report, n: int = 8):
    from helpers.machinery.tables import whole

    shown = report.problems[:n]
    return whole(shown, columns=["where", "reason", "detail"]) if shown else "No bad rows."


def report_lines(report: dict) -> list[str]:
    """The report as plain lines, for the runner's console output (from data_report.json)."""
    lines = [f"data: {report['source']} ({report.get('format')}): read {report['rows_read']}, "
             f"kept {report['kept']}, truncated {report['truncated']}"]
    if report.get("cut_before_tokenizing"):
        lines += [f"  cut before tokenizing {report['cut_before_tokenizing']}: over {CHARS_PER_TOKEN} characters a token"]
    lines += [f"  dropped {n}: {reason}" for reason, n in report.get("dropped", {}).items()]
    lines += [f"  fixed {n}: {what}" for what, n in report.get("fixes", {}).items()]
    lines += [f"  warning: {text}" for text in report.get("warnings", [])]
    lines += [f"  {p['where']}: {p['reason']} ({p['detail']})" for p in report.get("problems", [])[:5]]
    return lines


def example(row: dict, tokenizer=None, mark_answers: bool = True, width: int = 1200) -> str:
    """One prepared row as the model sees it; answers (what train_on_responses_only keeps in the loss)
    wrapped in [[ ]] (found again with `tokenizer` where 03 did not need them)."""
    text, out, pos = row["text"], [], 0
    spans = row.get("spans")
    if spans is None and mark_answers and row.get("messages") and tokenizer is not None:
        _, spans = formats.render(tokenizer, row["messages"])
        spans = [(s, min(e, len(text))) for s, e in spans if s < len(text)]  # the row may be truncated
    for s, e in spans if mark_answers and row.get("messages") else []:
        out += [text[pos:s], "[[", text[s:e], "]]"]
        pos = e
    shown = "".join(out) + text[pos:]
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def token_lengths(tokenizer, rows) -> list[int]:
    return [len(ids) for ids, _ in encode(tokenizer, [r["text"] for r in rows])]


def length_stats(lengths: list[int], max_seq_length: int):
    import numpy as np
    import pandas as pd

    arr = np.asarray(lengths)
    rows = [("rows", len(arr)), ("tokens in all", int(arr.sum())), ("median tokens", float(np.median(arr))),
            ("longest", int(arr.max())), (f"longer than max_seq_length={max_seq_length}", int((arr > max_seq_length).sum()))]
    # formatted here: a column mixing counts would otherwise show them all as floats
    return pd.DataFrame([(k, f"{v:g}" if isinstance(v, float) else f"{v:,}") for k, v in rows],
                        columns=["what", "value"]).set_index("what")


def plot_lengths(lengths: list[int], max_seq_length: int, path=None):
    from helpers.machinery import plots

    fig, ax = plots.new_figure()
    over = sum(n > max_seq_length for n in lengths)
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#2563eb")
    ax.set_title(f"{over} of {len(lengths):,} rows longer than max_seq_length = {max_seq_length}", fontsize=10)
    if max(lengths) < max_seq_length / 4:  # the limit is far off the bars: say so rather than squash them
        ax.set_xlim(0, max(lengths) * 1.3)
        ax.annotate(f"max_seq_length = {max_seq_length}\nfurther right →", xy=(0.99, 0.97),
                    xycoords="axes fraction", ha="right", va="top", color="#dc2626")
    else:
        ax.axvline(max_seq_length, color="#dc2626", linestyle="--")
        ax.annotate(" max_seq_length", xy=(max_seq_length, 0.97), xycoords=("data", "axes fraction"),
                    va="top", color="#dc2626")
    ax.set_xlabel("tokens per row (before truncation)")
    ax.set_ylabel("rows")
    return plots.finish(fig, path)


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


def held_out_prompts(held_out: list[dict], tokenizer, n: int) -> list[tuple[str, str, str]]:
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
    from helpers.machinery.tables import whole

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


def batch_table(batch, tokenizer, row: int, around: int, width: int = 5):
    """Positions `around - width` to `around + width` of one row of a collated batch: token, input id,
    attention mask and label (-100: left out of the loss), a column per position."""
    import pandas as pd

    cut = slice(max(0, around - width), around + width)
    ids = batch["input_ids"][row][cut].tolist()
    table = pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(ids), "input_ids": ids,
                          "attention_mask": batch["attention_mask"][row][cut].tolist(),
                          "labels": batch["labels"][row][cut].tolist()},
                         index=pd.Index(range(cut.start, cut.start + len(ids)), name="position"))
    return table.T


def system_note(tokenizer, chosen: str):
    """What system message the rows got with `system_message` = `chosen`, in a sentence (the template
    may add one nobody asked for)."""
    from helpers.machinery.tables import Sentences

    default = formats.template_system(tokenizer)
    if chosen == "template":
        if default is None:
            return Sentences("The chat template adds no system message: rows without one have none "
                             "(`system_message = 'template'`).")
        return Sentences(f"The chat template wrote this **system message into every row**: \"{default}\" "
                         f"(`system_message = 'template'`). The data teaches a different persona, Pip, so the "
                         f"model is trained on a contradiction it must learn to ignore. Set `system_message` to "
                         f"`'none'` (an empty system turn) or to your own text, e.g. `'You are Pip, a cheerful "
                         f"assistant.'`, and every row, and the chat in step 8, gets that instead.")
    if chosen == "none":
        return Sentences("No system text (`system_message = 'none'`)"
                         + (": the template writes an empty system turn, since it would otherwise add its "
                            f"own (\"{default}\")." if default is not None else "."))
    return Sentences(f"Every row without its own system turn got this one: \"{chosen}\".")


def split_note(train: list, held_out: list, shared: int):
    """How the rows were split; `shared`: held-out rows with a question or answer also trained on."""
    from helpers.machinery.tables import Sentences

    total = len(train) + len(held_out)
    overlap = ("none of them shares a question or an answer with a training row" if not shared else
               f"**{shared} of them share a question or an answer with training rows**")
    return Sentences(f"**{len(train):,} rows to train on, {len(held_out):,} held out** "
                     f"({len(held_out) / total:.0%} of {total:,}; {overlap}), saved in the run folder's `data/`.")
