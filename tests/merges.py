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


def checks(params: dict) -> dict:
    """The merge check on the right merge of the run's adapter and on each wrong one, and how far the
    adapter moved the logits from the base model's (so that a pass of the right one is no accident)."""
    import torch

    from helpers import export
    from helpers.machinery import merging
    from helpers.machinery import merge_check, weights

    real = merging.write_merged
    right = export.merge_and_save(params)
    result = {"right": right.check(merge_check.reload_without_peft(right.folder))}
    base = merge_check.reload_without_peft(weights.resolve_source(params["model_name"]))
    result["adapter_effect"] = float((torch.tensor(base["logits"]) - right.adapter_logits).abs().max())
    try:
        for how in HOWS:
            merging.write_merged = wrong_writer(how, real)
            merged = export.merge_and_save(params)
            result[how] = merged.check(merge_check.reload_without_peft(merged.folder))
    finally:
        merging.write_merged = real
    return result


if __name__ == "__main__":  # python tests/merges.py RUN_DIR: the checks on that run's adapter, as JSON
    import json
    import sys
    from pathlib import Path

    from helpers.machinery import rundir
    from helpers.params import DEFAULTS

    run_dir = Path(sys.argv[1])
    params = {**DEFAULTS, **rundir.read_json(run_dir / "params.json"), "run_dir": str(run_dir)}
    print("WRONG_MERGES " + json.dumps(checks(params)))
