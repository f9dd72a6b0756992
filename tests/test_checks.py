"""Every validation rule that looks at parameters together, or at the machine and the model's config:
each raises before any model loads, naming the parameter, the value and what is allowed."""
import json
import subprocess
import sys

import pytest

from helpers import checks
from tools import preflight
from helpers.params import DEFAULTS, ParameterError

REPO = checks.Path(__file__).resolve().parent.parent


def rejects(match, gpu=False, **changes):
    with pytest.raises(ParameterError, match=match):
        preflight.check_combinations({**DEFAULTS, **changes}, gpu=gpu)


def test_the_defaults_pass_on_a_cpu_and_on_a_gpu():
    assert preflight.check_combinations(dict(DEFAULTS), gpu=False)
    assert preflight.check_combinations({**DEFAULTS, "backend": "hf"} | {"load_in_4bit": False}, gpu=False)


def test_unsloth_needs_a_gpu():
    rejects(r"'backend' = 'unsloth' needs an NVIDIA GPU, and this machine has none", backend="unsloth")


def test_4bit_with_the_transformers_backend_needs_a_gpu():
    rejects(r"'load_in_4bit' = True with backend 'hf' needs an NVIDIA GPU.*Set load_in_4bit false, or backend "
            r"'auto'", backend="hf", load_in_4bit=True)
    # backend auto: the post's recipe runs in full precision on a CPU, and 01 says so
    assert preflight.check_combinations({**DEFAULTS, "backend": "auto", "load_in_4bit": True}, gpu=False)


def test_16_bit_dtype_on_a_cpu():
    rejects(r"'dtype' = 'bfloat16' on a CPU", dtype="bfloat16")


def test_warmup_longer_than_training():
    rejects(r"'warmup_steps' = 30 is more than max_steps = 10", warmup_steps=30, max_steps=10)


def test_early_stopping_and_the_best_adapter_need_evaluations_while_training():
    rejects(r"'early_stopping_patience' needs held-out losses during training, and eval_steps = 0",
            early_stopping_patience=2, eval_steps=0)
    rejects(r"'load_best_model_at_end' needs held-out losses", load_best_model_at_end=True, eval_steps=0)
    assert preflight.check_combinations({**DEFAULTS, "early_stopping_patience": 2}, gpu=False)  # eval_steps None


def test_responses_only_needs_turns():
    rejects(r"'train_on_responses_only' = True needs turns", train_on_responses_only=True, dataset_format="text")


def test_packing_where_samples_would_attend_to_each_other():
    rejects(r"'packing' = True needs the unsloth backend or flash-attn", packing=True, backend="hf", load_in_4bit=False)


def test_unknown_optimizer_and_schedule_get_suggestions():
    rejects(r"'optim' = 'adamw_8bits' is not a name transformers knows. Did you mean 'adamw_8bit'", optim="adamw_8bits")
    rejects(r"'lr_scheduler_type' = 'linaer' is not a name transformers knows. Did you mean 'linear'",
            lr_scheduler_type="linaer")


def test_max_seq_length_over_the_models_limit(tiny_model_dir):
    limit = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    rejects(rf"'max_seq_length' = {limit + 1} is over the model's limit: .* max_position_embeddings = {limit}",
            model_name=str(tiny_model_dir), max_seq_length=limit + 1)
    assert preflight.check_combinations({**DEFAULTS, "model_name": str(tiny_model_dir), "max_seq_length": limit},
                                      gpu=False)


def test_batch_size_below_one_is_a_range_error():
    from helpers import params

    with pytest.raises(ParameterError, match=r"'per_device_train_batch_size' = 0 is below its minimum 1"):
        params.check({"per_device_train_batch_size": 0})


def test_the_runner_checks_combinations_before_any_notebook(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             "-p", "warmup_steps", "50"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "'warmup_steps' = 50 is more than max_steps = 4" in result.stderr
    assert not list(tmp_path.glob("*.ipynb"))


def test_notebooks_check_their_own_parameters_when_run_alone(tmp_path):
    """A notebook run alone (JupyterLab) checks its step's parameters in its first helper call: 01's load
    arguments, 04's SFTConfig values; params.settle, in every notebook's first cell, checks each value."""
    from helpers import params
    from helpers.model import loading
    from helpers.training import arguments

    with pytest.raises(ParameterError, match="'warmup_steps' = 50"):
        arguments.for_this_machine({**DEFAULTS, "warmup_steps": 50, "max_steps": 4, "run_dir": str(tmp_path)})
    with pytest.raises(ParameterError, match="'dtype' = 'bfloat16' on a CPU"):
        loading.arguments(**{k: DEFAULTS[k] for k in ("model_name", "max_seq_length", "load_in_4bit", "backend",
                                                      "attn_implementation", "trust_remote_code")}, dtype="bfloat16")
    with pytest.raises(ParameterError, match="'max_steps' = 0 is below its minimum 1"):
        params.settle(tmp_path, {"max_steps": 0})


def test_a_checkpoint_stored_in_4bit_needs_a_gpu(tmp_path):
    """The post's model has no 16-bit weights: on a CPU it cannot load at all, so it is refused at once."""
    import json

    folder = tmp_path / "llama-bnb-4bit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}))
    from helpers.model.weights import is_prequantized

    assert is_prequantized(str(folder)) and not is_prequantized(str(tmp_path))
    assert is_prequantized("unsloth/Meta-Llama-3.1-8B-bnb-4bit")  # a hub id: by its name
    rejects("is stored in 4-bit .* loads only on an NVIDIA GPU", model_name=str(folder))


def test_target_modules_are_checked_against_the_models_layers(bundled_dir):
    names, tied = preflight.linear_layer_names(bundled_dir)
    assert set(DEFAULTS["target_modules"]) <= names and "lm_head" in names and tied == "lm_head"
    rejects(r"names \['nope_proj'\], which are no layers of .*Its linear layers: \[",
            target_modules=["q_proj", "nope_proj"])


def test_lora_on_an_output_layer_tied_to_the_embeddings_is_refused(bundled_dir):
    # SmolLM2 ties them: it trained, then 07 failed with a raw assertion and left a whole-looking merged/
    rejects(r"names 'lm_head', the output layer, whose weight this model shares with its input embeddings "
            r"\(tie_word_embeddings\).*Leave 'lm_head' out", target_modules=["q_proj", "v_proj", "lm_head"])


def test_report_to_needs_its_package(monkeypatch):
    real = checks.importlib.util.find_spec
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard",
                        "tensorboardX") else real(name, *a))
    rejects(r"'report_to' = 'wandb' needs the wandb package, which is not installed: pip install wandb", report_to="wandb")
    rejects(r"'report_to' = 'tensorboard' needs the tensorboard package", report_to="tensorboard")
    assert preflight.check_combinations({**DEFAULTS, "report_to": "none"}, gpu=False)


def test_a_malformed_config_json_is_named_before_any_load(tmp_path, tiny_model_dir):
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "config.json").write_text('{"model_type": "llama",')
    rejects(rf"'model_name' = '{folder}': {folder}/config.json cannot be read as JSON \(.*line 1", model_name=str(folder))
    (folder / "config.json").write_text('["llama"]')
    rejects("holds a JSON list, expected an object", model_name=str(folder))


CUSTOM_CONFIG = '''from transformers import LlamaConfig


class PipConfig(LlamaConfig):
    model_type = "pip_llama"
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_pip import PipConfig


class PipForCausalLM(LlamaForCausalLM):
    config_class = PipConfig
'''


def custom_code_model(tmp_path, tiny_model_dir):
    """The tiny Llama as a model with custom code: its config.json's auto_map names classes defined in
    Python files in the folder, as some hub models do."""
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "custom-model")
    (folder / "configuration_pip.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_pip.py").write_text(CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="pip_llama", architectures=["PipForCausalLM"],
                  auto_map={"AutoConfig": "configuration_pip.PipConfig",
                            "AutoModelForCausalLM": "modeling_pip.PipForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_custom_code_is_refused_unless_asked_for_and_then_honoured_for_a_local_folder(tmp_path, tiny_model_dir):
    folder = custom_code_model(tmp_path, tiny_model_dir)
    rejects(r"config.json asks for custom code \(AutoConfig -> configuration_pip.PipConfig, .*Set "
            r"trust_remote_code true if you trust that code", model_name=str(folder))
    # asked for: the early checks build the model's skeleton with its own classes, and the model loads
    asked = {**DEFAULTS, "model_name": str(folder), "trust_remote_code": True, "max_seq_length": 128}
    assert preflight.check_combinations(asked, gpu=False)
    from conftest import notebooks

    loaded = notebooks({k: asked[k] for k in ("model_name", "trust_remote_code", "max_seq_length")}
                       | {"run_dir": str(tmp_path / "run")}, "01")["01"]["model"]  # 01's own load call
    assert type(loaded).__name__ == "PipForCausalLM"


def test_no_held_out_rows_is_refused_before_any_work():
    rejects(r"'eval_fraction' = 0 holds no rows out, and steps 5 to 7 measure .* Expected more than 0", eval_fraction=0)
    assert preflight.check_combinations({**DEFAULTS, "eval_fraction": 0.001}, gpu=False)
