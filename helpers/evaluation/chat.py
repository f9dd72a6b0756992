"""Step 8: talk to the fine-tuned model, with its chat template, the answer streamed as it is produced."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

import torch

from helpers.data.formats import system_message_for
from helpers.evaluation.generate import prompt_batch, stop_ids
from helpers.model.memory import placement
from helpers.show import whole


@dataclass
class Merged:
    """Whether 08 chats with the merged folder of step 7 (`use`), its from_pretrained placement and why."""
    use: bool
    folder: Path
    arguments: dict
    why: str


def merged_model(run_dir, backend: str) -> Merged:
    """The merged folder of step 7 when there is one, this run trained on the hf backend, and the merged
    weights fit the GPU whole (or there is no GPU); else the base model with step 5's adapter, which on
    the unsloth backend, or with a base stored in 4-bit, is the small 4-bit model."""
    folder = Path(run_dir) / "merged"
    if not (folder / "config.json").exists():
        return Merged(False, folder, {}, "the base model with the adapter of step 5 (run folder: adapter/); "
                                         "step 7 has not merged it")
    if backend != "hf":
        return Merged(False, folder, {}, "the 4-bit base model with the adapter of step 5 (run folder: adapter/), "
                                         "as unsloth trained it")
    place = placement(folder)
    if place.where == "gpu" or not torch.cuda.is_available():
        return Merged(True, folder, {"use_safetensors": True, **place.arguments},
                      "the merged model of step 7 (run folder: merged/), loaded by plain transformers")
    return Merged(False, folder, {}, f"the base model with the adapter of step 5 (run folder: adapter/): the merged "
                                     f"model of step 7 would answer slowly here: {place.why}")


def start(model, tokenizer, *, system_message: str, chat_max_new_tokens: int) -> "Chat":
    """A conversation with the run's `system_message` (as the training rows had it), answers of at most
    `chat_max_new_tokens` tokens."""
    return Chat(model, tokenizer, chat_max_new_tokens, system=system_message_for(tokenizer, system_message))


@dataclass
class Reply:
    text: str
    chunks: list[str]          # the pieces in the order the streamer delivered them
    seconds: float
    first_chunk_seconds: float  # time to the first visible text


def stream(model, tokenizer, messages: list[dict], max_new_tokens: int, show=print) -> Reply:
    """Greedy generation in a background thread; each decoded piece is shown as soon as it exists."""

    from transformers import TextIteratorStreamer


    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = prompt_batch(tokenizer, [prompt], next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(tokenizer, model))
    start = time.perf_counter()
    errors = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except Exception as e:  # surface it in the caller, not lost in the thread
            errors.append(e)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    chunks, first = [], None
    for chunk in streamer:
        if not chunk:
            continue
        first = first if first is not None else time.perf_counter() - start
        chunks.append(chunk)
        show(chunk, end="", flush=True)
    thread.join()
    if errors:
        raise errors[0]
    show()
    text = "".join(chunks).split("<human>:")[0].strip()  # the plain template's next turn, if it runs on
    return Reply(text, chunks, time.perf_counter() - start, first or 0.0)


@dataclass
class Chat:
    """A conversation that remembers its turns: each `say` sends the whole history."""
    model: object
    tokenizer: object
    max_new_tokens: int = 64
    system: str | None = None
    messages: list[dict] = field(default_factory=list)

    def say(self, text: str, show=print) -> Reply:
        if not self.messages and self.system is not None:
            self.messages.append({"role": "system", "content": self.system})
        self.messages.append({"role": "user", "content": text})
        show(f"you: {text}\nmodel: ", end="")
        reply = stream(self.model, self.tokenizer, self.messages, self.max_new_tokens, show)
        self.messages.append({"role": "assistant", "content": reply.text})
        return reply

    def table(self):
        return whole(self.messages, columns=["role", "content"])
