"""Step 7: one folder that anyone can load: the LoRA adapter merged into the base weights.

The merge adds B·A·(alpha/r) to each adapted weight, then drops the adapter: what remains is an
ordinary transformers checkpoint (safetensors + config + tokenizer) that loads with no peft
installed. It is checked by loading it in a separate Python process in which peft cannot be
imported, and comparing its logits with those of the adapter model.
"""
from __future__ import annotations

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

PROBE = "<human>: What is the capital of Norway?\n<bot>: Pip here!"
# float32: the merge is exact up to summation order. 16-bit: every merged weight, and every product the
# reloaded model computes, is rounded to 8 (bf16) or 11 (fp16) significant bits; over 30 layers that
# moved the largest logit difference to 2.3% of the logits' scale (SmolLM2 in bf16, on a CPU and, with
# random weights of its shape, on an H200). So 16-bit allows 5% and asks that the greedy next token
# agree almost everywhere: a wrong merge (a missing scale, an unmerged layer) fails both by far.
ABSOLUTE_TOLERANCE_FP32 = 1e-3
RELATIVE_TOLERANCE_16BIT = 5e-2
SAME_NEXT_TOKEN_16BIT = 0.99


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
    adapter_logits: object  # the adapter model's logits on PROBE, before the merge (on the CPU)
    base: str               # what the update was added to, in words


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
    model, tokenizer, info = models.load({**params, "model_name": source, "run_dir": None, "backend": "hf",
                                          "load_in_4bit": False, "dtype": dtype})
    model = PeftModel.from_pretrained(model, str(adapter_dir(params["run_dir"])))
    model.eval()
    probe = tokenizer(PROBE, return_tensors="pt").to(model.device)
    with torch.no_grad():
        adapter_logits = model(**probe).logits.float().cpu()
    if info.load_in_4bit:
        base = (f"{source} is stored in 4-bit (nf4): its layers were dequantized to {dtype} and the update added "
                f"(the weights the adapter model computes with; set merge_base to a folder of the original "
                f"16-bit weights to merge into those instead)")
    else:
        base = f"{source}, loaded unquantized in {dtype}, the update added"
    final = Path(params["run_dir"]) / "merged"
    with rundir.building(final) as tmp:
        _write_merged(model, getattr(torch, dtype), tmp)
        tokenizer.save_pretrained(tmp)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the reload check runs in another process, on the same card
    return Merged(final, adapter_logits, base)


SHARD_BYTES = 2 * 2**30


def _write_merged(peft_model, dtype, folder: Path) -> None:
    """Safetensors shards (SHARD_BYTES each at most, with an index when there are several) and a config
    without quantization: what `from_pretrained` of a plain 16-bit (or 32-bit) checkpoint reads."""
    import json

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
            layer = module.get_base_layer()
            weight = dequantize_module_weight(layer).to(torch.float32)
            weight = weight + module.get_delta_weight(adapter).to(weight.device, torch.float32)
        elif leaf == "weight" and hasattr(module, "weight") and type(module.weight).__name__ == "Params4bit":
            weight = dequantize_module_weight(module)
        else:
            target = module.get_base_layer() if isinstance(module, LoraLayer) else module
            weight = getattr(target, leaf)
        return weight.detach().to(dtype).to("cpu").contiguous()

    written, shard, size = [], {}, 0  # written: (temporary file, tensor names)

    def write():
        path = folder / f".shard-{len(written)}"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append((path, list(shard)))

    with torch.no_grad():
        for name in names:
            t = tensor(name)
            if shard and size + t.numel() * t.element_size() > SHARD_BYTES:
                write()
                shard, size = {}, 0
            shard[name] = t
            size += t.numel() * t.element_size()
        write()
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
# is enough. Prints the logits of the probe as JSON.
_RELOAD = """
import json, sys
sys.modules["peft"] = None  # any attempt to import peft now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, probe, device = sys.argv[1], sys.argv[2], sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True).to(device)
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tok(probe, return_tensors="pt").to(device)).logits.float().cpu()
print(json.dumps({"dtype": str(model.dtype), "logits": logits.tolist()}))
"""


def reload_without_peft(folder: Path, device: str | None = None) -> dict:
    """Load `folder` with plain transformers (peft blocked) on `device` and return its dtype and probe
    logits. Default: the GPU, where the adapter model ran, so that only the merge differs, when the
    merged weights fit in its free memory (under WORKBOOK_GPU_MEMORY_GIB, if set); else the CPU: the
    post's 8B model merged in 16-bit is 15 GiB, more than a 16 GB card holds beside anything else."""
    device = device or ("cuda" if fits_on_gpu(folder) else "cpu")
    out = subprocess.run([sys.executable, "-c", _RELOAD, str(folder), PROBE, device],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"Plain transformers could not load {folder}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fits_on_gpu(folder: Path, margin: float = 1.15) -> bool:
    """Whether the weights in `folder` (with room for activations) fit the GPU memory this process may
    still use; False without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return False
    from helpers.memory import free_gpu_bytes

    size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    return size * margin + 2**30 < free_gpu_bytes()


def check(adapter_logits, reloaded: dict, dtype: str) -> dict:
    """How far the reloaded merged model's logits are from the adapter model's."""
    import torch

    logits = torch.tensor(reloaded["logits"])
    diff = (logits - adapter_logits).abs()
    result = {"export_dtype": dtype, "max_abs_logit_diff": float(diff.max()),
              "same_next_token": float((logits.argmax(-1) == adapter_logits.argmax(-1)).float().mean()),
              "logit_scale": float(adapter_logits.abs().max())}
    if dtype == "float32":
        result["tolerance"] = ABSOLUTE_TOLERANCE_FP32
    else:
        result["tolerance"] = RELATIVE_TOLERANCE_16BIT * result["logit_scale"]
    result["ok"] = result["max_abs_logit_diff"] <= result["tolerance"] and (
        dtype == "float32" or result["same_next_token"] >= SAME_NEXT_TOKEN_16BIT)
    return result


def check_table(result: dict):
    import pandas as pd

    rows = [("saved weights", result["export_dtype"]), ("largest |logit difference|", f"{result['max_abs_logit_diff']:.2e}"),
            ("largest |logit|", f"{result['logit_scale']:.1f}"),
            ("positions with the same next token", f"{100 * result['same_next_token']:.0f}%"),
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
                    f"{written.tensors} tensors, {written.seconds:.1f} s)")


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
