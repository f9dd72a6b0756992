"""What the runner (and tools.train) checks before any notebook starts: every step's checks together
(helpers.checks), and the target modules against the model's skeleton, which step 2 checks against the
loaded model itself. A run that cannot work stops in a second, naming the parameter."""
from __future__ import annotations

import functools
from pathlib import Path

from helpers import checks
from helpers.params import ParameterError


def check_combinations(params: dict, gpu: bool | None = None) -> dict:
    """Every step's checks at once, before any notebook starts (the runner, tools.train); each step also
    runs its own when its notebook runs alone. Raises ParameterError; returns params unchanged."""
    checks.for_loading(params, gpu)
    check_target_modules(params)
    checks.for_data(params)
    checks.for_training(params, gpu)
    return params


def check_target_modules(params: dict) -> None:
    """Every `target_modules` entry must name linear layers of the model; checked on the model's
    skeleton (built from config.json on PyTorch's meta device: no weights, well under a second)."""
    names = linear_layer_names(checks.model_folder(params["model_name"]), params["trust_remote_code"])
    if names is None:
        return  # no local config to read (a hub id offline, or the bundled model before its conversion)
    unknown = [m for m in params["target_modules"] if m not in names]
    if unknown:
        raise ParameterError(f"Parameter 'target_modules' names {unknown}, which are no layers of "
                             f"{params['model_name']}: LoRA would leave them out silently. Its linear layers: "
                             f"{sorted(names)}.")


@functools.lru_cache(maxsize=8)
def _linear_layer_names(config_path: str, mtime: float, trust_remote_code: bool) -> frozenset:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(config_path).parent, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return frozenset(name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                     if isinstance(module, torch.nn.Linear) and name)


def linear_layer_names(folder: Path, trust_remote_code: bool = False) -> frozenset | None:
    path = Path(folder) / "config.json"
    return _linear_layer_names(str(path), path.stat().st_mtime, trust_remote_code) if path.exists() else None
