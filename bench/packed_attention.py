"""Attention over packed rows at the 8B shape: how unsloth runs it on this torch, and torch's flash
varlen kernel with grouped KV heads, on the segment lengths packing gives the OIG-format rows.

    python bench/packed_attention.py [--rows 8] [--repeat 20] [--work /tmp/bench-checkpoints]

One layer's attention (32 query heads, 8 KV heads, head size 128, bf16), forward and backward, on
`--rows` packed rows of 2,048 tokens flattened into one row as unsloth flattens a padding-free pass:
- unsloth: unsloth.utils.attention_dispatch's packed SDPA path (one SDPA call per run of equal
  segment lengths, on torch < 2.12 where its varlen route needs enable_gqa);
- the workbook's route (helpers/model/packed_attention.py): the same unsloth path handed torch's
  flash kernel over all segments (cu_seqlens) in one call, KV heads not expanded;
- flash varlen, K/V expanded: that kernel with the KV heads repeated first (what GQA saves);
- one causal row (no segments): the cost of full rows, the floor.
Prints the median time per layer, times the 32 layers, and the largest difference of each from float32
attention computed one segment at a time. The segment lengths come from packing the fixture's OIG rows
(bench/gpu_training.py makes it) first-fit-decreasing as TRL's bfd does; without the fixture, from a
fixed random draw.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HEADS, KV_HEADS, HEAD_DIM, LAYERS, ROW = 32, 8, 128, 32, 2048


def pack(lengths: list[int], row: int = ROW) -> list[list[int]]:
    """First-fit decreasing into rows of `row` tokens (TRL's 'bfd' strategy, near enough)."""
    bins: list[list[int]] = []
    for n in sorted((min(n, row) for n in lengths), reverse=True):
        for b in bins:
            if sum(b) + n <= row:
                b.append(n)
                break
        else:
            bins.append([n])
    return bins


def segment_lengths(work: Path, rows: int) -> list[int]:
    ckpt, data = work / "llama-8b-bnb-4bit", work / "unified_chip2.jsonl"
    if (ckpt / "tokenizer.json").exists() and data.exists():
        from transformers import AutoTokenizer

        from bench.gpu_training import oig_rows

        tok = AutoTokenizer.from_pretrained(ckpt)
        lengths = [len(r) for r in oig_rows(data, tok, 60 * rows)]
    else:
        rng = random.Random(0)
        lengths = [max(8, int(rng.lognormvariate(5.1, 0.6))) for _ in range(60 * rows)]
    bins = pack(lengths)
    bins = random.Random(0).sample(bins, min(rows, len(bins)))  # not the first bins: they hold the longest rows
    out = []
    for b in bins:  # TRL's padding-free collator pads nothing: a row is as long as its segments
        out.extend(b)
    return out


def timed(fn, repeat: int) -> float:
    import torch

    times = []
    for _ in range(repeat + 3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-checkpoints"))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/packed_attention.py measures CUDA attention kernels and needs an NVIDIA GPU.")
    import unsloth  # noqa: F401
    from unsloth.utils import attention_dispatch as ad

    from fixtures.attention import (attention_inputs, largest_differences, output_and_grads, per_sample_attention,
                                    seq_info)
    from helpers.model.packed_attention import route_packed_attention

    own_route = ad._TORCH_VARLEN_ATTN is not None
    if not route_packed_attention() and not own_route:
        sys.exit("the workbook's route did not apply here (WORKBOOK_PACKED_VARLEN=0, or no flash attention)")
    varlen = ad._TORCH_VARLEN_ATTN

    lengths = segment_lengths(args.work, args.rows)
    total = sum(lengths)
    q, k, v, grad = attention_inputs(lengths, HEADS, KV_HEADS, HEAD_DIM)
    info = seq_info(lengths)
    cu = info[1]

    def run_unsloth():
        return ad._sdpa_packed_segments(q, k, v, tuple(lengths), n_groups=HEADS // KV_HEADS, is_causal=True,
                                        sliding_window=None, sdpa_kwargs={}, training=True)

    def run_varlen():  # unsloth's own varlen call site, with the routed kernel
        return ad._torch_varlen_packed(q, k, v, info, n_groups=HEADS // KV_HEADS, is_causal=True,
                                       sliding_window=None, scale=None)

    def run_varlen_expanded():  # K/V repeated to the 32 query heads first: no GQA inside the kernel
        qf, kf, vf = (x.squeeze(0).transpose(0, 1).contiguous() for x in (q, k, v))
        kf, vf = (x.repeat_interleave(HEADS // KV_HEADS, dim=1) for x in (kf, vf))
        return varlen(qf, kf, vf, cu, cu, max(lengths), max(lengths), window_size=(-1, 0)).unsqueeze(0)

    def run_causal():  # rows of 2,048 tokens, no segments
        rows = total // ROW
        qs, ks, vs = (x[0, :, :rows * ROW].unflatten(1, (rows, ROW)).transpose(0, 1) for x in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)

    results = {}
    compared = {"unsloth (per-segment SDPA)": run_unsloth, "the workbook's route (flash varlen, GQA)": run_varlen,
                "flash varlen, K/V expanded": run_varlen_expanded}
    for name, fn in (*compared.items(), ("causal rows, no segments", run_causal)):
        def step():
            for t in (q, k, v):
                t.grad = None
            out = fn()
            out.backward(grad if out.shape == grad.shape else torch.ones_like(out))
        results[name] = timed(step, args.repeat)

    ref = output_and_grads(lambda: per_sample_attention(q, k, v, lengths), q, k, v, grad)
    diffs = {name: largest_differences(output_and_grads(fn, q, k, v, grad), ref) for name, fn in compared.items()}
    takes = (ad._torch_varlen_takes(q, k, v, {}, True, None)
             and ad._torch_varlen_beats_segments(q, k, tuple(lengths), HEADS // KV_HEADS, True))
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; {args.rows} packed rows, {total:,} "
          f"tokens, {len(lengths)} segments (mean {total / len(lengths):.0f} tokens); unsloth's varlen route: "
          f"{'on' if own_route else 'off'}; unsloth's dispatcher takes the routed kernel for these rows: {takes}")
    print("\n| attention | forward + backward, one layer (ms) | x 32 layers (s) | vs unsloth |\n| --- | --- | --- | --- |")
    base = results["unsloth (per-segment SDPA)"]
    for name, s in results.items():
        print(f"| {name} | {s * 1e3:.2f} | {s * LAYERS:.3f} | {base / s:.1f}x |")
    print("\nagainst float32 attention one segment at a time: largest output difference; largest gradient "
          "difference of q, k, v relative to the largest gradient")
    for name, (o, *g) in diffs.items():
        print(f"- {name}: output {o:.2e}; gradients " + ", ".join(f"{x:.2e}" for x in g))


if __name__ == "__main__":
    main()
