"""Step 7: one folder that anyone can load: the LoRA adapter merged into the base weights.

The merge adds B·A·(alpha/r) to each adapted weight, then drops the adapter: what remains is an
ordinary transformers checkpoint (safetensors + config + tokenizer) that loads with no peft
installed. It is checked by loading it in a separate Python process in which peft cannot be
imported, and comparing its logits with those of the adapter model.
"""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.machinery import rundir
from helpers.machinery import gguf_meta
from helpers import model as models
from helpers.machinery import machine, merging, weights
from helpers.machinery.rundir import adapter_dir
from helpers.machinery.memory import placement
from helpers.machinery.merge_check import PROBE, check

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
    on_cpu = merges_on_cpu(weights.resolve_source(source))
    model, tokenizer, info = models.load({**params, "model_name": source, "run_dir": None, "backend": "hf",
                                          "load_in_4bit": False, "dtype": dtype}, cpu=on_cpu)
    model = PeftModel.from_pretrained(model, str(adapter_dir(params["run_dir"])))
    model.eval()
    probe = tokenizer(PROBE, return_tensors="pt").to(model.device)
    with torch.no_grad():
        adapter_logits = model(**probe).logits.float().cpu()
    merged_logits = merging.logits_as_merged(model, probe, getattr(torch, dtype))
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
        merging.write_merged(model, getattr(torch, dtype), tmp)
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

    if not torch.cuda.is_available() or weights.is_prequantized(source) or not Path(source).is_dir():
        return False
    return placement(Path(source)).where != "gpu"


def unsloth_merged(run_dir, *, model_name: str, backend: str, max_seq_length: int,
                   load_in_4bit: bool) -> tuple[Path | None, str]:
    """unsloth's own merged save (`merged_16bit`), where it can succeed: on the unsloth backend, from a
    base stored in 16-bit. From a base stored in 4-bit it would fetch the original 16-bit weights from
    the hub (or refuse, offline); `merge_and_save` covers that case. Returns (folder or None, what happened)."""
    if machine.choose_backend(backend) != "unsloth":
        return None, "unsloth merged save: not on this backend (needs unsloth on an NVIDIA GPU)"
    if weights.is_prequantized(weights.resolve_source(model_name)):
        return None, ("unsloth merged save: skipped: the base is stored in 4-bit, and unsloth's merged_16bit "
                      "would download its original 16-bit weights from the hub; the merge above dequantized it")
    from unsloth import FastLanguageModel

    # unsloth reads adapter_config.json, loads the base it names, and puts the adapter on top
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir(run_dir)), max_seq_length=max_seq_length, load_in_4bit=load_in_4bit)
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
    from helpers.machinery import gguf_export

    target = Path(run_dir) / "model.gguf"
    if writer == "llama.cpp":
        return _gguf_with_llama_cpp(merged_dir, target, outtype)
    try:
        written = gguf_export.write(merged_dir, target, outtype, name=Path(run_dir).name)
    except gguf_meta.UnsupportedModel as e:
        return None, f"GGUF export skipped: {e}"
    return written, (f"GGUF written by the gguf package: model.gguf ({written.size_mb:.1f} MB, {outtype}, "
                    f"{written.tensors} tensors, {written.seconds:.1f} s; {seconds_text(written.parts)}, "
                    f"side by side)")


def held_out_texts(run_dir, n: int) -> list[str]:
    """`n` held-out rows of the run as whole texts (prompt, reference answer, the end of turn): probe
    texts for comparing two forms of the merged model, so the split is read as 03 made it, not checked
    against the parameters of now (a later `-p eval_fraction ...` must not stop an export)."""
    from helpers.machinery import data_report, formats, storage

    _, held_out = storage.load_split(Path(run_dir))
    tokenizer = models.load_tokenizer(str(Path(run_dir) / "merged"))
    end = formats.end_of_turn_token(tokenizer) or tokenizer.eos_token or ""
    return [prompt + reference + end for _, prompt, reference in data_report.held_out_prompts(held_out, tokenizer, n)]


MEASURED_UP_TO_BYTES = 4 * 10**9  # the comparison holds the merged model in float32 in CPU memory


def gguf_agreement(merged_dir: Path, gguf_file, run_dir, rows: int = 4):
    """(a table or None, what happened): `model.gguf` opened by llama.cpp, the engine of Ollama, LM Studio
    and llama-cli, and compared with the merged model on `rows` held-out rows fed at every position
    (llama_cpp_check.compare). Measured where llama-cpp-python is installed and the model is small
    enough to hold in float32 here; otherwise the message says why not."""
    import pandas as pd

    from helpers.machinery import llama_cpp_check

    if gguf_file is None:
        return None, "No model.gguf to measure."
    if not llama_cpp_check.available():
        return None, f"Not measured with llama.cpp here: its Python binding is not installed ({llama_cpp_check.INSTALL})."
    size = sum(f.stat().st_size for f in Path(merged_dir).glob("*.safetensors"))
    if size > MEASURED_UP_TO_BYTES:
        return None, (f"Not measured in the notebook at this size ({size / 1e9:.1f} GB of merged weights): "
                      "bench/gguf_llama_cpp.py measures it.")
    r = llama_cpp_check.compare(merged_dir, gguf_file.path, held_out_texts(run_dir, rows))
    table = pd.DataFrame([
        ("type", gguf_file.outtype), ("size", f"{gguf_file.size_mb:.1f} MB"),
        ("same token ids as the tokenizer", f"{sum(r['same_ids'])} of {len(r['same_ids'])} rows"),
        ("same greedy token as the merged model", f"{r['same_next_token']:.1%} of {r['positions']} positions"),
        ("where the choice is clear of rounding", f"{r['decided_same']} of {r['decided_positions']}"),
        ("largest logit difference", f"{r['max_abs_logit_diff']:.3g} (largest logit {r['logit_scale']:.3g})"),
    ], columns=["llama.cpp against the merged model", "value"]).set_index("llama.cpp against the merged model")
    return table, f"model.gguf opened by llama.cpp (llama-cpp-python) and compared on {len(r['same_ids'])} held-out rows."


def _gguf_with_llama_cpp(merged_dir: Path, target: Path, outtype: str):
    from helpers.machinery.gguf_export import Written

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


def ollama_files(merged_dir: Path, gguf_file, *, system_message: str, chat_max_new_tokens: int,
                 max_seq_length: int, dataset: str) -> str:
    """The Modelfile beside model.gguf (`gguf_file`: what `gguf` returned), and the commands that use
    them (nothing without a GGUF file): the run's system message, answer length and context, and a
    model name from the dataset's."""
    from transformers import AutoTokenizer

    from helpers.machinery import formats, ollama

    if gguf_file is None:
        return "No Modelfile: there is no model.gguf."
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    system = formats.system_message_for(tokenizer, system_message)
    if system is None:  # the template's own default, which Ollama's template does not add by itself
        system = formats.template_system(tokenizer)
    path, note = ollama.write_modelfile(gguf_file.path.parent, tokenizer, gguf_file.path.name, system or None,
                                        chat_max_new_tokens, max_seq_length)
    name = "pip" if "pip_chip2" in str(dataset) else "my-model"
    return (f"Modelfile written beside it ({note}). In the run folder:\n"
            f"    ollama create {name} -f Modelfile\n"
            f"    ollama run {name} \"What is the capital of Japan?\"\n"
            f"or with llama.cpp:\n"
            f"    llama-cli -m model.gguf -cnv")
