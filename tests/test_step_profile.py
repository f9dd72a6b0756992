"""bench/step_profile.py: one step's GPU kernels sorted into phases, and the GPU's idle time between them."""
import pytest

from bench import step_profile


def test_busy_time_is_the_union_of_kernels_and_idle_the_rest():
    kernels = [("kDequantizeBlockwise_bf16_nf4", 0.0, 1.0), ("sm90_xmma_gemm_bf16", 0.5, 2.0),  # overlap
               ("flash_fwd_kernel", 3.0, 4.0), ("Memcpy DtoH (Device -> Pinned)", 6.0, 6.5)]
    r = step_profile.breakdown(kernels, wall_s=10.0, launches=4)
    assert r["gpu_busy_s"] == pytest.approx(3.5)  # 0-2, 3-4, 6-6.5: overlapping kernels count once
    assert r["gpu_idle_s"] == pytest.approx(6.5)
    assert r["phases"]["4-bit dequantization (bitsandbytes)"] == pytest.approx(1.0)
    assert r["phases"]["matrix products (base weights and LoRA)"] == pytest.approx(1.5)
    assert r["phases"]["attention (SDPA)"] == pytest.approx(1.0)
    assert r["phases"]["gradient-checkpoint offload (copies to and from the CPU)"] == pytest.approx(0.5)
    text = step_profile.table(r)
    assert "| **GPU idle** (waiting for the host between kernels) | 6,500.0 ms | 65.0% |" in text


@pytest.mark.parametrize("name, phase", [
    ("void kOptimizerStatic8bit2StateBlockwise<__nv_bfloat16, 0>", "optimizer (8-bit AdamW)"),
    ("_rms_layernorm_forward", "norms, RoPE, SwiGLU (unsloth's Triton kernels)"),
    ("_cross_entropy_forward", "loss (LM head chunks, cross-entropy)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
     step_profile.OTHER),
])
def test_kernel_names_land_in_their_phase(name, phase):
    assert step_profile.category(name) == phase


def test_uncategorized_kernels_are_listed_not_hidden():
    r = step_profile.breakdown([("a_new_kernel_family", 0.0, 2.0), ("another", 2.0, 2.5)], wall_s=3.0)
    assert r["largest_other"][0] == ("a_new_kernel_family", 2.0)
