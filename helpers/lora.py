"""Step 2: add LoRA adapters to the frozen model, and show how few weights now train."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from helpers.machinery import rundir
from helpers.params import pick


def checkpointing(model, backend: str, *, use_gradient_checkpointing, per_device_train_batch_size: int,
                  max_seq_length: int) -> tuple[object, list]:
    """The `use_gradient_checkpointing` value for this machine, and the differences from what was asked
    (`auto` decides from the activations of a batch of that size and length)."""
    return checkpointing_for(model.config, backend, use_gradient_checkpointing=use_gradient_checkpointing,
                             per_device_train_batch_size=per_device_train_batch_size, max_seq_length=max_seq_length)


def checkpointing_for(config, backend: str, *, use_gradient_checkpointing, per_device_train_batch_size: int,
                      max_seq_length: int) -> tuple[object, list]:
    """`checkpointing` from the model's config alone (step 4 sizes its passes before a model is loaded)."""
    import torch

    from helpers.machinery.memory import choose_checkpointing

    differences = []
    gc, why = choose_checkpointing(use_gradient_checkpointing, config, per_device_train_batch_size,
                                   max_seq_length, backend=backend)
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


def prepare_for_training(model, gc):
    """What unsloth's get_peft_model does before adding adapters, for the hf backend: gradient
    checkpointing, and for a 4-bit model peft's preparation (norms in fp32, inputs that need grads)."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        # non-reentrant checkpointing also works under DistributedDataParallel (make train-multi)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(gc),
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False  # the cache only helps generation; training with it on just warns
    return model


def add_lora(model, params: dict, backend: str):
    """Wrap `model` with LoRA adapters as the post does: `get_peft_model` with the same arguments (the
    calls notebook 02 spells out, for the notebooks that rebuild the model from the run folder).

    Returns (peft_model, differences) where differences lists what this machine does differently.
    """
    import torch

    gc, differences = checkpointing(model, backend, **pick(params, checkpointing))
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=params["lora_r"], target_modules=params["target_modules"],
            lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"], bias=params["bias"],
            use_gradient_checkpointing=gc, random_state=params["random_state"],
            max_seq_length=params["max_seq_length"], use_rslora=params["use_rslora"],
            loftq_config=params["loftq_config"])
        return model, differences

    from peft import LoraConfig, get_peft_model

    model = prepare_for_training(model, gc)
    config = LoraConfig(
        r=params["lora_r"], target_modules=params["target_modules"], lora_alpha=params["lora_alpha"],
        lora_dropout=params["lora_dropout"], bias=params["bias"], use_rslora=params["use_rslora"],
        loftq_config=params["loftq_config"] or {}, task_type="CAUSAL_LM")
    torch.manual_seed(params["random_state"])  # same LoRA initialisation on every run
    return get_peft_model(model, config), differences


# What 02's call sets, as peft keeps it (model.peft_config) -> the workbook parameter that carries it.
READ_BACK = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "target_modules": "target_modules", "bias": "bias", "use_rslora": "use_rslora"}


def save_config(params: dict, model) -> dict:
    """After 02's get_peft_model call: the LoRA settings the model really has (peft's own record of the
    call) where they differ from the parameters, saved in the run folder so that step 5 builds the same
    LoRA (`cell_edits`). Returns {parameter: value} of what the cell changed."""
    from helpers.machinery import cell_edits

    config = model.peft_config["default"]
    built = {name: getattr(config, field) for field, name in READ_BACK.items()}
    built["target_modules"] = sorted(built["target_modules"])
    asked = {name: params[name] for name in READ_BACK.values()}
    asked["target_modules"] = sorted(asked["target_modules"])
    edits = cell_edits.record(params["run_dir"], "02", "get_peft_model", built, asked, {})
    asked_start = {k: params[k] for k in START_PARAMETERS}
    rundir.write_json(Path(rundir.resolve(params["run_dir"])) / START_FILE, {**start_state(model), "parameters": asked_start})
    return edits


# What peft cannot say about 02's call: the seed its LoRA weights started from and the checkpointing it
# set. Step 5 rebuilds the LoRA from the parameters and compares (`refuse_unseen_edits`).
START_FILE = "lora_start.json"
START_PARAMETERS = ("random_state", "loftq_config", "use_gradient_checkpointing")


def start_state(model) -> dict:
    """A fingerprint of the LoRA weights as they start (the first A matrix's first values and the sum of
    all A matrices: another seed changes both) and the gradient checkpointing the model has."""
    a = [p.detach() for n, p in model.named_parameters() if "lora_A" in n]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    gc = next((getattr(m, "_unsloth_gradient_checkpointing") for m in (model, base)
               if hasattr(m, "_unsloth_gradient_checkpointing")), bool(getattr(base, "is_gradient_checkpointing", False)))
    return {"first_values": a[0].flatten()[:16].double().tolist() if a else [],
            "sum": float(sum(x.double().sum() for x in a)) if a else 0.0,
            "count": int(sum(x.numel() for x in a)), "gradient_checkpointing": str(gc)}


def refuse_unseen_edits(model, params: dict) -> None:
    """In step 5, after the LoRA was built again from the parameters: refuse to train when 02's cell built
    one that started elsewhere (an edit of random_state, loftq_config or init_lora_weights inside the call)
    or checkpointed otherwise (use_gradient_checkpointing; not under "auto", which decides again from the
    memory free here). Nothing to compare when 02 did not run in this run folder, or ran with other
    parameters than these (the parameters win, as everywhere)."""
    import math

    from helpers.machinery.errors import ParameterError

    saved = rundir.read_json(Path(rundir.resolve(params["run_dir"])) / START_FILE, default=None)
    if not saved or saved.get("parameters") != {k: params[k] for k in START_PARAMETERS}:
        return
    now = start_state(model)
    same_start = (now["count"] == saved["count"] and math.isclose(now["sum"], saved["sum"], rel_tol=1e-6, abs_tol=1e-6)
                  and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(now["first_values"], saved["first_values"])))
    if not same_start:
        raise ParameterError(
            f"02's get_peft_model cell built LoRA weights that start elsewhere than the parameters give "
            f"(random_state={params['random_state']!r}, loftq_config={params['loftq_config']!r}): step 5 builds the "
            "LoRA again from the parameters, so an edit of how the weights start inside that call cannot reach "
            "training. Set random_state (or loftq_config) in 02's parameters cell instead, and run 02 again.")
    if params["use_gradient_checkpointing"] != "auto" and now["gradient_checkpointing"] != saved["gradient_checkpointing"]:
        raise ParameterError(
            f"02's get_peft_model cell set gradient checkpointing {saved['gradient_checkpointing']}, but the "
            f"parameters (use_gradient_checkpointing={params['use_gradient_checkpointing']!r}) give "
            f"{now['gradient_checkpointing']} here: set use_gradient_checkpointing in 02's parameters cell instead.")


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
    import pandas as pd

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
    from helpers.machinery import plots

    fig, ax = plots.new_figure()
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
    return plots.finish(fig, path)


def adapter_size(model):
    """What the adapter of step 5 will weigh: its trainable weights times their bytes."""
    from helpers.machinery.tables import Sentences

    weights = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in weights)
    size = sum(p.numel() * p.element_size() for p in weights)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in weights})
    return Sentences(f"**{count:,} weights train**, stored in {' and '.join(dtypes)} "
                     f"({size / count:.0f} bytes each), so the adapter that step 5 saves will be about "
                     f"**{size / 1e6:.1f} MB**; the model it sits on is not saved with it.")
