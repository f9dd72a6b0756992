"""Step 7: one folder that anyone can load: the LoRA adapter merged into the base weights.

The merge adds B·A·(alpha/r) to each adapted weight, then drops the adapter: what remains is an
ordinary transformers checkpoint (safetensors + config + tokenizer) that loads with no peft
installed. It is checked by loading it in a separate Python process in which peft cannot be
imported, and comparing its logits with those of the adapter model (helpers.export.merge_check).
07 loads the base and the adapter with calls you see; `merge_and_save` takes the model from there.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers import rundir
from helpers.export import merging
from helpers.export.merge_check import PROBE, check
from helpers.model import weights
from helpers.model.memory import placement


def export_dtype(export_dtype: str) -> str:
    """`auto`: float32 on a CPU (the precision it trained in); on a GPU the training precision, 16-bit,
    like unsloth's `merged_16bit`."""
    if export_dtype != "auto":
        return export_dtype
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def base_of(adapter: Path) -> str:
    """The base model an adapter folder names (its adapter_config.json)."""
    return json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]


def where_to_merge(source: str) -> dict:
    """from_pretrained's placement for the merge's base: on the GPU when stored in 4-bit (dequantized a
    layer at a time) or when it fits whole; else in CPU memory (the 8B model's 15 GiB on a 16 GB card)."""
    if not torch.cuda.is_available():
        return {"use_safetensors": True}
    if weights.is_prequantized(source) or not Path(source).is_dir() or placement(Path(source)).where == "gpu":
        return {"use_safetensors": True, "device_map": {"": 0}}
    return {"use_safetensors": True}


@dataclass
class Merged:
    folder: Path
    dtype: str              # the saved weights' dtype
    adapter_logits: object  # the adapter model's logits on PROBE (on the CPU)
    merged_logits: object   # the logits the merged weights give, as saved (rounded to dtype), same process
    base: str               # what the update was added to, in words
    seconds: dict           # load (base + adapter + probe) and write, as 07 prints them

    def timing(self) -> str:
        return seconds_text(self.seconds)

    def check(self, reloaded: dict) -> dict:
        """`check` of the folder as `reload_without_peft` read it back."""
        return check(self.adapter_logits, self.merged_logits, reloaded, self.dtype)


def seconds_text(parts: dict) -> str:
    """{"load": 6.5, "write": 11.4} as "load 6.5 s, write 11.4 s", the way 07 prints where time went."""
    return ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())


def merge_and_save(model, tokenizer, run_dir, dtype: str) -> Merged:
    """The adapter model `model` (a PeftModel on its base, as 07 loads it) merged and written to
    run_dir/merged one tensor at a time, with `tokenizer` beside it.

    A base stored in 4-bit (bitsandbytes nf4, as the post's `unsloth/Meta-Llama-3.1-8B-bnb-4bit`) stays in
    4-bit on the GPU; each layer is dequantized to `dtype` as it is written, and B·A·(alpha/r) added to it,
    so neither the hub (for the original weights) nor a second full copy in GPU memory is needed, and the
    merged weights are exactly what the adapter model computes with. A merge into the 4-bit layers
    themselves (peft's merge_and_unload) would round the update away."""
    started = time.perf_counter()
    model.eval()
    probe = tokenizer(PROBE, return_tensors="pt").to(model.device)
    with torch.no_grad():
        adapter_logits = model(**probe).logits.float().cpu()
    merged_logits = merging.logits_as_merged(model, probe, getattr(torch, dtype))
    source = model.peft_config[model.active_adapter].base_model_name_or_path
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        base = (f"the base is stored in 4-bit (nf4): its layers were dequantized to {dtype} and the update added "
                f"(the weights the adapter model computes with; set merge_base to a folder of the original "
                f"16-bit weights to merge into those instead)")
    else:
        base = f"the base, loaded unquantized in {dtype}, the update added"
        if model.device.type == "cpu" and torch.cuda.is_available():
            base += " in CPU memory (its weights do not fit the GPU whole)"
    final = Path(run_dir) / "merged"
    probed = time.perf_counter()
    with rundir.building(final) as tmp:
        merging.write_merged(model, getattr(torch, dtype), tmp)
        tokenizer.save_pretrained(tmp)
    del model
    gc.collect()  # peft's wrappers hold reference cycles: free the 4-bit model now, not at some later gc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the reload check runs in another process, on the same card
    seconds = {"probe": probed - started, "merge and write": time.perf_counter() - probed}
    from helpers.model.loading import shown

    return Merged(final, dtype, adapter_logits, merged_logits, f"{shown(source)}: {base}", seconds)


def unsloth_merged(run_dir, record: dict) -> tuple[Path | None, str]:
    """(folder or None, what happened): unsloth's own merged save (`merged_16bit`) on the unsloth backend,
    from a base stored in 16-bit (from 4-bit it would fetch the 16-bit weights from the hub)."""
    if record["backend"] != "unsloth":
        return None, "unsloth merged save: not on this backend (needs unsloth on an NVIDIA GPU)"
    if weights.is_prequantized(record["model_name"]):
        return None, ("unsloth merged save: skipped: the base is stored in 4-bit, and unsloth's merged_16bit "
                      "would download its original 16-bit weights from the hub; the merge above dequantized it")
    from unsloth import FastLanguageModel

    # unsloth reads adapter_config.json, loads the base it names, and puts the adapter on top
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(rundir.artifact(run_dir, "adapter")), max_seq_length=record["max_seq_length"],
        load_in_4bit=record["load_in_4bit"])
    final = Path(run_dir) / "merged_unsloth"
    with rundir.building(final) as tmp:
        model.save_pretrained_merged(str(tmp), tokenizer, save_method="merged_16bit")
    del model
    return final, f"unsloth merged save: {final.name}/"
