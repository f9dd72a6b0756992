"""Step 2: what the LoRA call needs on this machine, and how few weights now train.

02 spells out the post's `get_peft_model` call and saves what it built (peft's `save_pretrained`:
r, alpha, the modules, the initial weights and anything else the call was given); step 5 loads that
folder to train it."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from helpers import checks, rundir, show
from helpers.model.memory import choose_checkpointing
from helpers.params import ParameterError
from helpers.show import Sentences


def for_this_machine(model, backend: str, params: dict) -> tuple[object, list]:
    """Before 02's get_peft_model call: the `use_gradient_checkpointing` value for this machine (`auto`
    decides from the activations of a batch), the differences from what was asked, and a check that
    every entry of `target_modules` names linear layers of `model` (LoRA would leave it out silently)."""
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if "Linear" in type(module).__name__}
    unknown = [m for m in params["target_modules"] if m not in linear]
    if unknown:
        raise ParameterError(f"Parameter 'target_modules' names {unknown}, which are no linear layers of this "
                             f"model: LoRA would leave them out silently. Its linear layers: {sorted(linear)}.")
    checks.refuse_tied(params["target_modules"], tied_output_layer(model))
    return checkpointing(model.config, backend, params)


def tied_output_layer(model) -> str | None:
    """The output layer's name where it shares its weight with the input embeddings (tie_word_embeddings),
    else None."""
    out, into = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or into is None or out.weight is not into.weight:
        return None
    return next(name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is out)


def checkpointing(config, backend: str, params: dict) -> tuple[object, list]:
    """`use_gradient_checkpointing` for this machine from the model's config (`auto` decides from the
    activations of a pass of per_device_train_batch_size rows of max_seq_length tokens), and the
    differences from what was asked. 02 shows it in its call and saves it beside the LoRA
    (`save_checkpointing`); 05 applies it when it loads the LoRA to train."""
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config, trust_remote_code=params["trust_remote_code"])
    differences = []
    gc, why = choose_checkpointing(params["use_gradient_checkpointing"], config, params["per_device_train_batch_size"],
                                   params["max_seq_length"], backend=backend)
    if why:
        differences.append(("use_gradient_checkpointing", "auto", gc, why))
    if backend == "hf" and gc == "unsloth":
        # unsloth's variant offloads activations to CPU RAM; plain checkpointing is the HF equivalent.
        # On a CPU memory is plentiful and recomputation costs a third more time, so it is skipped.
        on_gpu = torch.cuda.is_available()
        gc = on_gpu
        differences.append(("use_gradient_checkpointing", "unsloth", gc,
                            "unsloth's offloaded checkpointing exists only in unsloth; "
                            + ("plain checkpointing instead" if on_gpu else "not needed for memory on CPU")))
    return gc, differences


CHECKPOINTING = "checkpointing.json"  # beside 02's LoRA: what its call set for use_gradient_checkpointing


def save_checkpointing(folder, gc) -> None:
    rundir.write_json(Path(folder) / CHECKPOINTING, {"use_gradient_checkpointing": gc})


def saved_checkpointing(folder):
    """The use_gradient_checkpointing 02's call set, as it saved it beside the LoRA."""
    saved = rundir.read_json(Path(folder) / CHECKPOINTING)
    if saved is None:  # a LoRA saved by something other than 02 (or an older 02)
        raise FileNotFoundError(f"No {CHECKPOINTING} in {folder}: run 02_lora.ipynb with this run_dir again.")
    return saved["use_gradient_checkpointing"]


def prepare_for_training(model, gc):
    """What unsloth's get_peft_model does before adding adapters, for the hf backend: gradient
    checkpointing, and for a 4-bit model peft's preparation (norms in fp32, inputs that need grads)."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        # non-reentrant checkpointing also works under DistributedDataParallel (make train-multi)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(gc),
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return ready_to_train(model, gc)


def ready_to_train(model, gc):
    """On the hf backend, what unsloth's loading does with `use_gradient_checkpointing`: recompute
    activations in the backward pass (inputs that need grads, so that frozen embeddings still pass a
    gradient through the checkpointed blocks), and no generation cache while training."""
    if gc and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False  # the cache only helps generation; training with it on just warns
    return model


def _module_kind(name: str, targets: list[str]) -> str:
    for target in targets:
        if f".{target}." in f".{name}." or name.endswith(f".{target}"):
            return target
    if "embed" in name:
        return "embeddings"
    if "lm_head" in name:
        return "lm_head"
    if "norm" in name:
        return "norms"
    return "other"


def parameter_table(model, targets: list[str]):
    """Trainable vs total parameters per kind of layer (LoRA A/B counted with the layer they adapt)."""
    total, trainable = defaultdict(int), defaultdict(int)
    for name, p in model.named_parameters():
        kind = _module_kind(name, targets)
        total[kind] += p.numel()
        if p.requires_grad:
            trainable[kind] += p.numel()
    order = [t for t in targets if t in total] + sorted(k for k in total if k not in targets)
    rows = [(k, total[k], trainable[k]) for k in order]
    rows.append(("all", sum(total.values()), sum(trainable.values())))
    df = pd.DataFrame(rows, columns=["layer", "parameters", "trainable"]).set_index("layer")
    df["trainable %"] = (100 * df["trainable"] / df["parameters"]).round(3)
    return df


def plot_parameters(table, path=None):
    """Bar chart: frozen vs trainable parameters per layer kind, on a linear scale, so that LoRA's share
    looks as small as it is; each bar says its trainable share."""
    fig, ax = show.new_figure()
    data = table.drop(index="all")
    millions = data["parameters"] / 1e6
    ax.barh(data.index, millions, color="#cbd5e1", label="frozen (base model)")
    ax.barh(data.index, data["trainable"] / 1e6, color="#2563eb", label="trainable (LoRA)")
    for y, (total, share) in enumerate(zip(millions, data["trainable %"])):
        ax.annotate(f" {share:.1f}%", xy=(total, y), va="center", fontsize=8)
    ax.set_xlim(0, millions.max() * 1.15)
    ax.set_xlabel("parameters (millions)")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    ax.set_title(f"{table.loc['all', 'trainable %']:.2f}% of the weights train")
    return show.finish(fig, path)


def adapter_size(model):
    """What the adapter of step 5 will weigh: its trainable weights times their bytes."""
    weights = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in weights)
    size = sum(p.numel() * p.element_size() for p in weights)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in weights})
    return Sentences(f"**{count:,} weights train**, stored in {' and '.join(dtypes)} "
                     f"({size / count:.0f} bytes each), so the adapter that step 5 saves will be about "
                     f"**{size / 1e6:.1f} MB**; the model it sits on is not saved with it.")
