import pytest

from helpers import trainer
from helpers.params import DEFAULTS


def test_cpu_config_replaces_gpu_only_choices(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    kwargs, differences = trainer.training_config(DEFAULTS, tmp_path)
    assert kwargs["optim"] == "adamw_torch" and kwargs["use_cpu"] is True
    assert kwargs["bf16"] is False and kwargs["fp16"] is False
    assert kwargs["gradient_checkpointing"] is False
    assert {d[0] for d in differences} == {"optim", "precision", "loss_type"}
    for name in trainer.SEED_ARGUMENTS:
        if name != "optim":
            assert kwargs[name] == DEFAULTS[name]
    from trl import SFTConfig

    SFTConfig(**kwargs)  # TRL accepts every argument


def test_effective_batch_size():
    assert trainer.effective_batch_size({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}) == 8
    assert trainer.effective_batch_size({"per_device_train_batch_size": 2,
                                         "gradient_accumulation_steps": 4}, world_size=2) == 16


def test_linear_schedule_warms_up_then_decays():
    kwargs = {"learning_rate": 1e-3, "warmup_steps": 4, "max_steps": 20, "lr_scheduler_type": "linear"}
    rates = trainer.lr_schedule(kwargs)
    assert len(rates) == 20
    assert rates[0] == 0.0 and rates[4] == pytest.approx(1e-3)
    assert rates[:5] == sorted(rates[:5]) and rates[4:] == sorted(rates[4:], reverse=True)
    assert rates[-1] == pytest.approx(1e-3 / 16)


def test_config_table_shows_effective_batch(tmp_path):
    kwargs, _ = trainer.training_config(DEFAULTS, tmp_path)
    table = trainer.config_table(kwargs)
    assert table.loc["effective batch size", "value"] == 8
    assert table.loc["samples seen in training", "value"] == 8 * DEFAULTS["max_steps"]

