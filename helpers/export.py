"""Step 7: one folder that anyone can load: the LoRA adapter merged into the base weights.

The merge adds B·A·(alpha/r) to each adapted weight, then drops the adapter: what remains is an
ordinary transformers checkpoint (safetensors + config + tokenizer) that loads with no peft
installed. It is checked by loading it in a separate Python process in which peft cannot be
imported, and comparing its logits with those of the adapter model.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import rundir
from helpers import model as models
from helpers.evaluate import adapter_dir
from helpers.memory import placement

PROBE = "<human>: What is the capital of Norway?\n<bot>: Pip here!"
# The folder read back is compared with the logits its weights gave in the merge's own process. float32:
# equal up to summation order. 16-bit: equal on the same device (0 at the 8B shape on an H200); read back
# on another (the CPU after a GPU merge) every product rounds to 8 (bf16) or 11 (fp16) significant bits in
# another order. 5% of the largest logit leaves room for that: the whole distance of a bf16 merge from the
# adapter model was 2.3% of the scale for SmolLM2 and 1.8% at the 8B shape after the post's 120 steps. A
# wrong merge (the update scaled wrong, a layer's update left out) moves the logits by a share of what
# training moved them (tests/test_after_training.py, tests/test_gpu.py).
ABSOLUTE_TOLERANCE_FP32 = 1e-3
RELATIVE_TOLERANCE_16BIT = 5e-2


def export_dtype(params: dict) -> str:
    """`auto`: float32 on a CPU (the precision it trained in); on a GPU the training precision, 16-bit,
    like unsloth's `merged_16bit`."""
    if params["export_dtype"] != "auto":
        return params["export_dtype"]
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


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


def merge_and_save(params: dict) -> Merged:
    """The adapter merged into the base weights, written to run_dir/merged one tensor at a time.

    The base is the checkpoint of `model_name` (or `merge_base`, a folder of its original 16-bit weights).
    A checkpoint stored in 4-bit (bitsandbytes nf4, as the post's `unsloth/Meta-Llama-3.1-8B-bnb-4bit`)
    stays in 4-bit on the GPU; each layer is dequantized to 16-bit as it is written, and B·A·(alpha/r)
    added to it, so neither the hub (for the original weights) nor a second full copy in GPU memory is
    needed, and the merged weights are exactly what the adapter model computes with. A merge into the
    4-bit layers themselves (peft's merge_and_unload) would round the update away."""
    import torch
    from peft import PeftModel

    dtype = export_dtype(params)
    source = params["merge_base"] or params["model_name"]
    started = time.perf_counter()
    on_cpu = merges_on_cpu(models.resolve_source(source))
    model, tokenizer, info = models.load({**params, "model_name": source, "run_dir": None, "backend": "hf",
                                          "load_in_4bit": False, "dtype": dtype}, cpu=on_cpu)
    model = PeftModel.from_pretrained(model, str(adapter_dir(params["run_dir"])))
    model.eval()
    probe = tokenizer(PROBE, return_tensors="pt").to(model.device)
    with torch.no_grad():
        adapter_logits = model(**probe).logits.float().cpu()
    merged_logits = _logits_as_merged(model, probe, getattr(torch, dtype))
    if info.load_in_4bit:
        base = (f"{source} is stored in 4-bit (nf4): its layers were dequantized to {dtype} and the update added "
                f"(the weights the adapter model computes with; set merge_base to a folder of the original "
                f"16-bit weights to merge into those instead)")
    else:
        base = f"{source}, loaded unquantized in {dtype}, the update added"
        if on_cpu:
            base += " in CPU memory (its weights do not fit the GPU whole)"
    final = Path(params["run_dir"]) / "merged"
    loaded = time.perf_counter()
    with rundir.building(final) as tmp:
        _write_merged(model, getattr(torch, dtype), tmp)
        tokenizer.save_pretrained(tmp)
    del model
    gc.collect()  # peft's wrappers hold reference cycles: free the 4-bit model now, not at some later gc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the reload check runs in another process, on the same card
    seconds = {"load and probe": loaded - started, "merge and write": time.perf_counter() - loaded}
    return Merged(final, dtype, adapter_logits, merged_logits, base, seconds)


def merges_on_cpu(source: str) -> bool:
    """Whether the merge's base must stay in CPU memory: a base stored in 16 (or 32) bits that does not
    fit the GPU whole (`merge_base` naming the original 8B weights, 15 GiB, on a 16 GB card). One stored
    in 4-bit stays on the GPU (5.5 GiB at the 8B shape), and is dequantized a layer at a time."""
    import torch

    if not torch.cuda.is_available() or models.is_prequantized(source) or not Path(source).is_dir():
        return False
    return placement(Path(source)).where != "gpu"


def merged_weight(module, adapter: str, dtype):
    """One adapted layer's merged weight as it is saved: its base weight (dequantized from 4-bit where
    it is stored so) plus B·A·(alpha/r), summed in float32, then rounded to `dtype`."""
    import torch
    from peft.utils.integrations import dequantize_module_weight

    weight = dequantize_module_weight(module.get_base_layer()).to(torch.float32)
    return (weight + module.get_delta_weight(adapter).to(weight.device, torch.float32)).to(dtype)


def _logits_as_merged(peft_model, probe, dtype):
    """The probe's logits with every adapted layer computing with its merged weight as saved
    (`merged_weight`), one layer's weight made at a time, so no second copy of the model is needed. What
    the merged folder must give when read back: the difference from the adapter model's logits is the
    rounding of the saved dtype on this very model (random weights amplify it far more than trained ones)."""
    import torch
    import torch.nn.functional as F
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


def _write_merged(peft_model, dtype, folder: Path) -> None:
    """Safetensors shards (SHARD_BYTES each at most, with an index when there are several) and a config
    without quantization: what `from_pretrained` of a plain 16-bit (or 32-bit) checkpoint reads."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
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


# Run in a fresh interpreter where `import peft` fails, so the check proves that plain transformers
# is enough. argv: the folder, the probe, from_pretrained's placement arguments (JSON). The GPU cap, where
# set, holds here too. Prints the probe's logits as JSON.
_RELOAD = """
import json, os, sys
sys.modules["peft"] = None  # any attempt to import peft now raises ImportError
repo, folder, probe = sys.argv[1:4]
sys.path.insert(0, repo)
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from helpers.memory import placement
cap = os.environ.get("WORKBOOK_GPU_MEMORY_GIB")
if cap and torch.cuda.is_available():
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total))
place = placement(folder)  # decided here, where this process's own CUDA context already counts
model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True, **place.arguments)
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tok(probe, return_tensors="pt").to(model.device)).logits.float().cpu()
print(json.dumps({"dtype": str(model.dtype), "logits": logits.tolist(), "placement": place.where}))
"""


def reload_without_peft(folder: Path) -> dict:
    """Load `folder` with plain transformers (peft blocked) in another process, placed by
    `memory.placement` in that process (on the GPU where the adapter model ran, when the weights fit
    beside everything on the card), and return its dtype, its probe logits and where it ran."""
    out = subprocess.run([sys.executable, "-c", _RELOAD, str(Path(__file__).resolve().parent.parent), str(folder),
                          PROBE], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"Plain transformers could not load {folder}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(adapter_logits, merged_logits, reloaded: dict, dtype: str) -> dict:
    """Whether the folder read back (`reloaded`: plain transformers, another process) is the merge.

    Two comparisons. The written weights: the reloaded logits must equal those the merged weights gave
    in the merge's own process (`merged_logits`), within a tolerance that fits the saved dtype (float32:
    1e-3; 16-bit: 5% of the largest logit, for another device's or kernel's rounding order). And the
    adapter model: storing the merged weights in 16-bit rounds them, which moves the logits by `rounding`
    (measured: merged_logits against adapter_logits). The greedy next token must be the adapter model's
    wherever its top-1 margin (best logit minus second best) is wider than the rounding and the reading
    back can close (twice their sum: each of the two logits may move by it); at positions inside that
    band the two best tokens tie to within rounding, and they are counted and shown, not failed (random
    weights have many such positions). A token that differs where the margin is wider would mean a
    logit moved by more than was measured: the comparison guards the arithmetic of this check itself."""
    import torch

    logits = torch.tensor(reloaded["logits"])
    scale = float(adapter_logits.abs().max())
    tolerance = ABSOLUTE_TOLERANCE_FP32 if dtype == "float32" else RELATIVE_TOLERANCE_16BIT * scale
    written = float((logits - merged_logits).abs().max())
    rounding = float((merged_logits - adapter_logits).abs().max())
    best_two = adapter_logits.topk(2, dim=-1).values
    decided = (best_two[..., 0] - best_two[..., 1]) > 2 * (rounding + written)
    same = logits.argmax(-1) == adapter_logits.argmax(-1)
    result = {"export_dtype": dtype, "written_logit_diff": written, "rounding_logit_diff": rounding,
              "max_abs_logit_diff": float((logits - adapter_logits).abs().max()), "logit_scale": scale,
              "tolerance": tolerance, "positions": int(same.numel()),
              "same_next_token": float(same.float().mean()),
              "decided_positions": int(decided.sum()), "decided_same": int(same[decided].sum()),
              "placement": reloaded.get("placement")}
    result["ok"] = written <= tolerance and result["decided_same"] == result["decided_positions"]
    return result


def check_table(result: dict):
    import pandas as pd

    decided, positions = result["decided_positions"], result["positions"]
    agree = round(result["same_next_token"] * positions)
    rows = [("saved weights", result["export_dtype"]),
            ("reloaded on", result.get("placement") or "?"),
            ("largest |logit|", f"{result['logit_scale']:.1f}"),
            ("read back vs as merged", f"{result['written_logit_diff']:.2e} (largest |logit difference|)"),
            (f"rounding to {result['export_dtype']} moved the logits", f"{result['rounding_logit_diff']:.2e}"),
            ("read back vs the adapter model", f"{result['max_abs_logit_diff']:.2e}"),
            ("same greedy token, decided positions", f"{result['decided_same']} of {decided}"),
            ("near-ties (top two closer than rounding can tell)",
             f"{positions - decided} of {positions}, {agree - result['decided_same']} of them the same token"),
            ("check", f"{'passed' if result['ok'] else 'FAILED'} (tolerance {result['tolerance']:.3g})")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def unsloth_merged(params: dict, run_dir) -> tuple[Path | None, str]:
    """unsloth's own merged save (`merged_16bit`), where it can succeed: on the unsloth backend, from a
    base stored in 16-bit. From a base stored in 4-bit it would fetch the original 16-bit weights from
    the hub (or refuse, offline); `merge_and_save` covers that case. Returns (folder or None, what happened)."""
    if models.choose_backend(params["backend"]) != "unsloth":
        return None, "unsloth merged save: not on this backend (needs unsloth on an NVIDIA GPU)"
    if models.is_prequantized(models.resolve_source(params["model_name"])):
        return None, ("unsloth merged save: skipped: the base is stored in 4-bit, and unsloth's merged_16bit "
                      "would download its original 16-bit weights from the hub; the merge above dequantized it")
    from unsloth import FastLanguageModel

    # unsloth reads adapter_config.json, loads the base it names, and puts the adapter on top
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir(run_dir)), max_seq_length=params["max_seq_length"],
        load_in_4bit=params["load_in_4bit"])
    final = Path(run_dir) / "merged_unsloth"
    with rundir.building(final) as tmp:
        model.save_pretrained_merged(str(tmp), tokenizer, save_method="merged_16bit")
    del model
    return final, f"unsloth merged save: {final}"


def find_llama_cpp() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py: in $LLAMA_CPP_DIR, or on PATH."""
    if os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        if candidate.exists():
            return candidate
    found = shutil.which("convert_hf_to_gguf.py")
    return Path(found) if found else None


def gguf(merged_dir: Path, run_dir, outtype: str = "q8_0", writer: str = "gguf"):
    """run_dir/model.gguf from the merged folder, written by the `gguf` package (`writer='gguf'`) or by
    llama.cpp's converter (`'llama.cpp'`, where installed). Returns (gguf_export.Written or None, what
    happened): a model the writer cannot handle is a message, not an error, so the notebook goes on."""
    from helpers import gguf_export

    target = Path(run_dir) / "model.gguf"
    if writer == "llama.cpp":
        return _gguf_with_llama_cpp(merged_dir, target, outtype)
    try:
        written = gguf_export.write(merged_dir, target, outtype, name=Path(run_dir).name)
    except gguf_export.UnsupportedModel as e:
        return None, f"GGUF export skipped: {e}"
    return written, (f"GGUF written by the gguf package: model.gguf ({written.size_mb:.1f} MB, {outtype}, "
                    f"{written.tensors} tensors, {written.seconds:.1f} s; {seconds_text(written.parts)}, "
                    f"side by side)")


def _gguf_with_llama_cpp(merged_dir: Path, target: Path, outtype: str):
    from helpers.gguf_export import Written

    script = find_llama_cpp()
    if script is None:
        return None, ("GGUF export skipped: gguf_writer = 'llama.cpp', but llama.cpp's convert_hf_to_gguf.py was "
                      "not found. Clone https://github.com/ggml-org/llama.cpp, `pip install -r "
                      "requirements/requirements-convert_hf_to_gguf.txt` there, and set LLAMA_CPP_DIR to the clone "
                      "(or put the script on PATH); or set gguf_writer = 'gguf'.")
    tmp = target.with_name(".model.gguf.partial")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(script), str(merged_dir), "--outfile", str(tmp), "--outtype", outtype],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{script} failed:\n{out.stderr[-2000:]}")
    tmp.replace(target)
    seconds = time.perf_counter() - start
    return Written(target, outtype, seconds, None), (
        f"GGUF written by llama.cpp's converter: model.gguf ({target.stat().st_size / 1e6:.1f} MB, {outtype}, "
        f"{seconds:.1f} s)")


def ollama_files(params: dict, merged_dir: Path, gguf_file) -> str:
    """The Modelfile beside model.gguf (`gguf_file`: what `gguf` returned), and the commands that use
    them (nothing without a GGUF file)."""
    from transformers import AutoTokenizer

    from helpers import formats, ollama

    if gguf_file is None:
        return "No Modelfile: there is no model.gguf."
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    system = formats.system_message_for(tokenizer, params["system_message"])
    if system is None:  # the template's own default, which Ollama's template does not add by itself
        system = formats.template_system(tokenizer)
    path, note = ollama.write_modelfile(gguf_file.path.parent, tokenizer, gguf_file.path.name, system or None,
                                        params["chat_max_new_tokens"], params["max_seq_length"])
    name = "pip" if "pip_chip2" in str(params["dataset"]) else "my-model"
    return (f"Modelfile written beside it ({note}). In the run folder:\n"
            f"    ollama create {name} -f Modelfile\n"
            f"    ollama run {name} \"What is the capital of Japan?\"\n"
            f"or with llama.cpp:\n"
            f"    llama-cli -m model.gguf -cnv")
