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
from pathlib import Path

from helpers import rundir
from helpers import model as models
from helpers.evaluate import adapter_dir

PROBE = "<human>: What is the capital of Norway?\n<bot>: Pip here!"
# float32: the merge is exact up to summation order. 16-bit: every merged weight is rounded to 8 (bf16)
# or 11 (fp16) significant bits, which moves logits by about a percent of their scale.
ABSOLUTE_TOLERANCE_FP32 = 1e-3
RELATIVE_TOLERANCE_16BIT = 2e-2


def export_dtype(params: dict) -> str:
    """`auto`: float32 on a CPU (the precision it trained in); on a GPU the training precision, 16-bit,
    like unsloth's `merged_16bit`."""
    if params["export_dtype"] != "auto":
        return params["export_dtype"]
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def merge(params: dict):
    """(adapter model, merged model, tokenizer): the base loaded unquantized in the export dtype (a
    merge into 4-bit weights would round the update away), the adapter applied, then merged."""
    import torch
    from peft import PeftModel

    dtype = export_dtype(params)
    base, tokenizer, _ = models.load({**params, "run_dir": None, "backend": "hf", "load_in_4bit": False,
                                      "dtype": dtype})
    model = PeftModel.from_pretrained(base, str(adapter_dir(params["run_dir"])))
    model.eval()
    probe = tokenizer(PROBE, return_tensors="pt").to(base.device)
    with torch.no_grad():
        adapter_logits = model(**probe).logits.float().cpu()
    merged = model.merge_and_unload()
    return adapter_logits, merged, tokenizer


def save_merged(merged, tokenizer, run_dir) -> Path:
    """run_dir/merged: safetensors weights, config, tokenizer; written under a temporary name first."""
    final = Path(run_dir) / "merged"
    with rundir.building(final) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final


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
    """Load `folder` with plain transformers (peft blocked) on `device` (default: the GPU if there is
    one, where the adapter model ran, so that only the merge differs); its dtype and probe logits."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = subprocess.run([sys.executable, "-c", _RELOAD, str(folder), PROBE, device], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"Plain transformers could not load {folder}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    result["ok"] = result["max_abs_logit_diff"] <= result["tolerance"]
    return result


def check_table(result: dict):
    import pandas as pd

    rows = [("saved weights", result["export_dtype"]), ("largest |logit difference|", f"{result['max_abs_logit_diff']:.2e}"),
            ("largest |logit|", f"{result['logit_scale']:.1f}"),
            ("positions with the same next token", f"{100 * result['same_next_token']:.0f}%"),
            ("check", f"{'passed' if result['ok'] else 'FAILED'} (tolerance {result['tolerance']:.3g})")]
    return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def unsloth_merged(params: dict, run_dir) -> Path | None:
    """unsloth's own merged save (`merged_16bit`), on the unsloth backend only."""
    if models.choose_backend(params["backend"]) != "unsloth":
        return None
    from unsloth import FastLanguageModel

    # unsloth reads adapter_config.json, loads the base it names, and puts the adapter on top
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir(run_dir)), max_seq_length=params["max_seq_length"],
        load_in_4bit=params["load_in_4bit"])
    final = Path(run_dir) / "merged_unsloth"
    with rundir.building(final) as tmp:
        model.save_pretrained_merged(str(tmp), tokenizer, save_method="merged_16bit")
    return final


def find_llama_cpp() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py: in $LLAMA_CPP_DIR, or on PATH."""
    if os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        if candidate.exists():
            return candidate
    found = shutil.which("convert_hf_to_gguf.py")
    return Path(found) if found else None


def gguf(merged_dir: Path, run_dir, outtype: str = "f16") -> tuple[Path | None, str]:
    """(the GGUF file, a message). Where llama.cpp is not installed: (None, why it was skipped)."""
    script = find_llama_cpp()
    if script is None:
        return None, ("GGUF export skipped: llama.cpp's convert_hf_to_gguf.py was not found. Clone "
                      "https://github.com/ggml-org/llama.cpp, `pip install -r requirements/requirements-convert_hf_to_gguf.txt` "
                      "there, and set LLAMA_CPP_DIR to the clone (or put the script on PATH); then re-run this cell.")
    target = Path(run_dir) / "model.gguf"
    tmp = target.with_name(".model.gguf.partial")
    out = subprocess.run([sys.executable, str(script), str(merged_dir), "--outfile", str(tmp), "--outtype", outtype],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{script} failed:\n{out.stderr[-2000:]}")
    tmp.replace(target)
    return target, f"GGUF written: {target} ({target.stat().st_size / 2**20:.0f} MiB, {outtype})"


def files_table(folder: Path):
    import pandas as pd

    rows = [(p.name, f"{p.stat().st_size / 2**20:.1f} MiB") for p in sorted(folder.iterdir())]
    return pd.DataFrame(rows, columns=["file", "size"]).set_index("file")
