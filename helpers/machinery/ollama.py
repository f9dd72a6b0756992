"""An Ollama `Modelfile` for the GGUF file of step 7: where the weights are, the chat layout as an Ollama
(Go) template, the stop tokens, and the notebook's decoding settings.

The three chat layouts the workbook meets are described once, as data (`ChatLayout`): the same
description writes the Go template and renders a conversation in Python, which is how the tests check
it against the tokenizer's own (Jinja) chat template.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """The workbook's plain template (helpers.machinery.formats.PLAIN_CHAT_TEMPLATE): the post's own layout."""
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
    stops = layout.stops if layout is not None else tuple(t for t in (tokenizer.eos_token,) if t)
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n", note


def write_modelfile(folder: Path, tokenizer, gguf_name: str, system: str | None, max_new_tokens: int,
                    context: int) -> tuple[Path, str]:
    text, note = modelfile(tokenizer, gguf_name, system, max_new_tokens, context)
    path = Path(folder) / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path, note
