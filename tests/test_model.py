import json
from pathlib import Path

import pytest

from conftest import notebooks

from helpers.model import loading as models
from helpers.model import machine, weights
from helpers.params import ParameterError


def test_bundled_model_converts_to_plain_safetensors(bundled_dir):
    config = json.loads((bundled_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a GGUF leftover would block training
    assert (bundled_dir / "model.safetensors").exists()
    tok = json.loads((bundled_dir / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>"  # the GGUF says <|im_start|>; the chat model ends turns here
    assert tok["pad_token"] == "<|endoftext|>" and config["pad_token_id"] == 0  # not eos: unsloth refuses that


def test_bundled_model_answers_a_chat_question(bundled_dir):
    """The dequantized weights are the real model: it knows the capital of France."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_unknown_bundled_name():
    with pytest.raises(ParameterError, match="no bundled model of that name"):
        weights.resolve_source("bundled:GPT-5")


def test_folder_without_config(tmp_path):
    with pytest.raises(ParameterError, match="folder without config.json"):
        weights.resolve_source(str(tmp_path))


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParameterError, match="unsloth/Meta-Llama-3.1-8B-bnb-4bit' is not a local folder and "
                                             "the model hub is not reachable"):
        weights.resolve_source("unsloth/Meta-Llama-3.1-8B-bnb-4bit")


def test_cpu_choices():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert machine.choose_backend("auto") == "hf"
    with pytest.raises(ParameterError, match="'backend' = 'unsloth' needs an NVIDIA GPU"):
        machine.choose_backend("unsloth")
    assert machine.choose_dtype(None) == torch.float32
    assert machine.choose_attention("auto") == "sdpa"


def test_01_on_cpu_reports_what_differs_and_records_what_loaded(tiny_values):
    """01's cells: the load call's values for this machine, and the run folder's record that the steps
    after it load the same model with."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    ns = notebooks(tiny_values, "01")["01"]
    assert ns["a"].backend == "hf" and ns["a"].load_in_4bit is False and str(ns["a"].dtype) == "torch.float32"
    assert [d[0] for d in ns["a"].differences] == ["load_in_4bit"]
    base = models.base(tiny_values["run_dir"])
    assert (base.backend, base.model_name, base.load_in_4bit, base.dtype) == ("hf", tiny_values["model_name"], False,
                                                                             "float32")
    assert base.arguments == {"dtype": torch.float32, "attn_implementation": "sdpa", "trust_remote_code": False,
                              "use_safetensors": True}
    assert (Path(base.tokenizer) / "tokenizer.json").exists()
    metrics = json.loads((Path(tiny_values["run_dir"]) / "metrics.json").read_text())
    assert metrics["backend"] == "hf" and metrics["model_name"] == tiny_values["model_name"]
    assert models.summary(ns["model"], base).loc["backend", "value"] == "hf"


def test_later_steps_ask_for_01_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 01_load_model.ipynb with this run_dir first"):
        models.base(tmp_path)


def test_show_tokens_round_trips(bundled_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_dir)
    table = models.show_tokens(tok, "<human>: hi")
    assert tok.decode(list(table.loc["id"])) == "<human>: hi"


def test_python_m_helpers_model_prints_the_converted_folder(bundled_dir):
    import os
    import subprocess
    import sys

    from pathlib import Path

    env = {**os.environ, "WORKBOOK_CACHE": str(bundled_dir.parent)}
    out = subprocess.run([sys.executable, "-m", "helpers.model.loading"], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.strip() == str(bundled_dir)
