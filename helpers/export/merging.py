"""The merge itself, one adapted layer at a time: each layer's base weight (dequantized from 4-bit
where the checkpoint is stored so) plus B·A·(alpha/r), in float32, rounded to the export dtype and
written into safetensors shards as it is made; and the probe's logits as those saved weights give them."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F


def merged_weight(module, adapter: str, dtype):
    """One adapted layer's merged weight as it is saved: its base weight (dequantized from 4-bit where
    it is stored so) plus B·A·(alpha/r), summed in float32, then rounded to `dtype`."""
    from peft.utils.integrations import dequantize_module_weight

    weight = dequantize_module_weight(module.get_base_layer()).to(torch.float32)
    return (weight + module.get_delta_weight(adapter).to(weight.device, torch.float32)).to(dtype)


def logits_as_merged(peft_model, probe, dtype):
    """The probe's logits with every adapted layer computing with its merged weight as saved
    (`merged_weight`), one layer's weight made at a time, so no second copy of the model is needed. What
    the merged folder must give when read back: the difference from the adapter model's logits is the
    rounding of the saved dtype on this very model (random weights amplify it far more than trained ones)."""
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]

    def as_merged(module):
        def forward(x, *args, **kwargs):
            bias = module.get_base_layer().bias
            weight = merged_weight(module, adapter, dtype).to(x.dtype)
            return F.linear(x, weight, None if bias is None else bias.to(x.dtype))
        return forward

    for module in layers:
        module.forward = as_merged(module)
    try:
        with torch.no_grad():
            return peft_model(**probe).logits.float().cpu()
    finally:
        for module in layers:
            del module.forward  # the class's forward again


SHARD_BYTES = 2 * 2**30


def write_merged(peft_model, dtype, folder: Path) -> None:
    """Safetensors shards (SHARD_BYTES each at most, with an index when there are several) and a config
    without quantization: what `from_pretrained` of a plain 16-bit (or 32-bit) checkpoint reads."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    base = peft_model.get_base_model()
    config = base.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).replace("torch.", "")
    plain = type(base.config).from_dict(config)
    with torch.device("meta"):  # the names and shapes a plain checkpoint of this model has
        skeleton = AutoModelForCausalLM.from_config(plain)
    names = list(skeleton.state_dict())
    if getattr(plain, "tie_word_embeddings", False):
        names = [n for n in names if n != "lm_head.weight"]
    modules = dict(base.named_modules())
    adapter = peft_model.active_adapter

    def tensor(name: str):
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        if isinstance(module, LoraLayer) and leaf == "weight":
            weight = merged_weight(module, adapter, dtype)
        elif leaf == "weight" and hasattr(module, "weight") and type(module.weight).__name__ == "Params4bit":
            weight = dequantize_module_weight(module)
        else:
            target = module.get_base_layer() if isinstance(module, LoraLayer) else module
            weight = getattr(target, leaf)
        return weight.detach().to(dtype).to("cpu").contiguous()

    written, shard, size = [], {}, 0  # written: (temporary file, tensor names)
    pending = []  # the shard being written in the background while the next one is merged

    def write(disk):
        path = folder / f".shard-{len(written)}"
        for job in pending:  # at most one shard in flight: memory stays at two shards
            job.result()
        pending[:] = [disk.submit(save_file, shard, str(path), metadata={"format": "pt"})]
        written.append((path, list(shard)))

    with torch.no_grad(), ThreadPoolExecutor(max_workers=1) as disk:
        for name in names:
            t = tensor(name)
            if shard and size + t.numel() * t.element_size() > SHARD_BYTES:
                write(disk)
                shard, size = {}, 0
            shard[name] = t
            size += t.numel() * t.element_size()
        write(disk)
        pending[0].result()
    weight_map = {}
    for i, (path, keys) in enumerate(written):  # transformers' file names
        file = "model.safetensors" if len(written) == 1 else f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        path.rename(folder / file)
        weight_map.update(dict.fromkeys(keys, file))
    if len(written) > 1:
        total = sum((folder / file).stat().st_size for file in set(weight_map.values()))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    plain.save_pretrained(folder)
    base.generation_config.save_pretrained(folder)
