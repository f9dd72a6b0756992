"""Step 7's GGUF file: `model.gguf` written from the merged folder (by the workbook's writer, or llama.cpp's
converter where installed), the Ollama `Modelfile` beside it, and how close llama.cpp's answers from the
file come to the merged model's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from helpers.data import formats, split
from helpers.evaluation import questions
from helpers.export import gguf_meta, gguf_write, llama_cpp, ollama
from helpers.export.gguf_write import Written
from helpers.export.merge import seconds_text


def find_llama_cpp() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py: in $LLAMA_CPP_DIR, or on PATH."""
    if os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        if candidate.exists():
            return candidate
    found = shutil.which("convert_hf_to_gguf.py")
    return Path(found) if found else None


def write(merged_dir: Path, run_dir, outtype: str = "q8_0", writer: str = "gguf"):
    """run_dir/model.gguf from the merged folder, written by the `gguf` package (`writer='gguf'`) or by
    llama.cpp's converter (`'llama.cpp'`, where installed). Returns (gguf_export.Written or None, what
    happened): a model the writer cannot handle is a message, not an error, so the notebook goes on."""
    target = Path(run_dir) / "model.gguf"
    if writer == "llama.cpp":
        return _gguf_with_llama_cpp(merged_dir, target, outtype)
    try:
        written = gguf_write.write(merged_dir, target, outtype, name=Path(run_dir).name)
    except gguf_meta.UnsupportedModel as e:
        return None, f"GGUF export skipped: {e}"
    return written, (f"GGUF written by the gguf package: model.gguf ({written.size_mb:.1f} MB, {outtype}, "
                    f"{written.tensors} tensors, {written.seconds:.1f} s; {seconds_text(written.parts)}, "
                    f"side by side)")


def held_out_texts(run_dir, n: int) -> list[str]:
    """`n` held-out rows of the run as whole texts (prompt, reference answer, the end of turn): probe
    texts for comparing two forms of the merged model, so the split is read as 03 made it, not checked
    against the parameters of now (a later `-p eval_fraction ...` must not stop an export)."""
    from transformers import AutoTokenizer


    _, held_out = split.load(Path(run_dir))
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "merged")  # saved with the merge, ready for chat
    end = formats.end_of_turn_token(tokenizer) or tokenizer.eos_token or ""
    return [prompt + reference + end for _, prompt, reference in questions.prompts(held_out, tokenizer, n)]


MEASURED_UP_TO_BYTES = 4 * 10**9  # the comparison holds the merged model in float32 in CPU memory


def agreement(merged_dir: Path, gguf_file, run_dir, rows: int = 4):
    """(a table or None, what happened): `model.gguf` opened by llama.cpp, the engine of Ollama, LM Studio
    and llama-cli, and compared with the merged model on `rows` held-out rows fed at every position
    (llama_cpp.compare). Measured where llama-cpp-python is installed and the model is small
    enough to hold in float32 here; otherwise the message says why not."""
    if gguf_file is None:
        return None, "No model.gguf to measure."
    if not llama_cpp.available():
        return None, f"Not measured with llama.cpp here: its Python binding is not installed ({llama_cpp.INSTALL})."
    size = sum(f.stat().st_size for f in Path(merged_dir).glob("*.safetensors"))
    if size > MEASURED_UP_TO_BYTES:
        return None, (f"Not measured in the notebook at this size ({size / 1e9:.1f} GB of merged weights): "
                      "bench/gguf_llama_cpp.py measures it.")
    r = llama_cpp.compare(merged_dir, gguf_file.path, held_out_texts(run_dir, rows))
    table = pd.DataFrame([
        ("type", gguf_file.outtype), ("size", f"{gguf_file.size_mb:.1f} MB"),
        ("same token ids as the tokenizer", f"{sum(r['same_ids'])} of {len(r['same_ids'])} rows"),
        ("same greedy token as the merged model", f"{r['same_next_token']:.1%} of {r['positions']} positions"),
        ("where the choice is clear of rounding", f"{r['decided_same']} of {r['decided_positions']}"),
        ("largest logit difference", f"{r['max_abs_logit_diff']:.3g} (largest logit {r['logit_scale']:.3g})"),
    ], columns=["llama.cpp against the merged model", "value"]).set_index("llama.cpp against the merged model")
    return table, f"model.gguf opened by llama.cpp (llama-cpp-python) and compared on {len(r['same_ids'])} held-out rows."


def _gguf_with_llama_cpp(merged_dir: Path, target: Path, outtype: str):
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
