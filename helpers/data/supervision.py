"""What the loss will teach, checked before any training (step 3's supervision audit): per row the share
of its tokens that carry loss, the rows whose answer `max_seq_length` cuts before its end-of-turn marker
(the model would learn answers that never stop), and whether the tokens generation stops on are in the
loss at all. rows.Tokenizer marks each row (`loss_tokens`, `end_cut`, `stop_in_loss`) and drops a row
where no token carries loss; this module sums the marks up for 03's table and data_report.json.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.data import formats
from helpers.show import Sentences

NAMED = 10  # rows named in the report, of each kind


def stop_ids(tokenizer) -> dict[int, str]:
    """The tokens an answer ends with, which generation stops on: EOS and the chat template's end-of-turn
    marker (helpers.evaluation.generate adds the model's own configured EOS at generation time)."""
    tokens = [tokenizer.eos_token, formats.end_of_turn_token(tokenizer)]
    found = {tokenizer.convert_tokens_to_ids(t): t for t in tokens if t}
    return {i: t for i, t in found.items() if i is not None and i != tokenizer.unk_token_id}


def answer_cut(text: str, spans, cut: int) -> bool:
    """Whether cutting `text` at character `cut` falls inside an answer span before its end-of-turn
    marker (what follows the marker, a newline, may go)."""
    return any(s < cut < s + len(text[s:e].rstrip()) for s, e in spans)


def audit(usable, max_seq_length: int, stops: dict[int, str], responses_only: bool) -> dict:
    """The audit of the rows that train (03's `usable`), as data_report.json keeps it."""
    cols = usable.select_columns(["where", "length", "loss_tokens", "end_cut", "stop_in_loss"]).to_dict()
    predicted = np.maximum(np.minimum(np.asarray(cols["length"]), max_seq_length) - 1, 1)  # the first is given
    share = np.asarray(cols["loss_tokens"]) / predicted
    cut = [w for w, c in zip(cols["where"], cols["end_cut"]) if c]
    found = {
        "rows": len(share), "responses_only": responses_only,
        "loss_share_of_tokens": float(np.sum(cols["loss_tokens"]) / predicted.sum()) if len(share) else 0.0,
        "loss_share_per_row": {k: float(f(share)) if len(share) else 0.0
                               for k, f in (("lowest", np.min), ("median", np.median), ("highest", np.max))},
        "answers_cut": len(cut), "answers_cut_rows": cut[:NAMED],
        "stop_tokens": sorted(stops.values()), "rows_with_stop_in_loss": int(np.sum(cols["stop_in_loss"])),
        "longest_row": int(max(cols["length"], default=0)),
    }
    found["warnings"] = warnings(found, max_seq_length)
    return found


def warnings(found: dict, max_seq_length: int) -> list[str]:
    out = []
    if found["answers_cut"]:
        out.append(f"{found['answers_cut']} row(s) lose the end of an answer at max_seq_length {max_seq_length} "
                   f"(first: {', '.join(found['answers_cut_rows'][:3])}): the model learns answers that do not "
                   f"stop. Raise max_seq_length to {found['longest_row']} (the longest row), or set "
                   f"on_long_rows = 'drop'")
    if not found["stop_tokens"]:
        out.append("the tokenizer has no end-of-sequence or end-of-turn token: generation will only stop at "
                   "max_new_tokens")
    elif found["rows"] and not found["rows_with_stop_in_loss"]:
        out.append(f"no row has its stop token ({', '.join(found['stop_tokens'])}) in the loss: the model is never "
                   f"taught to end an answer")
    return out


def table(found: dict):
    """The audit as 03 shows it: a short table, then its warnings in sentences."""
    per_row = found["loss_share_per_row"]
    which = "the answers' tokens (train_on_responses_only)" if found["responses_only"] else "every token"
    rows = [("rows that train", f"{found['rows']:,}"),
            ("tokens that carry loss", f"{found['loss_share_of_tokens']:.0%}: {which}"),
            ("share per row", f"lowest {per_row['lowest']:.0%}, median {per_row['median']:.0%}, "
                              f"highest {per_row['highest']:.0%}"),
            ("answers cut before their end of turn", f"{found['answers_cut']:,}"),
            (f"stop token ({', '.join(found['stop_tokens']) or 'none'}) in the loss",
             f"{found['rows_with_stop_in_loss']:,} of {found['rows']:,} rows")]
    shown = pd.DataFrame(rows, columns=["what", "value"]).set_index("what")
    if not found["warnings"]:
        return shown
    from IPython.display import display

    display(shown)
    return Sentences("**Before training:** " + "; ".join(found["warnings"]) + ".")
