"""The GGUF files 07 writes, opened by llama.cpp (the engine of Ollama, LM Studio and llama-cli) and compared
with the merged model they came from, one row per weight type: a table.

    python bench/gguf_llama_cpp.py [--run RUN_DIR] [--types f32 f16 q8_0] [--rows 8] [--json FILE]

RUN_DIR is a run folder with `merged/` and a prepared split (default: the newest of runs/, e.g. the default
run of `make run` or `make notebooks`). Each type is written by the workbook's writer (gguf package), then
opened by llama-cpp-python (`make setup-gguf`) with its default float16 attention cache, as Ollama runs
it. The texts are held-out rows of the run (prompt, reference answer, end of turn), fed as the merged
tokenizer's ids at every position (teacher forcing). Columns: file size, write time, llama.cpp's load
time, same token ids, the share of positions with the merged model's greedy token (all, and among the
positions where the merged model's choice is clear of the rounding), largest logit difference.
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


def held_out_texts(run: Path, n: int) -> list[str]:
    from helpers.machinery import data_report, storage
    from helpers.model import load_tokenizer

    params = json.loads((run / "params.json").read_text())
    _, held_out = storage.load_split(run, params)
    tokenizer = load_tokenizer(str(run / "merged"))
    end = tokenizer.eos_token or ""
    return [prompt + reference + end for _, prompt, reference in data_report.held_out_prompts(held_out, tokenizer, n)]


def main() -> int:
    from fixtures import gguf_llama_cpp
    from helpers.machinery import gguf_export

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"], choices=gguf_export.OUTTYPES)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not gguf_llama_cpp.available():
        sys.exit(f"llama.cpp's Python binding is not installed: {gguf_llama_cpp.INSTALL}")
    run = (args.run or newest_run()).resolve()
    texts = held_out_texts(run, args.rows)
    rows = []
    for outtype in args.types:
        written = gguf_export.write(run / "merged", run / f"bench-{outtype}.gguf", outtype)
        start = time.perf_counter()
        gguf_llama_cpp.open_gguf(written.path).close()
        load_s = time.perf_counter() - start
        result = gguf_llama_cpp.compare(run / "merged", written.path, texts)
        rows.append({"type": outtype, "size_mb": written.size_mb, "write_s": written.seconds, "load_s": load_s,
                     **result})
        written.path.unlink()
    print(f"\nGGUF in llama.cpp (llama-cpp-python), {run.name}/merged, {len(texts)} held-out rows, "
          f"{rows[0]['positions']} positions")
    print("| type | file | write | llama.cpp load | same ids | same greedy token | where clear of rounding "
          "| largest logit difference (largest logit) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['type']} | {r['size_mb']:.1f} MB | {r['write_s']:.1f} s | {r['load_s']:.2f} s | "
              f"{sum(r['same_ids'])}/{len(r['same_ids'])} | {r['same_next_token']:.1%} | "
              f"{r['decided_same']}/{r['decided_positions']} | {r['max_abs_logit_diff']:.3g} ({r['logit_scale']:.3g}) |")
    if args.json:
        args.json.write_text(json.dumps({"run": run.name, "texts": len(texts), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
