"""Step 1: choose the backend, find the weights, load model + tokenizer.

Backends:
- `unsloth`: the post's path, `FastLanguageModel.from_pretrained(..., load_in_4bit=True)`; needs an
  NVIDIA GPU and the unsloth package.
- `hf`: transformers (+ bitsandbytes 4-bit on a GPU when asked); the path on a CPU, where the base
  weights stay in full precision because 4-bit kernels exist only for NVIDIA GPUs.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.machinery.errors import ParameterError
from helpers.machinery.machine import choose_attention, choose_backend, choose_dtype, local_device
from helpers.machinery.rundir import update_metrics
from helpers.machinery.weights import BUNDLED, bundled_folder, is_prequantized, resolve_source
from helpers.params import pick

LOAD_SECONDS: list[float] = []  # time spent in load() in this process (the runner reports it per notebook)


@dataclass
class LoadInfo:
    backend: str
    model_name: str
    source: str  # the folder or hub id the weights came from
    device: str
    dtype: str
    load_in_4bit: bool
    attn_implementation: str
    differences: list = field(default_factory=list)  # (setting, asked, used, why)

    def as_dict(self) -> dict:
        return asdict(self)


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
    started: float  # when choosing began: loaded() records the whole load's time in LOAD_SECONDS

    def table(self):
        from helpers.machinery.tables import whole

        name = self.asked if self.asked == self.model_name else f"{self.asked} -> {shown(self.model_name)}"
        rows = [("model_name", name),
                ("max_seq_length", self.max_seq_length), ("dtype", _dtype_name(self.dtype)),
                ("load_in_4bit", self.load_in_4bit), ("attn_implementation", self.attn_implementation)]
        return whole(rows, columns=["argument", "value"]).set_index("argument")


def shown(path: str) -> str:
    """A path as a notebook shows it: the home folder as `~`, so stored outputs name no machine."""
    return path.replace(str(Path.home()), "~")


def _dtype_name(dtype) -> str:
    return "None (chosen by unsloth)" if dtype is None else str(dtype).replace("torch.", "")


def load_arguments(*, model_name: str, max_seq_length: int, dtype, load_in_4bit: bool, backend: str,
                   attn_implementation: str, trust_remote_code: bool, progress_bar: bool = False) -> LoadArguments:
    """Choose the backend and the load call's arguments for this machine, from the parameters of the
    same names (imports unsloth first when it is the backend, as unsloth must patch transformers before
    anything imports it). `progress_bar`:
    transformers' bar while the weights load (01 shows it: the post's 8B model takes a while; the
    notebooks that rebuild the model keep quiet)."""
    import time

    from helpers.machinery.memory import apply_gpu_cap
    from helpers.machinery.packed_attention import route_packed_attention

    started = time.perf_counter()
    apply_gpu_cap()
    asked_dtype, asked_attention = dtype, attn_implementation
    backend = choose_backend(backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import torch
    from transformers.utils import logging as hf_logging

    if progress_bar:
        import warnings

        with warnings.catch_warnings():  # the hub's own bars stay off (helpers/__init__.py); only these show
            warnings.filterwarnings("ignore", message="Cannot enable progress bars")
            hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    source = resolve_source(model_name)
    dtype = choose_dtype(asked_dtype)
    attn = choose_attention(asked_attention)
    gpu = torch.cuda.is_available()
    differences = []
    if backend == "unsloth" and route_packed_attention():
        differences.append(("attention over packed rows (packing=True)",
                            "unsloth on this torch: one SDPA call per run of equal example lengths",
                            "torch's flash kernel over all examples, one call per layer",
                            "the same attention, several times faster on the GPU (docs/benchmarks.md); "
                            "WORKBOOK_PACKED_VARLEN=0 turns it off"))
    four_bit = bool(load_in_4bit)
    stored_4bit = is_prequantized(source)
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
    extra = {"trust_remote_code": trust_remote_code, "use_safetensors": True}  # never pickled .bin
    if backend == "unsloth":
        extra["device_map"] = {"": local_device()} if gpu else "sequential"
        if asked_dtype is None:
            dtype = None  # unsloth picks bf16 or fp16 itself, as in the post
    elif stored_4bit:
        extra["device_map"] = {"": local_device()}  # its quantization_config says how it is stored
    elif four_bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        extra["device_map"] = {"": local_device()}
    return LoadArguments(backend=backend, model_name=source, max_seq_length=max_seq_length, dtype=dtype,
                         load_in_4bit=four_bit, attn_implementation=attn, extra=extra, differences=differences,
                         asked=model_name, started=started)


def load(params: dict, cpu: bool = False):
    """Load model and tokenizer as `params` asks, on the backend that fits this machine: the call that
    notebook 01 spells out, for the notebooks that rebuild the model from the run folder. `cpu`: keep a
    model that is not in 4-bit in CPU memory (07 merges a 16-bit base too large for the card there).

    Returns (model, tokenizer, LoadInfo); LoadInfo.differences lists what this machine does
    differently from what was asked, and why.
    """
    a = load_arguments(**pick(params, load_arguments))
    if a.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=a.model_name, max_seq_length=a.max_seq_length, dtype=a.dtype,
            load_in_4bit=a.load_in_4bit, attn_implementation=a.attn_implementation, **a.extra)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            a.model_name, dtype=a.dtype, attn_implementation=a.attn_implementation, **a.extra)
        tokenizer = AutoTokenizer.from_pretrained(a.model_name, trust_remote_code=a.extra["trust_remote_code"])
    return loaded(model, tokenizer, a, params.get("run_dir"), cpu)


def _same_source(loaded: str, asked: str) -> bool:
    if Path(asked).is_dir() and Path(loaded).is_dir():
        return Path(loaded).resolve() == Path(asked).resolve()
    return loaded.rstrip("/") == asked.rstrip("/")


def refuse_edits(model, a: LoadArguments) -> None:
    """01's load call must load what its parameters cell says: steps 2 and 5 load the model again from
    the parameters, and step 3 tokenizes and cuts rows for it, so an edit inside the call would train
    another model than the one shown. Refused, naming the parameter to set instead."""
    from operator import eq as same

    found = [("load_in_4bit", bool(getattr(model, "is_loaded_in_4bit", False)), bool(a.load_in_4bit), same)]
    if a.backend != "unsloth" or Path(a.model_name).is_dir():  # for a hub id unsloth may load its own 4-bit copy
        loaded_from = getattr(model.config, "_name_or_path", "") or a.model_name
        found.append(("model_name", str(loaded_from), str(a.model_name), _same_source))
    if a.backend == "unsloth":
        found.append(("max_seq_length", getattr(model, "max_seq_length", a.max_seq_length), a.max_seq_length, same))
    for name, got, asked, agrees in found:
        if not agrees(got, asked):
            raise ParameterError(f"The load call in this cell gave {name}={got!r}, but the parameters give "
                                 f"{asked!r}: set {name} in this notebook's parameters cell instead (steps 2 and 5 "
                                 f"load the model again from the parameters, and step 3 prepares the rows for it).")


def loaded(model, tokenizer, a: LoadArguments, run_dir=None, cpu: bool = False):
    """After the load call: the model on its GPU (unless `cpu`), the tokenizer ready for batches and chat
    rows, and the record of what really loaded in run_dir/metrics.json (with a `run_dir`). Returns
    (model, tokenizer, LoadInfo)."""
    import time

    import torch

    refuse_edits(model, a)
    gpu = torch.cuda.is_available() and not (cpu and not a.load_in_4bit)
    if gpu and a.backend == "hf" and not a.load_in_4bit:
        model = model.to(f"cuda:{local_device()}")
    prepare_tokenizer(tokenizer)
    dtype = a.dtype if a.dtype is not None else model.dtype
    info = LoadInfo(backend=a.backend, model_name=a.asked, source=a.model_name,
                    device="cuda" if gpu else "cpu", dtype=str(dtype).replace("torch.", ""),
                    load_in_4bit=a.load_in_4bit, attn_implementation=a.attn_implementation,
                    differences=a.differences)
    if run_dir:  # which backend really ran belongs in the run's record
        update_metrics(Path(run_dir), **{k: v for k, v in info.as_dict().items() if k != "differences"})
    LOAD_SECONDS.append(time.perf_counter() - a.started)
    return model, tokenizer, info


def summary(model, info: LoadInfo):
    """One table of what was loaded: parameters, dtype, device, memory."""
    import pandas as pd

    total = sum(p.numel() for p in model.parameters())
    rows = [("backend", info.backend), ("weights from", shown(info.source)), ("device", info.device),
            ("compute dtype", info.dtype), ("4-bit base weights", info.load_in_4bit),
            ("attention", info.attn_implementation), ("layers", model.config.num_hidden_layers),
            ("parameters", f"{total / 1e6:,.1f} M"),
            ("weights in memory", f"{model.get_memory_footprint() / 2**30:.2f} GiB")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def differences_table(differences):
    from helpers.machinery.tables import whole

    return whole(differences, columns=["setting", "asked", "used here", "why"])


def load_tokenizer(model_name: str):
    """The tokenizer of `model_name` alone (quick), for looking at data before any model loads."""
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(resolve_source(model_name)))


def prepare_tokenizer(tokenizer):
    """Batches need a pad token (a tokenizer without one pads with end-of-sequence), and chat rows need
    a chat template (a tokenizer without one gets the workbook's plain template, see helpers.machinery.formats)."""
    from helpers.machinery.formats import ensure_chat_template

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def show_tokens(tokenizer, text: str):
    """How the tokenizer cuts `text`: one row per token, with its id."""
    import pandas as pd

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(ids), "id": ids}).T


if __name__ == "__main__":
    # `python -m helpers.model`: convert the bundled model now and print where it is. A workshop's shared
    # machine does this once, with WORKBOOK_CACHE naming a folder everybody can read (docs/workshop.md).
    for bundled_name in BUNDLED:
        print(bundled_folder(bundled_name))
