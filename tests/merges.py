"""Merges made wrong on purpose, the way a buggy merge is wrong, for the merge check to refuse
(tests/test_after_training.py on the CPU; tests/test_gpu.py on a checkpoint stored in 4-bit, in a
process of its own, where this file is run as a script)."""
from __future__ import annotations

HOWS = ("scale", "layer")


def wrong_writer(how: str, real):
    """A stand-in for merging.write_merged (`real`) that writes the update twice over (`how="scale"`: as
    if alpha/r were doubled) or leaves the first decoder layer's update out (`"layer"`)."""
    from peft.tuners.lora import LoraLayer

    if how not in HOWS:
        raise ValueError(f"how={how!r}: expected one of {HOWS}")

    def write(peft_model, dtype, folder):
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            delta = module.get_delta_weight
            if how == "scale":
                module.get_delta_weight = lambda adapter, delta=delta: 2 * delta(adapter)
            elif ".layers.0." in name:
                module.get_delta_weight = lambda adapter, delta=delta: 0 * delta(adapter)
        real(peft_model, dtype, folder)

    return write


def load_for_merge(run_dir, dtype: str):
    """The run's adapter on its base, loaded as 07's first cell loads them for the merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import rundir
    from helpers.export import merge

    adapter = rundir.artifact(run_dir, "adapter")
    source = merge.base_of(adapter)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **merge.where_to_merge(source))
    return PeftModel.from_pretrained(base, adapter), AutoTokenizer.from_pretrained(adapter)


def checks(run_dir: str, dtype: str) -> dict:
    """The merge check on the right merge of the run's adapter and on each wrong one, and how far the
    adapter moved the logits from the base model's (so that a pass of the right one is no accident)."""
    import torch

    from helpers import rundir
    from helpers.export import merge, merge_check, merging

    dtype = merge.export_dtype(dtype)  # "auto": 07's choice for this machine

    def merged():
        return merge.merge_and_save(*load_for_merge(run_dir, dtype), run_dir, dtype)

    real = merging.write_merged
    right = merged()
    result = {"right": right.check(merge_check.reload_without_peft(right.folder))}
    base = merge_check.reload_without_peft(merge.base_of(rundir.artifact(run_dir, "adapter")))
    result["adapter_effect"] = float((torch.tensor(base["logits"]) - right.adapter_logits).abs().max())
    try:
        for how in HOWS:
            merging.write_merged = wrong_writer(how, real)
            result[how] = (m := merged()).check(merge_check.reload_without_peft(m.folder))
    finally:
        merging.write_merged = real
    return result


if __name__ == "__main__":  # python tests/merges.py RUN_DIR DTYPE: the checks on that run's adapter, as JSON
    import json
    import sys

    print("WRONG_MERGES " + json.dumps(checks(sys.argv[1], sys.argv[2])))
