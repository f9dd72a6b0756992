"""A written GGUF file opened by llama.cpp itself (through llama-cpp-python), and compared with the merged
folder it came from: what Ollama, LM Studio and llama-cli see. Stricter than transformers' GGUF reader
(fixtures.gguf_read_back): llama.cpp refuses a file whose metadata it does not know, such as a
pre-tokenizer name outside its list.

llama-cpp-python is an optional extra (requirements-gguf.txt), built from source by pip."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch


INSTALL = ("pip install -r requirements-gguf.txt (llama-cpp-python, which pip builds from its source with gcc and "
           "cmake: about 20 minutes on 2 cores)")


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def open_gguf(path: Path, n_ctx: int = 512, cache: str = "f16"):
    """llama.cpp's model and context for `path`, keeping the logits of every position (teacher forcing).
    `cache`: the attention cache's type, "f16" as llama.cpp (and Ollama) keep it by default, or "f32",
    so that a float32 file is measured at its own precision rather than the cache's."""
    import llama_cpp

    kind = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[cache]
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=os.cpu_count(),
                           type_k=kind, type_v=kind, verbose=False)


def compare(merged_dir: Path, gguf_path: Path, texts: list[str], cache: str = "f16") -> dict:
    """`gguf_path` opened by llama.cpp against the merged folder on `texts`: the token ids, and the
    next-token logits at every position with both fed the folder's ids (a prefix shared with an earlier
    text counted once). Returns the largest logit difference and its scale, the share of positions with
    the same greedy token, and that share among the *decided* positions (the best token ahead of the
    second by more than twice the largest change there; the others are near-ties, as in 07's check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    llm = open_gguf(gguf_path, n_ctx=max(len(i) for i in ids) + 8, cache=cache)
    theirs_ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    diff = scale = 0.0
    seen, same, decided, decided_same = set(), [], 0, 0
    for row in ids:
        llm.reset()
        llm.eval(row)
        theirs = torch.from_numpy(np.array(llm.scores[:len(row)], dtype=np.float32))
        with torch.no_grad():
            ours = model(torch.tensor([row])).logits[0].float()
        new = [i for i in range(len(row)) if tuple(row[:i + 1]) not in seen]
        if not new:  # a text that an earlier one begins with
            continue
        seen.update(tuple(row[:i + 1]) for i in new)
        theirs, ours = theirs[new], ours[new]
        moved = (theirs - ours).abs().max(-1).values
        top = ours.topk(2, -1).values
        agree = theirs.argmax(-1) == ours.argmax(-1)
        clear = (top[:, 0] - top[:, 1]) > 2 * moved
        diff, scale = max(diff, float(moved.max())), max(scale, float(ours.abs().max()))
        same += agree.tolist()
        decided, decided_same = decided + int(clear.sum()), decided_same + int((agree & clear).sum())
    llm.close()
    return {"same_ids": [a == list(b) for a, b in zip(ids, theirs_ids)], "max_abs_logit_diff": diff,
            "logit_scale": scale, "same_next_token": sum(same) / len(same), "positions": len(same),
            "decided_positions": decided, "decided_same": decided_same}
