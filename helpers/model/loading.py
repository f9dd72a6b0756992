"""Step 1: choose the backend and the load call's values for this machine, and record what loaded.

Backends:
- `unsloth`: the post's path, `FastLanguageModel.from_pretrained(..., load_in_4bit=True)`; needs an
  NVIDIA GPU and the unsloth package.
- `hf`: transformers (+ bitsandbytes 4-bit on a GPU when asked); the path on a CPU, where the base
  weights stay in full precision because 4-bit kernels exist only for NVIDIA GPUs.

01 spells the load call out. What it loaded goes into the run folder's `base/` (`load.json` and the
tokenizer), and every later step loads from there with a call of its own (`base(run_dir)`), so that
each notebook runs alone after a kernel restart.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from helpers import checks, rundir
from helpers.model.machine import choose_attention, choose_backend, choose_dtype, local_device
from helpers.model.memory import apply_gpu_cap
from helpers.model.packed_attention import route_packed_attention
from helpers.model.weights import is_prequantized, resolve_source
from helpers.show import whole


# For tokenizers that ship no chat template: the post's own layout, with EOS closing every answer so
# that the model learns where to stop.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<human>: ' + message['content'] + '\n' }}"
    "{% else %}{{ '<bot>: ' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<bot>:' }}{% endif %}"
)


@dataclass
class LoadArguments:
    """The values of the load call on this machine (01 spells the call out with them), and what differs
    from what was asked. `extra` holds the plumbing the lesson need not read (trust_remote_code,
    safetensors only, device placement, the 4-bit config of the hf backend)."""
    backend: str
    model_name: str  # what to pass as model_name: the resolved folder or hub id
    max_seq_length: int
    dtype: object  # None (unsloth picks) or a torch dtype
    load_in_4bit: bool
    attn_implementation: str
    extra: dict
    differences: list
    asked: str  # model_name as the parameters give it

    def table(self):
        name = self.asked if self.asked == self.model_name else f"{self.asked} -> {shown(self.model_name)}"
        rows = [("model_name", name), ("max_seq_length", self.max_seq_length),
                ("dtype", "None (chosen by unsloth)" if self.dtype is None else _name(self.dtype)),
                ("load_in_4bit", self.load_in_4bit), ("attn_implementation", self.attn_implementation)]
        return whole(rows, columns=["argument", "value"]).set_index("argument")


def shown(path: str) -> str:
    """A path as a notebook shows it: the home folder as `~`, so stored outputs name no machine."""
    return path.replace(str(Path.home()), "~")


def _name(dtype) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


def arguments(*, model_name: str, max_seq_length: int, dtype, load_in_4bit: bool, backend: str,
              attn_implementation: str, trust_remote_code: bool) -> LoadArguments:
    """Check step 1's parameters (before anything loads), then choose the backend and the load call's
    arguments for this machine (unsloth is imported first when it is the backend: it must patch
    transformers before anything imports it)."""
    checks.for_loading(dict(model_name=model_name, max_seq_length=max_seq_length, dtype=dtype, backend=backend,
                            load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code))
    apply_gpu_cap()
    asked_dtype, asked_attention = dtype, attn_implementation
    backend = choose_backend(backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401
    from transformers.utils import logging as hf_logging

    with warnings.catch_warnings():  # the hub's own bars stay off (helpers/__init__.py); only these show
        warnings.filterwarnings("ignore", message="Cannot enable progress bars")
        hf_logging.enable_progress_bar()  # the post's 8B model takes a while: 01 shows the bar
    source = resolve_source(model_name)
    dtype, attn, gpu = choose_dtype(asked_dtype), choose_attention(asked_attention), torch.cuda.is_available()
    differences = []
    if backend == "unsloth" and route_packed_attention():
        differences.append(("attention over packed rows (packing=True)",
                            "unsloth on this torch: one SDPA call per run of equal example lengths",
                            "torch's flash kernel over all examples, one call per layer",
                            "the same attention, several times faster on the GPU (docs/benchmarks.md); "
                            "WORKBOOK_PACKED_VARLEN=0 turns it off"))
    four_bit, stored_4bit = bool(load_in_4bit), is_prequantized(source)
    if stored_4bit and not four_bit:
        four_bit = True  # there are no 16-bit weights to load
        differences.append(("load_in_4bit", False, True, "the checkpoint is stored in 4-bit (nf4)"))
    if four_bit and not gpu:
        four_bit = False
        differences.append(("load_in_4bit", True, False, "4-bit (bitsandbytes) kernels need an NVIDIA GPU"))
    if four_bit and backend == "hf" and importlib.util.find_spec("bitsandbytes") is None:
        four_bit = False
        differences.append(("load_in_4bit", True, False, "bitsandbytes is not installed"))
    if asked_attention == "auto" and attn == "sdpa" and gpu:
        differences.append(("attn_implementation", "flash_attention_2 (the post)", "sdpa",
                            "flash-attn is not installed; PyTorch SDPA uses flash kernels itself"))
    if backend == "unsloth" and asked_dtype is None:
        dtype = None  # unsloth picks bf16 or fp16 itself, as in the post
    extra = placement_arguments(backend, gpu, four_bit and not stored_4bit, dtype, trust_remote_code)
    return LoadArguments(backend=backend, model_name=source, max_seq_length=max_seq_length, dtype=dtype,
                         load_in_4bit=four_bit, attn_implementation=attn, extra=extra, differences=differences,
                         asked=model_name)


def placement_arguments(backend: str, gpu: bool, quantize: bool, dtype, trust_remote_code: bool) -> dict:
    """What a load call needs besides the lesson's values: safetensors only (never pickled .bin), custom
    code only when trusted, this process's GPU, and on the hf backend the 4-bit config that quantizes a
    16-bit checkpoint while it loads."""
    extra = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if backend == "unsloth":
        extra["device_map"] = {"": local_device()} if gpu else "sequential"
    elif gpu:
        extra["device_map"] = {"": local_device()}
    if quantize and backend == "hf":
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    return extra


def loaded(model, tokenizer, a: LoadArguments, run_dir):
    """After 01's load call: the tokenizer ready for batches and chat rows, and the record of what really
    loaded (read off the model where it says) in run_dir/base/ with the tokenizer, and in metrics.json.
    Returns (model, tokenizer, base(run_dir))."""
    prepare_tokenizer(tokenizer)
    record = {"backend": a.backend, "model_name": a.model_name, "asked": a.asked,
              "max_seq_length": getattr(model, "max_seq_length", a.max_seq_length),
              "dtype": _name(a.dtype), "compute_dtype": _name(model.dtype),
              "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
              "attn_implementation": getattr(model.config, "_attn_implementation", None) or a.attn_implementation,
              "trust_remote_code": a.extra["trust_remote_code"],
              "stored_4bit": is_prequantized(a.model_name),  # nf4 on disk: nothing to quantize while loading
              "device": "cuda" if torch.cuda.is_available() else "cpu", "differences": a.differences}
    with rundir.building(Path(rundir.resolve(run_dir)) / "base") as folder:
        tokenizer.save_pretrained(folder)
        rundir.write_json(folder / "load.json", record)
    rundir.update_metrics(Path(run_dir), backend=a.backend, model_name=a.asked, source=shown(a.model_name),
                          device=record["device"], dtype=record["compute_dtype"], load_in_4bit=record["load_in_4bit"],
                          attn_implementation=record["attn_implementation"])
    return model, tokenizer, base(run_dir)


def record(run_dir) -> dict:
    """What step 1 loaded in this run folder (base/load.json), read and nothing more: 07 merges in a kernel
    where unsloth must not patch transformers."""
    return json.loads((rundir.artifact(run_dir, "base") / "load.json").read_text(encoding="utf-8"))


def base(run_dir) -> SimpleNamespace:
    """What step 1 loaded in this run folder, for the steps after it that load the model again: its record
    as attributes, `tokenizer` (01's tokenizer's folder) and `arguments` (the load call's keyword arguments
    besides the model's name). Applies the GPU cap and imports unsloth first where it is the backend."""
    r = record(run_dir)
    apply_gpu_cap()
    if r["backend"] == "unsloth":
        import unsloth  # noqa: F401  (before transformers, which it patches)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # 01 showed the load; the steps that load again keep quiet
    dtype = getattr(torch, r["dtype"]) if r["dtype"] else None
    call = {"dtype": dtype, "attn_implementation": r["attn_implementation"],
            **placement_arguments(r["backend"], torch.cuda.is_available(), r["load_in_4bit"] and not r["stored_4bit"],
                                  dtype, r["trust_remote_code"])}
    if r["backend"] == "unsloth":
        call.update(max_seq_length=r["max_seq_length"], load_in_4bit=r["load_in_4bit"])
    return SimpleNamespace(**r, record=r, tokenizer=str(rundir.artifact(run_dir, "base")), arguments=call)


def summary(model, b):
    """One table of what was loaded: parameters, dtype, device, memory."""
    r = b.record
    total = sum(p.numel() for p in model.parameters())
    rows = [("backend", r["backend"]), ("weights from", shown(r["model_name"])), ("device", r["device"]),
            ("compute dtype", r["compute_dtype"]), ("4-bit base weights", r["load_in_4bit"]),
            ("attention", r["attn_implementation"]), ("layers", model.config.num_hidden_layers),
            ("parameters", f"{total / 1e6:,.1f} M"),
            ("weights in memory", f"{model.get_memory_footprint() / 2**30:.2f} GiB")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def load_tokenizer(model_name: str):
    """The tokenizer of `model_name` alone (quick), ready for batches and chat rows."""
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(resolve_source(model_name)))


def prepare_tokenizer(tokenizer):
    """Batches need a pad token (a tokenizer without one pads with end-of-sequence), and chat rows need
    a chat template (a tokenizer without one gets the workbook's plain template, PLAIN_CHAT_TEMPLATE)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def ensure_chat_template(tokenizer) -> bool:
    """Give a tokenizer without a chat template the plain one; True when it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


def show_tokens(tokenizer, text: str):
    """How the tokenizer cuts `text`: one row per token, with its id."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(ids), "id": ids}).T


if __name__ == "__main__":
    # `python -m helpers.model.loading`: convert the bundled model now and print where it is. A workshop's
    # shared machine does this once, with WORKBOOK_CACHE naming a folder everybody can read (docs/workshop.md).
    from helpers.model.weights import BUNDLED, bundled_folder

    for bundled_name in BUNDLED:
        print(bundled_folder(bundled_name))
