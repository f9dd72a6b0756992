"""Dataset formats: recognise them, turn every row into chat messages, render them with a chat template.

Four formats, detected from the fields or named with `dataset_format`:

- `oig`: the post's OIG `unified_chip2`, a text field holding `<human>: ...` / `<bot>: ...` turns;
- `alpaca`: `instruction`, optional `input`, `output`;
- `conversations`: `messages` (role/content) or ShareGPT `conversations` (from/value);
- `text`: plain text in `dataset_text_field`, trained on as it is (what the post's SFTTrainer does).

All but `text` become a list of `{"role", "content"}` messages, which the tokenizer's chat template
renders; a tokenizer without one got the plain one in step 1 (helpers.model.loading), the OIG layout itself. Rendering also
returns the character spans of the assistant turns, which `train_on_responses_only` keeps in the loss.
"""
from __future__ import annotations

import json
import re
from collections import Counter

from helpers.data.sources import DatasetError

FORMATS = ("auto", "oig", "alpaca", "conversations", "text")
OIG_TAGS = {"<human>:": "user", "<bot>:": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "bot": "assistant"}

class RowProblem(Exception):
    """One row cannot be used: `reason` is the report's category, `detail` says what was expected."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def detect(values: list, text_field: str) -> tuple[str, str]:
    """(format, why) from the fields of the first rows; None when no row is an object."""
    rows = [v for v in values[:200] if isinstance(v, dict)]
    if not rows:
        return None, "no row is an object with fields"
    keys = Counter(k for row in rows for k in row)
    half = len(rows) / 2
    if keys["messages"] > half:
        return "conversations", "rows have a 'messages' field"
    if keys["conversations"] > half:
        return "conversations", "rows have a ShareGPT 'conversations' field"
    if keys["instruction"] > half and keys["output"] > half:
        return "alpaca", "rows have 'instruction' and 'output' fields"
    if keys[text_field] > half:
        texts = [row.get(text_field) for row in rows if isinstance(row.get(text_field), str)]
        turns = sum("<human>:" in t and "<bot>:" in t for t in texts)
        if turns > len(texts) / 2:
            return "oig", f"'{text_field}' holds <human>: / <bot>: turns"
        return "text", f"rows have a '{text_field}' field of plain text"
    return None, f"the fields are {sorted(keys)[:10]}"


def detect_in(dataset, dataset_format: str, text_field: str) -> tuple[str, str]:
    """(format, why): `dataset_format` where it names one, else detected from the fields of the first rows
    (of the checked reader's JSON texts, where it read them)."""
    if dataset_format != "auto":
        return dataset_format, "named by dataset_format"
    sample = dataset.select(range(min(200, len(dataset))))
    values = ([json.loads(j) for j in sample["json"] if j is not None] if "json" in dataset.column_names
              else list(sample))
    fmt, why = detect(values, text_field)
    if fmt is None and not any(isinstance(v, dict) for v in values):
        return "text", "no row is an object: each is reported as the wrong type"
    if fmt is None:
        raise DatasetError(f"cannot tell the dataset format ({why}). Expected '{text_field}' (text or OIG turns; "
                           f"see dataset_text_field), 'instruction' + 'output' (Alpaca), 'messages' or "
                           f"'conversations'; or name it with dataset_format.")
    return fmt, why


def _field(row: dict, name: str, required: bool = True) -> str | None:
    if name not in row or row[name] is None:
        if required:
            raise RowProblem("missing field", f"no '{name}' field")
        return None
    value = row[name]
    if not isinstance(value, str):
        raise RowProblem("wrong type", f"field '{name}' is {type(value).__name__}, expected text")
    if required and not value.strip():
        raise RowProblem("empty field", f"field '{name}' is empty")
    return value


def parse_oig(text: str) -> list[dict]:
    """`<human>: a\\n<bot>: b\\n<human>: c\\n<bot>: d` -> four messages."""
    pieces = re.split(r"(<human>:|<bot>:)", text)
    if pieces[0].strip():
        raise RowProblem("turns don't alternate", "text before the first <human>: turn")
    messages = []
    for tag, content in zip(pieces[1::2], pieces[2::2]):
        if not content.strip():
            raise RowProblem("empty field", f"turn {len(messages) + 1} ({tag}) is empty")
        messages.append({"role": OIG_TAGS[tag], "content": content.strip()})
    return messages


def _conversation(row: dict) -> list[dict]:
    if "messages" in row:
        name, role_key, content_key = "messages", "role", "content"
    else:
        name, role_key, content_key = "conversations", "from", "value"
    turns = row.get(name)
    if turns is None:
        raise RowProblem("missing field", "no 'messages' or 'conversations' field")
    if not isinstance(turns, list):
        raise RowProblem("wrong type", f"field '{name}' is {type(turns).__name__}, expected a list of turns")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowProblem("wrong type", f"{name} turn {i} is {type(turn).__name__}, expected an object with "
                                           f"'{role_key}' and '{content_key}'")
        role = turn.get(role_key)
        if role not in SHAREGPT_ROLES:
            raise RowProblem("unknown role", f"{name} turn {i} has {role_key}={role!r}; expected one of "
                                             f"{sorted(SHAREGPT_ROLES)}")
        try:
            content = _field(turn, content_key)
        except RowProblem as e:
            raise RowProblem(e.reason, f"{name} turn {i}: {e.detail}") from None
        messages.append({"role": SHAREGPT_ROLES[role], "content": content.strip()})
    return messages


def check_turns(messages: list[dict]) -> list[dict]:
    """An optional system message, then user and assistant taking turns, ending with an answer."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RowProblem("turns don't alternate", "no user or assistant turn")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowProblem("turns don't alternate",
                             f"turn {i + 1} is '{message['role']}', expected '{expected}' "
                             f"(roles: {' > '.join(m['role'] for m in body)})")
    if body[-1]["role"] != "assistant":
        raise RowProblem("turns don't alternate", "the last turn is the user's: no answer to learn")
    return messages


def to_messages(row, fmt: str, text_field: str):
    """Chat messages for one row (for `text`: the text itself); raises RowProblem for an unusable row."""
    if not isinstance(row, dict):
        raise RowProblem("wrong type", f"the row is {type(row).__name__}, expected an object with fields")
    if fmt == "text":
        return _field(row, text_field)
    if fmt == "oig":
        return check_turns(parse_oig(_field(row, text_field)))
    if fmt == "alpaca":
        instruction, extra = _field(row, "instruction"), _field(row, "input", required=False)
        prompt = instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _field(row, "output").strip()}]
    if fmt == "conversations":
        return check_turns(_conversation(row))
    raise ValueError(f"unknown format {fmt!r}")


def template_system(tokenizer) -> str | None:
    """The system message the chat template writes into a conversation that has none (SmolLM2's: "You
    are a helpful AI assistant named SmolLM, ..."), or None when it writes none."""
    user = [{"role": "user", "content": "x"}]
    marker = "\x00SYSTEM\x00"
    plain = tokenizer.apply_chat_template(user, tokenize=False)
    marked = tokenizer.apply_chat_template([{"role": "system", "content": marker}] + user, tokenize=False)
    if marker not in marked:
        return None
    head, tail = marked.split(marker, 1)
    if not (plain.startswith(head) and plain.endswith(tail)) or len(plain) <= len(head) + len(tail):
        return None
    return plain[len(head):len(plain) - len(tail)]


def system_message_for(tokenizer, system_message: str) -> str | None:
    """What to put as the system turn of a conversation without one: None leaves it to the template
    (`template`); `none` gives an empty one only where the template would write its own; any other
    text is the system message."""
    if system_message == "template":
        return None
    if system_message == "none":
        return "" if template_system(tokenizer) is not None else None
    return system_message


def with_system(messages, system: str | None):
    """`messages` with `system` as their system turn, unless they have their own (or are plain text)."""
    if system is None or isinstance(messages, str) or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def render_text(tokenizer, messages) -> str:
    """The training text of one row: the chat template's rendering (or the plain text), EOS appended
    where the template does not end with it."""
    eos = tokenizer.eos_token or ""
    if isinstance(messages, str):
        return messages if messages.endswith(eos) else messages + eos
    return _ending_with_eos(tokenizer.apply_chat_template(messages, tokenize=False), eos)


def _ending_with_eos(rendered: str, eos: str) -> str:
    """A template's rendering, with EOS appended where the template does not end with it."""
    return rendered if not eos or rendered.rstrip().endswith(eos) else rendered + eos


def render_texts(tokenizer, rows: list) -> list[str]:
    """`render_text` for many rows: one chat-template call for all the conversations among them (the
    template is compiled once, and the per-call overhead, three quarters of the time, is paid once)."""
    chats = [i for i, row in enumerate(rows) if not isinstance(row, str)]
    texts = [render_text(tokenizer, row) if isinstance(row, str) else None for row in rows]
    if chats:
        rendered = tokenizer.apply_chat_template([rows[i] for i in chats], tokenize=False)
        for i, text in zip(chats, rendered):
            texts[i] = _ending_with_eos(text, tokenizer.eos_token or "")
    return texts


def render(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """`render_text` and the character spans of the assistant turns.

    A span runs from where the generation prompt ends to the end of that assistant turn, so it
    holds exactly what the model must produce (answer and end-of-turn marker).
    """
    text = render_text(tokenizer, messages)
    if isinstance(messages, str):  # plain text: all of it is trained on
        return text, [(0, len(text))]

    def apply(msgs, generation_prompt=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, upto = apply(messages[:i], True), apply(messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise ValueError("the tokenizer's chat template renders a conversation differently from its "
                             "beginning, so answers cannot be located for train_on_responses_only")
        spans.append((len(prompt), len(upto)))
    if len(text) > len(apply(messages)):  # EOS was appended: the last answer ends with it
        spans[-1] = (spans[-1][0], len(text))
    return text, spans


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant's answer, if any."""
    marker = "Xq7Zr"  # a string no template writes by itself
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # a template that refuses this conversation: EOS alone then
        return None
    after = text[text.find(marker) + len(marker):] if marker in text else ""
    specials = sorted((t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t),
                      key=len, reverse=True)
    return next((t for t in specials if after.lstrip(" ").startswith(t)), None)
