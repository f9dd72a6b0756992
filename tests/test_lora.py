import pytest

from helpers import lora
from helpers import model as models


@pytest.fixture
def base(tiny_params):
    model, tokenizer, info = models.load(tiny_params)
    return model, tokenizer, info


def test_lora_adds_expected_weights_and_starts_as_the_base_model(base, tiny_params):
    import torch

    model, tokenizer, info = base
    ids = tokenizer(["<human>: hi\n<bot>:"], return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
    total_before = sum(p.numel() for p in model.parameters())
    model, differences = lora.add_lora(model, tiny_params, info.backend)
    cfg = model.config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    shapes = {"q_proj": (cfg.hidden_size, cfg.hidden_size), "k_proj": (cfg.hidden_size, kv),
              "v_proj": (cfg.hidden_size, kv), "o_proj": (cfg.hidden_size, cfg.hidden_size),
              "gate_proj": (cfg.hidden_size, cfg.intermediate_size),
              "up_proj": (cfg.hidden_size, cfg.intermediate_size),
              "down_proj": (cfg.intermediate_size, cfg.hidden_size)}
    r = tiny_params["lora_r"]
    expected = cfg.num_hidden_layers * sum(r * (i + o) for i, o in shapes.values())
    table = lora.parameter_table(model, tiny_params["target_modules"])
    assert table.loc["all", "trainable"] == expected
    assert table.loc["all", "parameters"] == total_before + expected
    assert table.loc["embeddings", "trainable"] == 0
    with torch.no_grad():
        after = model(**ids).logits
    assert torch.equal(before, after)  # B starts at zero
    if not torch.cuda.is_available():
        assert differences[0][:3] == ("use_gradient_checkpointing", "unsloth", False)


def test_random_state_makes_lora_init_repeatable(tiny_params):
    import torch

    weights = []
    for _ in range(2):
        model, _, info = models.load(tiny_params)
        model, _ = lora.add_lora(model, tiny_params, info.backend)
        weights.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n})
    assert weights[0].keys() == weights[1].keys() and weights[0]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_plot_is_saved(base, tiny_params, tmp_path):
    model, _, info = base
    model, _ = lora.add_lora(model, tiny_params, info.backend)
    lora.plot_parameters(lora.parameter_table(model, tiny_params["target_modules"]), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
