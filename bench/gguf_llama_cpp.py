"""The GGUF files 07 writes, opened by llama.cpp (the engine of Ollama, LM Studio and llama-cli) and compared
with the merged model they came from, one row per weight type: a table.

    python bench/gguf_llama_cpp.py [--run RUN_DIR] [--types f32 f16 q8_0] [--rows 8] [--json FILE]

RUN_DIR is a run folder with `merged/` and a prepared split (default: the newest of runs/, e.g. the default
run of `make run` or `make notebooks`). Each type is written by the workbook's writer (gguf package), then
opened by llama-cpp-python (`make setup-gguf`) with its default float16 attention cache, as Ollama runs
it. The texts are held-out rows of the run (prompt, reference answer, end of turn), fed as the merged
tokenizer's ids at every position (teacher forcing). Columns: file size, write time, llama.cpp's load
time, same token ids, the share of positions with the merged model's greedy token (all, and among the
positions where the merged model's choice is clear of the rounding), largest logit difference. For the
quantized types, a second table: the same type written by llama.cpp's own quantizer from the same float32
file, compared tensor by tensor (types, blocks byte for byte, error, size).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def newest_run() -> Path:
    runs = sorted((p.parent for p in (REPO / "runs").glob("*/merged/config.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit("no run folder with merged/ under runs/: run `make run` first, or pass --run")
    return runs[-1]


def main() -> int:
    from fixtures import llama_cpp_tools as llama_cpp_check
    from helpers.export import gguf_export, gguf_write

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"], choices=gguf_write.OUTTYPES)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not llama_cpp_check.available():
        sys.exit(f"llama.cpp's Python binding is not installed: {llama_cpp_check.INSTALL}")
    run = (args.run or newest_run()).resolve()
    texts = gguf_export.held_out_texts(run, args.rows)
    rows, against = [], []
    f32 = None
    if any(t in llama_cpp_check.FILE_TYPES for t in args.types):  # what llama.cpp's own quantizer starts from
        f32 = gguf_write.write(run / "merged", run / "bench-source-f32.gguf", "f32").path
    for outtype in args.types:
        written = gguf_write.write(run / "merged", run / f"bench-{outtype}.gguf", outtype)
        start = time.perf_counter()
        llama_cpp_check.open_gguf(written.path).close()
        load_s = time.perf_counter() - start
        result = llama_cpp_check.compare(run / "merged", written.path, texts)
        rows.append({"type": outtype, "size_mb": written.size_mb, "write_s": written.seconds, "load_s": load_s,
                     **result})
        if f32 is not None and outtype in llama_cpp_check.FILE_TYPES:
            start = time.perf_counter()
            theirs = llama_cpp_check.quantize(f32, run / f"bench-{outtype}-llama-cpp.gguf", outtype)
            against.append({"type": outtype, "llama_cpp_s": time.perf_counter() - start,
                            **llama_cpp_check.same_blocks(written.path, theirs, f32)})
            theirs.unlink()
        written.path.unlink()
    if f32 is not None:
        f32.unlink()
    print(f"\nGGUF in llama.cpp (llama-cpp-python), {run.name}/merged, {len(texts)} held-out rows, "
          f"{rows[0]['positions']} positions")
    print("| type | file | write | llama.cpp load | same ids | same greedy token | where clear of rounding "
          "| largest logit difference (largest logit) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['type']} | {r['size_mb']:.1f} MB | {r['write_s']:.1f} s | {r['load_s']:.2f} s | "
              f"{sum(r['same_ids'])}/{len(r['same_ids'])} | {r['same_next_token']:.1%} | "
              f"{r['decided_same']}/{r['decided_positions']} | {r['max_abs_logit_diff']:.3g} ({r['logit_scale']:.3g}) |")
    if against:
        print("\nThe same types written by llama.cpp's own quantizer (llama_model_quantize) from the same float32 file:")
        print("| type | same tensor types | quantized blocks not byte for byte the same | weights' RMSE: workbook / llama.cpp "
              "| size: workbook / llama.cpp | llama.cpp's time |\n| --- | --- | --- | --- | --- | --- |")
        for a in against:
            differ = a.get("blocks", 0) - round(a.get("same_blocks", 0) * a.get("blocks", 0))
            print(f"| {a['type']} | {'yes' if a['same_types'] else a['differs']} | {differ:,} of {a.get('blocks', 0):,} | "
                  f"{a.get('rmse', 0):.4g} / {a.get('rmse_llama_cpp', 0):.4g} | "
                  f"{a.get('size_mb', 0):.1f} / {a.get('size_mb_llama_cpp', 0):.1f} MB | {a['llama_cpp_s']:.1f} s |")
    if args.json:
        args.json.write_text(json.dumps({"run": run.name, "texts": len(texts), "rows": rows, "llama_cpp_quantize": against},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
