"""Step 4: SFTConfig's values for this machine, and the SFTConfig that 04 saves for step 5."""
import json

import pytest
import torch

from conftest import notebooks
from helpers.params import DEFAULTS
from helpers.training import arguments


def test_cpu_config_replaces_gpu_only_choices(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    a, differences = arguments.for_this_machine({**DEFAULTS, "run_dir": str(tmp_path)})
    kwargs = a.kwargs
    assert kwargs["optim"] == "adamw_torch" and kwargs["use_cpu"] is True
    assert kwargs["bf16"] is False and kwargs["fp16"] is False
    assert kwargs["gradient_checkpointing"] is False
    assert {d[0] for d in differences} == {"optim", "precision", "loss_type"}
    for name in arguments.SEED_ARGUMENTS:
        if name != "optim":
            assert kwargs[name] == DEFAULTS[name]
    from trl import SFTConfig

    SFTConfig(**kwargs)  # TRL accepts every argument


def test_04_saves_exactly_its_sftconfig(tiny_values):
    """What step 5 rebuilds with SFTConfig(**saved) is the object 04 built: every argument, none of the
    hub token that to_dict would mask."""
    from trl import SFTConfig

    built = notebooks(tiny_values, "04")["04"]["args"]
    saved = json.loads((arguments.Path(tiny_values["run_dir"]) / arguments.FILE).read_text())
    assert SFTConfig(**saved).to_dict() == built.to_dict()
    assert "hub_token" not in saved and saved["max_steps"] == 8 and saved["learning_rate"] == 1e-2


def test_a_hub_token_never_lands_in_the_run_folder(tmp_path):
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, hub_token="hf_secret123")
    path = arguments.save(args, tmp_path)
    assert "hf_secret123" not in path.read_text() and "hub_token" not in json.loads(path.read_text())


def test_keys_that_to_dict_adds_beyond_the_fields_are_not_saved(tmp_path):
    """unsloth patches TrainingArguments.to_dict to add `push_to_hub_token` (None), which is no field of
    SFTConfig: 04 stopped with an AttributeError on the GPU before save kept to the fields."""
    from trl import SFTConfig

    class Patched(SFTConfig):
        def to_dict(self):
            return {**super().to_dict(), "push_to_hub_token": None}

    args = Patched(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=3)
    saved = json.loads(arguments.save(args, tmp_path).read_text())
    assert "push_to_hub_token" not in saved and Patched(**saved).to_dict() == args.to_dict()


def test_a_value_that_is_the_fields_default_but_not_the_constructors_is_saved(tmp_path):
    """unsloth's SFTConfig has an __init__ of its own with other defaults than the dataclass fields: a
    value left out of sft_config.json because it equals the field's default came back as unsloth's."""
    from trl import SFTConfig

    class OwnDefaults(SFTConfig):
        def __init__(self, *args, save_strategy="no", **kwargs):
            super().__init__(*args, save_strategy=save_strategy, **kwargs)

    args = OwnDefaults(output_dir=str(tmp_path), use_cpu=True, bf16=False, save_strategy="steps")
    saved = json.loads(arguments.save(args, tmp_path).read_text())
    assert saved["save_strategy"] == "steps" and OwnDefaults(**saved).to_dict() == args.to_dict()


def test_step_4_checks_its_own_parameters(tiny_values):
    from helpers.params import ParameterError

    with pytest.raises(ParameterError, match="'warmup_steps' = 20 is more than max_steps = 8"):
        notebooks({**tiny_values, "warmup_steps": 20}, "04")


def test_effective_batch_size():
    assert arguments.effective_batch_size({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}) == 8
    assert arguments.effective_batch_size({"per_device_train_batch_size": 2,
                                           "gradient_accumulation_steps": 4}, world_size=2) == 16


def test_linear_schedule_warms_up_then_decays():
    kwargs = {"learning_rate": 1e-3, "warmup_steps": 4, "max_steps": 20, "lr_scheduler_type": "linear"}
    rates = list(arguments.lr_schedule(kwargs).values())
    assert list(arguments.lr_schedule(kwargs)) == list(range(1, 21))
    assert rates[0] == 0.0 and rates[4] == pytest.approx(1e-3)
    assert rates[:5] == sorted(rates[:5]) and rates[4:] == sorted(rates[4:], reverse=True)
    assert rates[-1] == pytest.approx(1e-3 / 16)


def test_schedule_of_a_trillion_steps_costs_what_twenty_do():
    kwargs = {"learning_rate": 1e-3, "warmup_steps": 20, "max_steps": 10**12, "lr_scheduler_type": "linear"}
    rates = arguments.lr_schedule(kwargs)  # was: a Python loop of max_steps scheduler steps
    assert len(rates) <= 2001 and min(rates) == 1 and max(rates) == 10**12
    assert rates[21] == pytest.approx(1e-3) and rates[1] == 0.0


def test_config_table_shows_effective_batch(tmp_path):
    a, _ = arguments.for_this_machine({**DEFAULTS, "run_dir": str(tmp_path)})
    table = arguments.table(a.kwargs)
    assert table.loc["effective batch size", "value"] == 8
    assert table.loc["samples seen in training", "value"] == 8 * DEFAULTS["max_steps"]


@pytest.mark.parametrize("loaded, bf16, fp16", [("float16", False, True), ("bfloat16", True, False),
                                                ("float32", False, False)])
def test_training_precision_follows_the_dtype_01_loaded(tmp_path, monkeypatch, loaded, bf16, fp16):
    # dtype float16 on an H100: 05 failed after 01-04, as the trainer took bf16 from the card (unsloth:
    # "Model is in float16 precision but you want to use bfloat16 precision")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "load.json").write_text(json.dumps({"compute_dtype": loaded}))
    a, differences = arguments.for_this_machine({**DEFAULTS, "run_dir": str(tmp_path), "optim": "adamw_torch"})
    assert (a.bf16, a.fp16) == (bf16, fp16)
    assert any(d[0] == "precision" for d in differences) == (loaded != "bfloat16")


def test_a_step_of_more_rows_than_the_data_has_is_refused(tmp_path):
    import pyarrow as pa

    from helpers.params import ParameterError

    (tmp_path / "data").mkdir()
    table = pa.table({"input_ids": [[1, 2]] * 90})
    with pa.OSFile(str(tmp_path / "data" / "train.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    params = {**DEFAULTS, "run_dir": str(tmp_path), "optim": "adamw_torch"}
    arguments.for_this_machine(params)  # 8 rows a step of 90
    # was accepted, and 05 then said "111111111.11 of an epoch"
    with pytest.raises(ParameterError, match=r"2 x 1000000000 = 2,000,000,000 rows an optimizer step, and 03 "
                                             r"kept 90 training rows"):
        arguments.for_this_machine({**params, "gradient_accumulation_steps": 10**9})
