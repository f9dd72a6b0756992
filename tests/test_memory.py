from types import SimpleNamespace

from helpers.model.memory import SAFETY, activation_bytes, choose_checkpointing

LLAMA_8B = SimpleNamespace(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                           num_hidden_layers=32, vocab_size=128256)
GIB = 2**30


def test_llama_8b_seed_settings_need_about_30_gib():
    need = activation_bytes(LLAMA_8B, batch_size=2, seq_len=2048)
    assert 28 * GIB < need < 34 * GIB
    assert activation_bytes(LLAMA_8B, 4, 2048) == 2 * need  # linear in tokens


def test_unsloth_count_stays_above_what_the_h200_measured():
    """unsloth's fused kernels keep fewer activations; the count must not fall under the 4.0 MB a token
    measured at the 8B shape (38.5 GiB reserved for 4 x 2,048 tokens, 5.5 GiB of it the weights), or
    'auto' would pick passes that do not fit."""
    measured = (38.5 - 5.5) * GIB / (4 * 2048)
    counted = activation_bytes(LLAMA_8B, 1, 1, backend="unsloth")
    assert measured < counted < 1.3 * measured
    assert counted < activation_bytes(LLAMA_8B, 1, 1)  # transformers' count stays the larger


def test_auto_turns_checkpointing_off_only_when_it_fits():
    need = activation_bytes(LLAMA_8B, 2, 2048) * SAFETY
    off, why = choose_checkpointing("auto", LLAMA_8B, 2, 2048, free_bytes=int(need) + GIB)
    assert off is False and "GiB free" in why
    on, why = choose_checkpointing("auto", LLAMA_8B, 2, 2048, free_bytes=int(need) - GIB)
    assert on == "unsloth" and "only" in why


def test_explicit_choice_is_kept():
    assert choose_checkpointing("unsloth", LLAMA_8B, 2, 2048, free_bytes=10**15) == ("unsloth", None)
    assert choose_checkpointing(False, LLAMA_8B, 2, 2048, free_bytes=1) == (False, None)


def test_gpu_cap_comes_from_the_environment(monkeypatch):
    from helpers.model.memory import CAP_ENV, gpu_cap_bytes

    monkeypatch.delenv(CAP_ENV, raising=False)
    assert gpu_cap_bytes() is None
    monkeypatch.setenv(CAP_ENV, "15")
    assert gpu_cap_bytes() == 15 * GIB
    monkeypatch.setenv(CAP_ENV, "0.5")
    assert gpu_cap_bytes() == GIB // 2
