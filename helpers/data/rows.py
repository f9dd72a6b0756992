"""The row functions of step 3, which 03 maps over the `Dataset` that `load_dataset` read.

- `Checker` (one row at a time): the row as chat messages (or plain text), or why it cannot be used:
  missing, empty or wrongly typed fields, turns that don't alternate, an exact duplicate of an earlier
  row. A row is cut to CHARS_PER_TOKEN characters a token of max_seq_length first, so a 100 MB row
  never reaches the tokenizer whole.
- `Tokenizer` (a batch at a time): each conversation rendered with the chat template and cut into
  token ids on every core, cut to max_seq_length (or dropped, `on_long_rows`), with loss labels where
  only the answers count (`train_on_responses_only`).

Every row keeps `where` (how a person finds it in the file) and `problem`/`detail` (None for a row that
trains), so 03's report counts each row's fate and `filter` keeps the usable ones.
"""
from __future__ import annotations

import hashlib
import json

from helpers.data import formats, supervision
from helpers.data.sources import DatasetError
from helpers.data.tokenizing import CHARS_PER_TOKEN, encode, no_cycle_collection
from helpers.model.loading import PLAIN_CHAT_TEMPLATE, ensure_chat_template

_MESSAGES = [{"role": "string", "content": "string"}]
_STATE = {"where": "string", "problem": "string", "detail": "string", "cut": "bool"}


def features(responses_only: bool | None = None):
    """The columns `Checker` (responses_only None) and `Tokenizer` give, with their types: token ids as
    int32 (half of what an inferred int64 takes at 210k rows)."""
    from datasets import Features, List, Value

    def typed(spec):
        if isinstance(spec, list):
            return List(typed(spec[0]))
        if isinstance(spec, dict):
            return {k: typed(v) for k, v in spec.items()}
        return Value(spec)

    columns = {"messages": _MESSAGES, "text": "string", **_STATE}
    if responses_only is not None:
        columns.update(input_ids=["int32"], length="int32", truncated="bool", loss_tokens="int32", end_cut="bool",
                       stop_in_loss="bool")
        if responses_only:
            columns.update(labels=["int32"], spans=[["int32"]])
    return Features(typed(columns))


class Checker:
    """Called with a batch and its indices by `Dataset.map(..., batched=True, with_indices=True)`: each
    row's `messages` (`text` for the plain-text format) with the system turn `system` (None: the
    template's own), or its `problem`. `where(index)` names a row of what load_dataset read; the checked
    reader's rows name themselves. (Batched: a row at a time, `map` itself took half of the time.)"""

    def __init__(self, fmt: str, *, text_field: str, system: str | None, max_seq_length: int, where):
        self.fmt, self.text_field, self.system, self.where = fmt, text_field, system, where
        self.max_chars = CHARS_PER_TOKEN * max_seq_length
        self.seen: dict[bytes, str] = {}  # a 16-byte digest per row, not a second copy of every row's text

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        rows = [self.row(dict(zip(batch, values)), i) for values, i in zip(zip(*batch.values()), indices)]
        return {key: [row[key] for row in rows] for key in ("messages", "text", "where", "problem", "detail", "cut")}

    def row(self, row: dict, index: int) -> dict:
        out = {"messages": None, "text": None, "where": row.get("where") or self.where(index), "problem": row.get("problem"),
               "detail": row.get("detail"), "cut": False}
        if out["problem"]:  # a line the checked reader could not read
            return out
        value = json.loads(row["json"]) if "json" in row else row
        try:
            messages = formats.with_system(formats.to_messages(value, self.fmt, self.text_field), self.system)
        except formats.RowProblem as e:
            return {**out, "problem": e.reason, "detail": e.detail}
        messages, out["cut"] = cut_to_characters(messages, self.max_chars)
        # of the row as cut: two rows that differ only beyond the cut train on the same tokens
        key = hashlib.blake2b((messages if isinstance(messages, str) else json.dumps(
            messages, sort_keys=True, ensure_ascii=False)).encode(), digest_size=16).digest()
        if key in self.seen:
            return {**out, "problem": "duplicate", "detail": f"exact duplicate of {self.seen[key]}"}
        self.seen[key] = out["where"]
        out["text" if isinstance(messages, str) else "messages"] = messages
        return out


def cut_to_characters(messages, max_chars: int):
    """(messages, whether cut): a plain text, or the turns' contents in order, kept to `max_chars`
    characters in all; the turn that crosses the limit is cut there and later turns are dropped."""
    if isinstance(messages, str):
        return messages[:max_chars], len(messages) > max_chars
    if sum(len(m["content"]) for m in messages) <= max_chars:
        return messages, False
    kept, room = [], max_chars
    for m in messages:
        if room <= 0:
            break
        kept.append(m if len(m["content"]) <= room else {**m, "content": m["content"][:room]})
        room -= len(m["content"])
    return kept, True


class Tokenizer:
    """Called with a batch by `Dataset.map(..., batched=True)`: each usable row rendered with the chat
    template (`text`) and cut into `input_ids`, at most `max_seq_length` of them (`length`: how many
    the whole row had; a longer row is cut, `truncated`, or dropped with on_long_rows='drop'). With
    `responses_only`, `labels` keep only the answers' tokens in the loss (-100 elsewhere) and `spans`
    are the answers' character spans."""

    def __init__(self, tokenizer, max_seq_length: int, responses_only: bool, on_long_rows: str, fmt: str):
        if responses_only and fmt == "text":
            raise DatasetError(f"the rows are plain text ({fmt}): train_on_responses_only = True needs turns to "
                               f"tell prompts from answers. Set it False, or use a format with turns.")
        self.tokenizer, self.limit, self.responses_only, self.drop = tokenizer, max_seq_length, responses_only, \
            on_long_rows == "drop"
        self.stops = set(supervision.stop_ids(tokenizer))

    def __call__(self, batch: dict) -> dict:
        n = len(batch["where"])
        out = {**batch, "input_ids": [[] for _ in range(n)], "length": [0] * n, "truncated": [False] * n,
               "loss_tokens": [0] * n, "end_cut": [False] * n, "stop_in_loss": [False] * n}
        if self.responses_only:
            out.update(labels=[[] for _ in batch["where"]], spans=[[] for _ in batch["where"]])
        usable = [i for i, problem in enumerate(batch["problem"]) if problem is None]
        conversations = [batch["text"][i] if batch["messages"][i] is None else batch["messages"][i] for i in usable]
        with no_cycle_collection():
            rendered = self._render(conversations, [batch["where"][i] for i in usable])
            encodings = encode(self.tokenizer, [text for text, _ in rendered], offsets=self.responses_only)
            if not self.responses_only and not self.drop:  # offsets only where a row is cut
                long = [k for k, (ids, _) in enumerate(encodings) if len(ids) > self.limit]
                for k, again in zip(long, encode(self.tokenizer, [rendered[k][0] for k in long], offsets=True)):
                    encodings[k] = again
        for i, (text, spans), (ids, offsets) in zip(usable, rendered, encodings):
            out["length"][i], n = len(ids), len(ids)
            if n > self.limit:
                if self.drop:
                    more = "over {:,} characters".format(CHARS_PER_TOKEN * self.limit) if batch["cut"][i] else f"{n} tokens"
                    out["problem"][i], out["detail"][i] = "too long", f"{more} > max_seq_length {self.limit}"
                    continue
                cut = offsets[self.limit - 1][1]
                # the answers' spans of the whole row (rendered again only for a cut row, where none were needed)
                row = batch["text"][i] if batch["messages"][i] is None else batch["messages"][i]
                answers = spans if spans is not None else formats.render(self.tokenizer, row)[1]
                out["end_cut"][i] = supervision.answer_cut(text, answers, cut)
                if spans is not None:
                    spans = [(s, min(e, cut)) for s, e in spans if s < cut]
                    if not spans:
                        out["problem"][i] = "no answer within max_seq_length"
                        out["detail"][i] = f"the prompt alone fills the first {self.limit} tokens, so nothing would be learned"
                        continue
                text, ids, offsets, out["truncated"][i] = text[:cut], ids[:self.limit], offsets[:self.limit], True
            out["text"][i], out["input_ids"][i] = text, ids
            if spans is not None:
                out["spans"][i], out["labels"][i] = [list(s) for s in spans], answer_labels(ids, offsets, spans)
            in_loss = [t for t in out["labels"][i][1:] if t != -100] if spans is not None else ids[1:]
            out["loss_tokens"][i], out["stop_in_loss"][i] = len(in_loss), bool(self.stops.intersection(in_loss))
            if not in_loss:  # the first token is never predicted, so a one-token row teaches nothing
                out["problem"][i], out["detail"][i] = "no token carries loss", f"{len(ids)} token(s), none of them in the loss"
        return out

    def _render(self, conversations: list, where: list[str]) -> list[tuple[str, list | None]]:
        """(text, answer spans or None) per conversation: in one template call where no spans are needed;
        row by row otherwise, or to name the row a template refuses."""
        if not self.responses_only:
            try:
                return [(text, None) for text in formats.render_texts(self.tokenizer, conversations)]
            except Exception:  # a template can raise anything; find the row it refuses, below
                pass
        rendered = []
        for messages, place in zip(conversations, where):
            try:
                rendered.append(formats.render(self.tokenizer, messages) if self.responses_only
                                else (formats.render_text(self.tokenizer, messages), None))
            except Exception as e:  # jinja errors, or the template's own raise_exception
                raise DatasetError(f"{place}: the chat template cannot render this row: {e}") from None
        return rendered


def answer_labels(ids, offsets, spans) -> list[int]:
    """Labels for `train_on_responses_only`: a token's id where it lies inside an answer span, else -100."""
    return [t if b > a and any(s <= a < e for s, e in spans) else -100 for t, (a, b) in zip(ids, offsets)]


def template_name(tokenizer, fmt: str) -> str:
    """How the rows were rendered, in words, for the report."""
    if fmt == "text":
        return "none: plain text, trained on as it is, EOS appended"
    if ensure_chat_template(tokenizer) or tokenizer.chat_template == PLAIN_CHAT_TEMPLATE:
        return "plain <human>:/<bot>: template (the tokenizer has no chat template)"
    return "the tokenizer's chat template"
