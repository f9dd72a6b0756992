"""Step 2 on the tiny Llama: 02's own cells add the LoRA the post describes and save it as it starts."""
import json

from conftest import notebooks


def test_lora_adds_expected_weights_starts_as_the_base_model_and_is_saved(tiny_values):
    import torch
    from safetensors.torch import load_file

    run = notebooks(tiny_values, "01", "02")
    model, cfg = run["02"]["model"], run["02"]["model"].config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    shapes = {"q_proj": (cfg.hidden_size, cfg.hidden_size), "k_proj": (cfg.hidden_size, kv),
              "v_proj": (cfg.hidden_size, kv), "o_proj": (cfg.hidden_size, cfg.hidden_size),
              "gate_proj": (cfg.hidden_size, cfg.intermediate_size),
              "up_proj": (cfg.hidden_size, cfg.intermediate_size),
              "down_proj": (cfg.intermediate_size, cfg.hidden_size)}
    expected = cfg.num_hidden_layers * sum(16 * (i + o) for i, o in shapes.values())
    table = run["02"]["table"]
    assert table.loc["all", "trainable"] == expected
    assert table.loc["all", "parameters"] == sum(p.numel() for p in run["01"]["model"].parameters()) + expected
    assert table.loc["embeddings", "trainable"] == 0
    ids = run["01"]["tokenizer"](["<human>: hi\n<bot>:"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(run["01"]["model"](**ids).logits, model(**ids).logits)  # B starts at zero
    if not torch.cuda.is_available():
        assert run["02"]["differences"][0][:3] == ("use_gradient_checkpointing", "unsloth", False)
    # what step 5 loads: peft's record of the call, the weights as they start, and step 1's tokenizer
    folder = run["02"]["P"]["run_dir"] + "/lora"
    config = json.loads(open(f"{folder}/adapter_config.json").read())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (16, 32, sorted(shapes))
    saved = load_file(f"{folder}/adapter_model.safetensors")
    live = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(live) and all(torch.equal(saved[k], live[k].detach()) for k in saved)
    assert json.loads(open(f"{folder}/tokenizer_config.json").read())["pad_token"]  # step 1's: ready for batches


def test_random_state_makes_the_saved_lora_repeat(tiny_values, tmp_path):
    from safetensors.torch import load_file

    saved = []
    for name in ("a", "b"):
        notebooks({**tiny_values, "run_dir": str(tmp_path / name)}, "01", "02")
        saved.append(load_file(str(tmp_path / name / "lora" / "adapter_model.safetensors")))
    assert saved[0].keys() == saved[1].keys() and saved[0]
    assert all((saved[0][k] == saved[1][k]).all() for k in saved[0])
    assert any(saved[0][k].abs().sum() > 0 for k in saved[0] if "lora_A" in k)
    assert (tmp_path / "a" / "lora_parameters.png").stat().st_size > 1000


def test_a_target_module_the_model_lacks_is_refused(tiny_values):
    import pytest

    from helpers.params import ParameterError

    notebooks(tiny_values, "01")
    with pytest.raises(ParameterError, match=r"names \['q_prj'\], which are no linear layers of this model"):
        notebooks({**tiny_values, "target_modules": ["q_proj", "q_prj"]}, "02")
