"""What the runner (and tools.train) checks before any notebook starts: every step's checks together
(helpers.checks), and the target modules against the model's skeleton, which step 2 checks against the
loaded model itself. A run that cannot work stops in a second, naming the parameter."""
from __future__ import annotations

from pathlib import Path

from helpers import checks
from helpers.params import ParameterError


def check_combinations(params: dict, gpu: bool | None = None) -> dict:
    """Every step's checks at once, before any notebook starts (the runner, tools.train); each step also
    runs its own when its notebook runs alone. Raises ParameterError; returns params unchanged. None imports
    torch, transformers or datasets (seconds each): a wrong value is named within a second or so."""
    gpu = nvidia_gpu_present() if gpu is None else gpu
    checks.for_training(params, gpu)
    checks.for_data(params)
    checks.for_loading(params, gpu)
    check_target_modules(params)
    return params


def nvidia_gpu_present() -> bool:
    """Whether this process sees an NVIDIA GPU, without importing torch (seconds): the driver's device
    files, unless CUDA_VISIBLE_DEVICES hides every card. The notebooks ask torch itself."""
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def check_target_modules(params: dict) -> None:
    """Every `target_modules` entry must name linear layers of the model, and not an output layer tied to
    the input embeddings; checked on the model's skeleton (built from config.json on PyTorch's meta
    device: no weights; kept in the cache after the first time), where step 2 checks the loaded model itself."""
    found = linear_layer_names(checks.model_folder(params["model_name"]), params["trust_remote_code"])
    if found is None:
        return  # no local config to read (a hub id offline, or the bundled model before its conversion)
    names, tied = found
    unknown = [m for m in params["target_modules"] if m not in names]
    if unknown:
        raise ParameterError(f"Parameter 'target_modules' names {unknown}, which are no layers of "
                             f"{params['model_name']}: LoRA would leave them out silently. Its linear layers: "
                             f"{sorted(names)}.")
    checks.refuse_tied(params["target_modules"], tied)


def _linear_layer_names(config_path: Path, trust_remote_code: bool) -> tuple[frozenset, str | None]:
    """Built once per config (seconds: torch and transformers are imported), then read from the cache."""
    import hashlib
    import importlib.metadata
    import json

    from helpers.model.weights import cache_dir

    key = hashlib.sha1(config_path.read_bytes() + f"{trust_remote_code} {importlib.metadata.version('transformers')}"
                       .encode()).hexdigest()[:16]
    cached = cache_dir() / "layers" / f"{key}.json"
    if cached.exists():
        found = json.loads(cached.read_text())
        return frozenset(found["linear"]), found["tied"]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from helpers import rundir
    from helpers.model.lora import tied_output_layer

    config = AutoConfig.from_pretrained(config_path.parent, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = frozenset(name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                      if isinstance(module, torch.nn.Linear) and name)
    rundir.write_json(cached, {"linear": sorted(names), "tied": tied_output_layer(skeleton)})
    return names, tied_output_layer(skeleton)


def linear_layer_names(folder: Path, trust_remote_code: bool = False) -> tuple[frozenset, str | None] | None:
    """(the names of the model's linear layers, the output layer's where tied to the embeddings), from the
    skeleton of the model in `folder`; None without a config.json there."""
    path = Path(folder) / "config.json"
    return _linear_layer_names(path, trust_remote_code) if path.exists() else None
