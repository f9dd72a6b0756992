"""What 03 shows of the prepared data (the report, problem rows, an example, the token lengths, notes
on the system message and the split), and the held-out prompts that 05 and 06 answer."""
from __future__ import annotations

from helpers.machinery import formats
from helpers.machinery.tokenizing import encode


SHOWN_PROBLEMS = 50


def report_table(report):
    import pandas as pd

    rows = [("source", report.source), ("format", f"{report.format} ({report.format_reason})"),
            ("rendered with", report.template), ("rows read", report.rows_read), ("rows kept", report.kept)]
    rows += [(f"dropped: {reason}", n) for reason, n in report.dropped.items()]
    rows += [(f"truncated to max_seq_length={report.max_seq_length}", report.truncated)]
    rows += [(f"fixed: {what}", n) for what, n in report.fixes.items()]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def problems_table(report, n: int = 8):
    from helpers.machinery.tables import whole

    shown = report.problems[:n]
    return whole(shown, columns=["where", "reason", "detail"]) if shown else "No bad rows."


def report_lines(report: dict) -> list[str]:
    """The report as plain lines, for the runner's console output (from data_report.json)."""
    lines = [f"data: {report['source']} ({report.get('format')}): read {report['rows_read']}, "
             f"kept {report['kept']}, truncated {report['truncated']}"]
    lines += [f"  dropped {n}: {reason}" for reason, n in report.get("dropped", {}).items()]
    lines += [f"  fixed {n}: {what}" for what, n in report.get("fixes", {}).items()]
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
    ax.axvline(max_seq_length, color="#dc2626", linestyle="--",
               label=f"max_seq_length = {max_seq_length} ({over} rows longer)")
    if max(lengths) < max_seq_length / 4:  # keep the bars readable when every row is far below the limit
        ax.set_xlim(0, max(lengths) * 1.3)
        ax.annotate(f"max_seq_length = {max_seq_length} →", xy=(0.98, 0.9), xycoords="axes fraction",
                    ha="right", color="#dc2626")
    ax.set_xlabel("tokens per row (before truncation)")
    ax.set_ylabel("rows")
    ax.legend(loc="center right")
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
    found = (prompt_and_reference(row, tokenizer) for row in held_out)
    return [p for p in found if p is not None][:n]


def answers_table(prompts: list[tuple[str, str, str]], answers: dict[str, list[str]]):
    """Question and reference of each held-out prompt, then one column per set of answers, shown whole."""
    from helpers.machinery.tables import whole

    return whole({"prompt": [q for q, _, _ in prompts], "reference": [r for _, _, r in prompts], **answers})


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


def split_note(train: list, held_out: list):
    from helpers.machinery.tables import Sentences

    total = len(train) + len(held_out)
    return Sentences(f"**{len(train):,} rows to train on, {len(held_out):,} held out** "
                     f"({len(held_out) / total:.0%} of {total:,}), saved in the run folder's `data/`.")
