"""Where one optimizer step's time goes on the GPU: torch.profiler's kernels sorted into the phases of a
LoRA step on a 4-bit model, the time the GPU sat idle between them, and the host's share.

Used by bench/gpu_training.py (`--profile`): `profiled_step(step, out)` profiles that step, and
`breakdown(events, wall_s)` turns the kernels into a table. The rules below go by kernel name, first
match wins; a name that matches none lands in "other" (the table lists the largest of those, so a new
kernel family shows up rather than being hidden)."""
from __future__ import annotations

CATEGORIES = [  # (phase, lower-case substrings of the kernel's name)
    ("4-bit dequantization (bitsandbytes)", ("dequant",)),
    ("optimizer (8-bit AdamW)", ("optimizer", "adam", "multi_tensor", "percentile")),
    ("loss (LM head chunks, cross-entropy)", ("cross_entropy", "logsumexp", "log_softmax", "nll_loss")),
    ("attention (SDPA)", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matrix products (base weights and LoRA)", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "gemv",
                                                 "matmul", "splitk", "sm90_", "sm100_")),
    ("gradient-checkpoint offload (copies to and from the CPU)", ("memcpy dtoh", "memcpy htod")),
    ("norms, RoPE, SwiGLU (unsloth's Triton kernels)", ("rms", "rope", "swiglu", "_fg_kernel", "_dwf",
                                                      "layernorm", "geglu")),
    ("other copies and fills", ("memcpy", "memset", "copy_kernel", "fill")),
]
OTHER = "other (elementwise, reductions)"


def category(name: str) -> str:
    lowered = name.lower()
    for phase, needles in CATEGORIES:
        if any(n in lowered for n in needles):
            return phase
    return OTHER


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time at least one kernel ran."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total, end = total + (e - s), e
        elif e > end:
            total, end = total + (e - end), e
    return total


def breakdown(kernels: list[tuple[str, float, float]], wall_s: float, launches: int | None = None) -> dict:
    """`kernels`: (name, start_s, end_s) of every GPU kernel, copy and fill in the step; `wall_s`: the
    step's time with the GPU synchronized around it. Returns the time per phase (kernel time, summed),
    the GPU's busy and idle time, and the largest uncategorized kernels."""
    phases: dict[str, float] = {}
    others: dict[str, float] = {}
    for name, start, end in kernels:
        phase = category(name)
        phases[phase] = phases.get(phase, 0.0) + (end - start)
        if phase == OTHER:
            others[name] = others.get(name, 0.0) + (end - start)
    busy = busy_seconds([(s, e) for _, s, e in kernels])
    return {"wall_s": wall_s, "gpu_busy_s": busy, "gpu_idle_s": max(0.0, wall_s - busy),
            "kernels": len(kernels), "launches": launches,
            "phases": dict(sorted(phases.items(), key=lambda kv: -kv[1])),
            "largest_other": sorted(others.items(), key=lambda kv: -kv[1])[:8]}


def table(result: dict) -> str:
    wall = result["wall_s"]
    rows = ["| phase | GPU time | share of the step |", "| --- | --- | --- |"]
    for phase, seconds in result["phases"].items():
        rows.append(f"| {phase} | {1e3 * seconds:,.1f} ms | {100 * seconds / wall:.1f}% |")
    rows.append(f"| **GPU idle** (waiting for the host between kernels) | {1e3 * result['gpu_idle_s']:,.1f} ms | "
                f"{100 * result['gpu_idle_s'] / wall:.1f}% |")
    rows.append(f"| **the step** (synchronized wall time) | {1e3 * wall:,.1f} ms | 100% |")
    launches = f", {result['launches']:,} launches from the host" if result.get("launches") else ""
    return "\n".join(rows) + f"\n\n{result['kernels']:,} kernels, copies and fills on the GPU{launches}."


def profiled_step(step: int, out: dict):
    """A TrainerCallback that profiles optimizer step `step` (1-based) and puts `breakdown`'s result in
    `out["profile"]`."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class Profiled(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 == step:
                torch.cuda.synchronize()
                # GPU activity only: the host's ~10^5 operator events a step would take minutes to read back
                self.prof = profile(activities=[ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.prof is None or state.global_step != step:
                return
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.start
            self.prof.__exit__(None, None, None)
            kernels, launches = [], 0
            for e in self.prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    kernels.append((e.name, e.time_range.start / 1e6, e.time_range.end / 1e6))
                elif "LaunchKernel" in e.name:  # the CUDA runtime's calls, recorded with the GPU activity
                    launches += 1
            out["profile"] = breakdown(kernels, wall, launches)
            self.prof = None

    return Profiled()
