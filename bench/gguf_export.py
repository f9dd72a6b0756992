"""GGUF export at the post's size: a merged Llama of the 8B shape (or a smaller one) written to GGUF by
the `gguf` package alone, then read back by transformers in another process and compared with it.

    python bench/gguf_export.py [--size 8b|8b-heads|1b|smol] [--outtype q8_0] [--json FILE] [--work DIR]
    python bench/gguf_export.py --merged RUN_DIR/merged [--outtype q8_0]     (a real merged model)

The "merged model" is a random-weight Llama of that shape saved in bf16 (fixtures.synthetic: a merge
writes exactly such a folder), so the figures are the export's cost and fidelity, not a quality;
`8b-heads` is 4 narrow layers with the 8B model's head layout (head_dim 128, 8 query and 2 key/value
heads, untied 128,256-token output), small enough for a CPU. `--merged` takes a folder 07 wrote
instead, e.g. the default run's trained SmolLM2. Prints
one table: the fixture's size, the export's time, the GGUF file's size, the read-back's time, and how
close the read-back logits are (largest difference against the logits' scale, the share of probe
positions with the same greedy next token, same token ids).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fixtures.synthetic import LLAMA31_8B  # noqa: E402  (the post's model's shape)

SHAPES = {
    "8b": LLAMA31_8B,
    "1b": {**LLAMA31_8B, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
           "tie_word_embeddings": True},
    "8b-heads": {**LLAMA31_8B, "hidden_size": 1024, "num_hidden_layers": 4, "intermediate_size": 3584,
                 "num_attention_heads": 8, "num_key_value_heads": 2},
    "smol": dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                 tie_word_embeddings=True),
}


def main() -> int:
    import torch

    from fixtures import gguf_read_back, synthetic
    from helpers.export import gguf_write

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--outtype", choices=gguf_write.OUTTYPES, default="q8_0")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gguf-bench"))
    ap.add_argument("--merged", type=Path, help="a merged model folder to export instead of a random one")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.work / ("merged-folder" if args.merged else args.size)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    figures = {"size": str(args.merged) if args.merged else args.size, "outtype": args.outtype,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"}

    start = time.perf_counter()
    merged = args.merged or synthetic.random_llama(
        work / "merged", device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
        **SHAPES[args.size])
    figures["fixture_s"] = time.perf_counter() - start
    figures["merged_gb"] = sum(p.stat().st_size for p in merged.glob("*.safetensors")) / 1e9
    torch.cuda.empty_cache()

    written = gguf_write.write(merged, work / "model.gguf", args.outtype)
    figures.update(export_s=written.seconds, gguf_gb=written.size_mb / 1e3, tensors=written.tensors,
                   tensor_types=written.facts["tensors"], converted_on=written.facts["converted on"], parts=written.parts)

    rows = [json.loads(line)["text"] for line in (REPO / "data" / "pip_chip2.jsonl").read_text().splitlines()[:3]]
    start = time.perf_counter()
    result = gguf_read_back.compare(merged, written.path, rows)
    figures["read_back_and_compare_s"] = time.perf_counter() - start
    figures.update(result)

    print(f"\nGGUF export, {figures['size']}, {args.outtype}, {figures['gpu']} machine")
    print("| what | value |\n| --- | --- |")
    for label, key, fmt in [("merged model (safetensors)", "merged_gb", "{:.2f} GB"),
                            ("export (the workbook's writer)", "export_s", "{:.1f} s"), ("GGUF file", "gguf_gb", "{:.2f} GB"),
                            ("tensors", "tensors", "{}"), ("read back + compare (transformers)", "read_back_and_compare_s", "{:.1f} s"),
                            ("largest |logit difference|", "max_abs_logit_diff", "{:.3g}"),
                            ("largest |logit|", "logit_scale", "{:.3g}"),
                            ("same greedy next token", "same_next_token", "{:.1%}"), ("probe positions", "positions", "{}")]:
        print(f"| {label} | {fmt.format(figures[key])} |")
    print(f"| same token ids (3 texts) | {all(figures['same_ids'])} |")
    print(f"tensors: {figures['tensor_types']}; converted on {figures['converted_on']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(figures["same_ids"]) and figures["same_next_token"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
