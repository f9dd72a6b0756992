"""Whether a merged folder computes what the adapter model computed: it is loaded with plain
transformers in another process in which peft cannot be imported, placed as that process finds the
card, and its logits on a probe text are compared with the merge's own, within a tolerance that fits
the saved dtype; greedy tokens are compared where the adapter model's top two are not a near-tie."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from helpers import rundir


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
from helpers.model.memory import placement
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
    out = subprocess.run([sys.executable, "-c", _RELOAD, str(rundir.REPO_ROOT), str(folder),
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
