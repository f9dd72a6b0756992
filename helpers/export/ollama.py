"""An Ollama `Modelfile` for the GGUF file of step 7: where the weights are, the chat layout as an Ollama
(Go) template, the stop tokens, and the notebook's decoding settings.

The three chat layouts the workbook meets are described once, as data (`ChatLayout`): the same
description writes the Go template and renders a conversation in Python, which is how the tests check
it against the tokenizer's own (Jinja) chat template.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers import rundir
from helpers.data import formats
from helpers.export.gguf_meta import stored


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatLayout:
    name: str
    turns: dict  # role -> (text before the content, text after it)
    generation_prompt: str
    stops: tuple

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(self.turns[m["role"]][0] + m["content"] + self.turns[m["role"]][1] for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")

    def go_template(self) -> str:
        """The same layout in Ollama's template language (no whitespace trimming: every character counts)."""
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}'
            for i, (role, (before, after)) in enumerate(self.turns.items()))
        return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation_prompt}"


CHATML = ChatLayout("ChatML (SmolLM2, Qwen)", {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES},
                    "<|im_start|>assistant\n", ("<|im_end|>",))
LLAMA3 = ChatLayout("Llama 3 headers", {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ROLES},
                    "<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|eot_id|>",))


def plain_layout(eos: str) -> ChatLayout:
    """The workbook's plain template (helpers.model.loading.PLAIN_CHAT_TEMPLATE): the post's own layout."""
    return ChatLayout("the workbook's plain <human>:/<bot>:", {
        "system": ("", "\n"), "user": ("<human>: ", "\n"), "assistant": ("<bot>: ", eos + "\n")},
        "<bot>:", ("<human>:", eos))


PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Q2"}]


def layout_of(tokenizer) -> ChatLayout | None:
    """The layout whose rendering equals the tokenizer's chat template's on a probe conversation (a BOS
    token in front is left out: llama.cpp and Ollama add it themselves); None when none does."""
    rendered = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    for layout in (CHATML, LLAMA3, plain_layout(tokenizer.eos_token or "")):
        if rendered in (layout.render(PROBE), (tokenizer.bos_token or "") + layout.render(PROBE)):
            return layout
    return None


def _quoted(text: str) -> str:
    return '"""' + text + '"""'


def modelfile(tokenizer, gguf_name: str, system: str | None, max_new_tokens: int, context: int) -> tuple[str, str]:
    """(Modelfile text, a note on what it holds). `system`: the system message to default to (None: none)."""
    layout = layout_of(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if layout is not None:
        lines.append(f"TEMPLATE {_quoted(layout.go_template())}")
        note = f"chat layout: {layout.name}"
    else:
        note = ("chat layout: not one the workbook knows, so no TEMPLATE line: Ollama reads the chat template "
                "stored in the GGUF file")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    # greedy decoding and the answer length of notebook 08; the context the model was trained with
    lines += ["PARAMETER temperature 0", f"PARAMETER num_predict {max_new_tokens}", f"PARAMETER num_ctx {context}"]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops_for(tokenizer, layout)]
    return "\n".join(lines) + "\n", note


def stops_for(tokenizer, layout: ChatLayout | None) -> tuple:
    if layout is not None:
        return layout.stops
    return tuple(dict.fromkeys(t for t in (tokenizer.eos_token, formats.end_of_turn_token(tokenizer)) if t))


class Disagreement(ValueError):
    """The Modelfile or the GGUF file would chat otherwise than the model was trained; names how."""


# Conversations the three renderings must agree on: with and without a system line, several turns.
CONVERSATIONS = [PROBE, [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                         {"role": "user", "content": "Q2"}], [{"role": "user", "content": "Hi"}]]


def disagreements(tokenizer, layout: ChatLayout | None, stops: tuple, stored: dict, system: str | None) -> list[str]:
    """Where the Modelfile (`layout`, `stops`, SYSTEM `system`) or the GGUF file (`stored`) disagree with
    the tokenizer trained with: other tokens for a conversation, another template, an end of turn that
    does not stop generation. Empty when they agree."""
    found = []
    for messages in CONVERSATIONS if layout is not None else []:
        messages = formats.with_system(messages, system)
        theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ours = layout.render(messages)
        if theirs == (tokenizer.bos_token or "") + ours:  # a BOS in front: llama.cpp adds it itself
            theirs = ours
        if tokenizer(ours, add_special_tokens=False)["input_ids"] != tokenizer(theirs, add_special_tokens=False)["input_ids"]:
            found.append(f"the Modelfile's TEMPLATE renders {[m['role'] for m in messages]} as {ours!r}, the tokenizer's "
                         f"chat template as {theirs!r}")
    if isinstance(tokenizer.chat_template, str) and stored.get("chat_template") != tokenizer.chat_template:
        found.append("model.gguf stores another chat template than the tokenizer's (tokenizer.chat_template)")
    end = formats.end_of_turn_token(tokenizer) or tokenizer.eos_token
    if end:
        end_id = tokenizer.convert_tokens_to_ids(end)
        if end_id not in (stored.get("eos_token_id"), stored.get("eot_token_id")):
            found.append(f"the model was trained to end an answer with {end} (id {end_id}), but model.gguf ends "
                         f"generation on EOS id {stored.get('eos_token_id')} and EOT id {stored.get('eot_token_id')}: "
                         "llama.cpp would not stop there")
        if end not in stops:
            found.append(f"the model was trained to end an answer with {end}, which is not among the Modelfile's "
                         f"stops {list(stops)}")
    return found


def write_modelfile(folder: Path, tokenizer, gguf_name: str, system: str | None, max_new_tokens: int,
                    context: int) -> tuple[Path, str]:
    """The Modelfile beside `gguf_name`, once it agrees with the tokenizer and the GGUF file; otherwise
    Disagreement naming each difference, and no Modelfile (an earlier one is removed)."""
    text, note = modelfile(tokenizer, gguf_name, system, max_new_tokens, context)
    path = Path(folder) / "Modelfile"
    layout = layout_of(tokenizer)
    found = disagreements(tokenizer, layout, stops_for(tokenizer, layout), stored(Path(folder) / gguf_name), system)
    if found:
        path.unlink(missing_ok=True)
        raise Disagreement(f"No Modelfile written for {gguf_name}: " + "; ".join(found) + ".")
    with rundir.replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path, note + "; its template, stops and end of turn agree with the tokenizer and model.gguf"
