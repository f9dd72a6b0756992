"""Tokenizing many texts quickly: the fast tokenizer's batch path on every core, BOS added where the
tokenizer adds one and the text lacks it, and no garbage collection of cycles while 210k rows of
small objects are made."""
from __future__ import annotations

import contextlib
import gc
import os

# A row is cut to this many characters per max_seq_length token before it is rendered and tokenized: a
# tokenizer takes about 230 MB of memory per MB of text, so a 100 MB row would take 20 GB only to be cut
# to 2,048 tokens afterwards. No tokenizer's tokens run this long on average, so the cut text still has
# more than max_seq_length tokens, and its first max_seq_length are the ones the whole row gives.
CHARS_PER_TOKEN = 32


@contextlib.contextmanager
def no_cycle_collection():
    """Python's cycle collector runs again and again while millions of row objects are made (none of
    them in a cycle): a sixth of 03's time at 210k rows. Off for the block, back on after."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def encode(tokenizer, texts: list[str], offsets: bool = False) -> list[tuple[list[int], list | None]]:
    """(token ids, character offsets or None) per text, through the tokenizer's batch path on all cores.
    A BOS token is added only where the tokenizer adds one and the text does not already start with it
    (chat templates often write it); generation prompts follow the same rule (`add_bos`)."""
    out: list = [None] * len(texts)
    groups: dict[bool, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(add_bos(tokenizer, text), []).append(i)
    with parallel_tokenizer():
        for add, where in groups.items():
            for i, pair in zip(where, _encode_batch(tokenizer, [texts[i] for i in where], add, offsets)):
                out[i] = pair
    return out


def _encode_batch(tokenizer, texts: list[str], add_special_tokens: bool, offsets: bool):
    """The Rust tokenizer itself where it is set up plainly (no truncation or padding of its own): it
    skips transformers' per-row conversion, a sixth of the time at 210k rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets,
                        return_attention_mask=False)
        return zip(enc["input_ids"], enc["offset_mapping"] if offsets else [None] * len(texts))
    if offsets:
        return ((e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens))
    return ((e.ids, None) for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens))


def add_bos(tokenizer, text: str) -> bool:
    """Whether to let the tokenizer add its special tokens (BOS) to `text`: not when it starts with BOS."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


@contextlib.contextmanager
def parallel_tokenizer():
    """The fast tokenizer's batch path uses every core only while TOKENIZERS_PARALLELISM allows it; the
    workbook keeps it off elsewhere (forked processes would warn or hang), so it is on for this block."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = old if old is not None else "false"
