"""Step 8: talk to the fine-tuned model, with its chat template, the answer streamed as it is produced."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


def load(params: dict):
    """(model, tokenizer, where from): the merged folder of step 7 when there is one (plain
    transformers) and it fits the GPU whole (or there is no GPU); else the base model with the adapter
    of step 5, which on the unsloth backend, or with a base stored in 4-bit, is the small 4-bit model.
    "Where from" names the run folder's parts, not a machine's paths."""
    from helpers import evaluate
    from helpers import model as models
    from helpers.machinery import machine
    from helpers.machinery.memory import placement

    merged = Path(params["run_dir"]) / "merged"
    instead = ""
    if (merged / "config.json").exists() and machine.choose_backend(params["backend"]) == "hf":
        import torch

        place = placement(merged)
        if place.where == "gpu" or not torch.cuda.is_available():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(merged, dtype="auto", use_safetensors=True,
                                                         **place.arguments)
            return (model.eval(), models.prepare_tokenizer(AutoTokenizer.from_pretrained(merged)),
                    "the merged model of step 7 (run folder: merged/), loaded by plain transformers")
        instead = f". Not the merged model of step 7, which would answer slowly here: {place.why}"
    model, tokenizer, info = evaluate.load_finetuned(params)
    return model, tokenizer, f"{info.model_name} with the adapter of step 5 (run folder: adapter/){instead}"


def start(model, tokenizer, *, system_message: str, chat_max_new_tokens: int) -> "Chat":
    """A conversation with the run's `system_message` (as the training rows had it), answers of at most
    `chat_max_new_tokens` tokens."""
    from helpers.machinery.formats import system_message_for

    return Chat(model, tokenizer, chat_max_new_tokens, system=system_message_for(tokenizer, system_message))


@dataclass
class Reply:
    text: str
    chunks: list[str]          # the pieces in the order the streamer delivered them
    seconds: float
    first_chunk_seconds: float  # time to the first visible text


def stream(model, tokenizer, messages: list[dict], max_new_tokens: int, show=print) -> Reply:
    """Greedy generation in a background thread; each decoded piece is shown as soon as it exists."""
    from threading import Thread

    import torch
    from transformers import TextIteratorStreamer

    from helpers.generate import prompt_batch, stop_ids

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
        from helpers.machinery.tables import whole

        return whole(self.messages, columns=["role", "content"])
