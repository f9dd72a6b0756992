"""Packed rows through torch's flash varlen kernel (helpers/model/packed_attention.py) attend as
unsloth's per-segment path does: each example only to itself, causally. Checked at unsloth's own call
site against float32 attention one example at a time, and through a packed training run on the tiny
model with the route on and off. GPU only: the kernel is CUDA's."""
import pytest

from fixtures.attention import attention_inputs, largest_differences, output_and_grads, per_sample_attention, seq_info

pytestmark = pytest.mark.gpu

LENGTHS = (37, 5, 120, 64, 64, 200, 1, 17, 3, 100)  # runs of equal lengths and unequal ones, as packing gives


def test_routed_kernel_attends_within_each_example_as_unsloth_does():
    import unsloth  # noqa: F401
    from unsloth.utils import attention_dispatch as ad

    from helpers.model.packed_attention import route_packed_attention

    assert route_packed_attention() or ad._TORCH_VARLEN_ATTN is not None
    q, k, v, grad = attention_inputs(LENGTHS, heads=8, kv_heads=2, head_dim=64)
    groups = q.shape[1] // k.shape[1]
    # unsloth's dispatcher sends these rows to the routed kernel (it would fall back per segment otherwise)
    assert ad._torch_varlen_takes(q, k, v, {}, True, None)
    assert ad._torch_varlen_beats_segments(q, k, LENGTHS, groups, True)

    def routed(info):
        return lambda: ad._torch_varlen_packed(q, k, v, info, n_groups=groups, is_causal=True,
                                               sliding_window=None, scale=None)

    segments = lambda: ad._sdpa_packed_segments(q, k, v, LENGTHS, n_groups=groups, is_causal=True,  # noqa: E731
                                                sliding_window=None, sdpa_kwargs={}, training=True)
    ref = output_and_grads(lambda: per_sample_attention(q, k, v, LENGTHS), q, k, v, grad)
    ours = largest_differences(output_and_grads(routed(seq_info(LENGTHS)), q, k, v, grad), ref)
    theirs = largest_differences(output_and_grads(segments, q, k, v, grad), ref)
    print(f"against float32: routed {ours}, unsloth per segment {theirs}")
    for mine, base in zip(ours, theirs):
        assert mine <= 2 * base + 1e-3, (ours, theirs)
    # the control: the same kernel told the row is one example attends across examples, and that shows
    leaked = largest_differences(output_and_grads(routed(seq_info((sum(LENGTHS),))), q, k, v, grad), ref)
    assert min(leaked) > 10 * max(max(theirs), 1e-3), leaked


def test_packed_training_takes_the_route_and_trains_as_without_it(tiny_values):
    from datasets import Dataset
    from unsloth.utils import attention_dispatch as ad

    from fixtures import training
    from helpers.model import loading

    values = {**tiny_values, "packing": True, "max_steps": 4, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1}
    training.prepared(values)
    assert any(d[0].startswith("attention over packed rows") for d in loading.record(values["run_dir"])["differences"])
    data = Dataset.from_dict({"input_ids": [[5 + (i * 7 + j) % 400 for j in range(8 + (i * 13) % 50)]
                                            for i in range(200)]})

    def train(route: bool):
        routed, calls = ad._TORCH_VARLEN_ATTN, []
        assert routed is not None and getattr(routed, "from_workbook", False)

        def counted(*a, **kw):
            calls.append(a[0].shape[0])
            return routed(*a, **kw)

        ad._TORCH_VARLEN_ATTN = counted if route else None
        try:
            m, tok, _ = training.lora_model(values["run_dir"])
            t = training.trainer(values["run_dir"], m, tok, data, save_strategy="no", disable_tqdm=True,
                                 report_to="none")
            t.train()
        finally:
            ad._TORCH_VARLEN_ATTN = routed
        return [h["loss"] for h in t.state.log_history if "loss" in h], calls

    losses_on, calls_on = train(route=True)
    losses_off, calls_off = train(route=False)
    assert calls_on and not calls_off  # packed passes went through the routed kernel, and only when on
    relative = max(abs(a - b) / abs(b) for a, b in zip(losses_on, losses_off))
    print(f"routed {losses_on}, per segment {losses_off}: {relative:.2e}; {len(calls_on)} kernel calls")
    assert len(losses_on) == len(losses_off) == 4 and relative < 2e-2
