"""GPU training speed and memory: the post's settings, the workbook's speed options, raw unsloth, and
transformers + peft + bitsandbytes, side by side on one card.

    python bench/gpu_training.py [--size 8b|small] [--steps 12] [--scenario seed oig] [--stacks ...]
                                 [--profile STACK SCENARIO] [--fast-set NAME VALUE] [--json FILE]
                                 [--equal-tokens-steps 48 [--equal-tokens-learning-rates LR ...]]
    make bench

Makes a random-weight checkpoint of the Llama-3.1-8B shape saved *pre-quantized* (nf4, as the post's
`unsloth/Meta-Llama-3.1-8B-bnb-4bit` is stored; `--size small`: a small bf16 one quantized on load) and
an OIG `unified_chip2`-format file of 210,289 rows (fixtures.synthetic), then trains N steps through each
stack, every stack in its own process (unsloth patches transformers on import), one after another on the
same card. LoRA r=16 alpha=32 on the seven projections, batch 2 x accumulation 4, adamw_8bit, bf16.
Random weights say nothing about quality; speed and memory are those of the real model.

Scenarios:
- seed: every row 2,048 tokens (the post's max_seq_length, full rows).
- oig:  rows of the OIG-format file, tokenized as step 3 does with dataset_format text (the text, then
        EOS; cut at 2,048), in a fixed random order: about 195 tokens a row.
Stacks: the workbook with the post's settings and with `rows_per_pass`, checkpointing auto and the fast
config (configs/llama31-8b-oig-fast.yaml's differences from the post's; also without the workbook's
packed-row attention route, WORKBOOK_PACKED_VARLEN=0), raw unsloth as its notebooks
write it, and HF + peft + bnb. Figures: median step time after the warm-up steps (torch.cuda.synchronize
around each step), tokens/s over the measured steps (real tokens, padding left out), peak
torch.cuda.max_memory_reserved(), the per-step losses and, on oig, the held-out loss of 64 other rows.
Printed: each scenario's table with ratios to the post's settings and to raw unsloth on full rows; the
post's settings against `rows_per_pass 8` on the same rows (largest per-step loss difference, the
adapters' gap); with `--equal-tokens-steps N`, the held-out loss of the post's settings after N steps
and of the fast config after as many tokens (`--equal-tokens-learning-rates`: at each of these); with
`--profile STACK SCENARIO`, where one step's time goes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # helpers, fixtures and bench.step_profile, run from anywhere
SIZES = ("8b", "small")  # the post's model's shape (fixtures.synthetic.LLAMA31_8B), and a small one for a quick check
SMALL = dict(hidden_size=1024, num_hidden_layers=8, intermediate_size=3584, num_attention_heads=16,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
SEED = dict(lora_r=16, lora_alpha=32, per_device_train_batch_size=2, gradient_accumulation_steps=4,
            learning_rate=5e-5, weight_decay=0.01, optim="adamw_8bit", lr_scheduler_type="linear", seed=3407,
            max_seq_length=2048)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
def fast_config(changes=(), flag: str = "--fast-set") -> dict:
    """What configs/llama31-8b-oig-fast.yaml changes from the post's configs/llama31-8b-oig.yaml, with
    `changes` ((name, text) pairs from --fast-set, read as the runner's `-p` reads them) on top."""
    from helpers.params import ParameterError, check_value
    from tools.config import load as load_config
    from tools.run import parse_value

    post, fast = (load_config(REPO / "configs" / f"{n}.yaml") for n in ("llama31-8b-oig", "llama31-8b-oig-fast"))
    unknown = [k for k, _ in changes if k not in fast]
    if unknown:
        sys.exit(f"{flag}: {', '.join(unknown)} is not a parameter of configs/llama31-8b-oig-fast.yaml")
    changed = {k: parse_value(v) for k, v in changes}  # 5e-05 a number, as with -p (YAML alone: a string)
    try:
        for k, v in changed.items():
            check_value(k, v)
    except ParameterError as e:
        sys.exit(f"{flag}: {e}")
    return {**{k: v for k, v in fast.items() if post.get(k) != v}, **changed}


POST = "workbook, the post's settings"
RPP8 = "workbook, rows_per_pass 8"
FAST = "workbook, fast config"
FAST_SEGMENTS = "workbook, fast config, unsloth's per-segment attention"
RAW = "raw unsloth"
HF = "HF + peft + bnb nf4 + TRL"
# workbook stack -> (scenarios, parameters over the post's); the others are written out by hand
WORKBOOK = {
    POST: (("oig",), {}),
    RPP8: (("oig",), {"rows_per_pass": 8}),
    "workbook, rows_per_pass auto": (("seed", "oig"), {"rows_per_pass": "auto"}),
    "workbook, checkpointing auto": (("seed",), {"use_gradient_checkpointing": "auto"}),
    "workbook, checkpointing auto + rows_per_pass auto": (("seed",), {"use_gradient_checkpointing": "auto",
                                                                       "rows_per_pass": "auto"}),
    FAST: (("oig",), None),  # fast_config(), read when it runs
    FAST_SEGMENTS: (("oig",), None),  # the same without helpers.model.packed_attention's route
}
STACK_ENV = {FAST_SEGMENTS: {"WORKBOOK_PACKED_VARLEN": "0"}}
STACKS = {**{k: v[0] for k, v in WORKBOOK.items()}, RAW: ("seed", "oig"), HF: ("seed",)}
HELD_OUT = 64


def work_files(folder: Path, size: str) -> tuple[Path, Path]:
    return folder / (f"llama-{size}" + ("-bnb-4bit" if size == "8b" else "")), folder / "unified_chip2.jsonl"


def make_fixture(folder: Path, size: str) -> tuple[Path, Path]:
    """The checkpoint (8b: saved pre-quantized, scratch bf16 weights in /dev/shm when it has room) and the
    OIG-format file, both kept in `folder` and reused."""
    import shutil

    import torch

    from fixtures import synthetic

    ckpt, data = work_files(folder, size)
    folder.mkdir(parents=True, exist_ok=True)
    if size == "8b":
        shm = Path("/dev/shm")
        scratch = (shm if shm.is_dir() and shutil.disk_usage(shm).free > 24 * 2**30 else folder) / "bench-bf16"
        synthetic.prequantized_llama(ckpt, scratch, **synthetic.LLAMA31_8B)
    elif not (ckpt / "config.json").exists():
        synthetic.random_llama(ckpt, device="cuda", dtype=torch.bfloat16, **SMALL)
    if not data.exists():
        synthetic.oig_file(data)
    return ckpt, data


@functools.lru_cache(maxsize=1)
def shuffled_lines(data: Path) -> list[str]:
    """The OIG-format file's lines in a fixed random order (read once: training and held-out rows both
    come from it)."""
    lines = data.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    return lines


def oig_rows(data: Path, tokenizer, n: int, offset: int = 0) -> list[list[int]]:
    """`n` rows of the OIG-format file in a fixed random order (from `offset` on), tokenized as step 3
    tokenizes dataset_format text: the text, then EOS, cut at max_seq_length."""
    texts = [json.loads(line)["text"] for line in shuffled_lines(data)[offset:offset + n]]
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [(row + [tokenizer.eos_token_id])[:SEED["max_seq_length"]] for row in ids]


def rows_for(scenario: str, data: Path, tokenizer, n: int) -> list[list[int]]:
    if scenario == "seed":  # random ids below the fixture tokenizer's 600
        rng = random.Random(0)
        return [[rng.randrange(3, 600) for _ in range(SEED["max_seq_length"])] for _ in range(n)]
    return oig_rows(data, tokenizer, n, offset=HELD_OUT)


def trainer_kwargs(steps: int) -> dict:
    import torch

    return dict(per_device_train_batch_size=SEED["per_device_train_batch_size"],
                gradient_accumulation_steps=SEED["gradient_accumulation_steps"], warmup_steps=0,
                max_steps=steps, learning_rate=SEED["learning_rate"], weight_decay=SEED["weight_decay"],
                optim=SEED["optim"], lr_scheduler_type=SEED["lr_scheduler_type"], seed=SEED["seed"],
                logging_steps=1, bf16=torch.cuda.is_bf16_supported(), fp16=not torch.cuda.is_bf16_supported(),
                max_length=SEED["max_seq_length"], output_dir="/tmp/bench-out", save_strategy="no",
                report_to="none", disable_tqdm=True)


def build_workbook(ckpt: Path, steps: int, overrides: dict, run_dir: Path):
    """The workbook's stack: notebooks 01, 02 and 04 run (their cells) on the checkpoint, then 02's LoRA
    loaded as 05 loads it (fixtures.training); returns the model, tokenizer, 04's SFTConfig and the
    differences 02 and 04 reported."""
    import torch

    from fixtures import training

    values = {**SEED, "model_name": str(ckpt), "load_in_4bit": True, "use_gradient_checkpointing": "unsloth",
              "max_steps": steps, "warmup_steps": 0, "run_dir": str(run_dir), "save_steps": 10**6, **overrides}
    ns = training.prepared(values)
    m, tok, base = training.lora_model(run_dir)
    assert base.backend == "unsloth" or not torch.cuda.is_available(), base.backend
    kwargs = {**ns["args"].to_dict(), "logging_steps": 1, "disable_tqdm": True, "save_strategy": "no"}
    from helpers.model import loading

    return m, tok, kwargs, loading.record(run_dir)["differences"] + ns["differences"]


def build_unsloth(ckpt: Path, steps: int):
    from unsloth import FastLanguageModel

    m, tok = FastLanguageModel.from_pretrained(model_name=str(ckpt), max_seq_length=SEED["max_seq_length"],
                                               dtype=None, load_in_4bit=True)
    m = FastLanguageModel.get_peft_model(m, r=SEED["lora_r"], target_modules=TARGETS, lora_alpha=SEED["lora_alpha"],
                                         lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
                                         random_state=3407, max_seq_length=SEED["max_seq_length"],
                                         use_rslora=False, loftq_config=None)
    return m, tok, trainer_kwargs(steps)


def build_hf(ckpt: Path, steps: int):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    m = AutoModelForCausalLM.from_pretrained(ckpt, quantization_config=quant, dtype=dtype, device_map={"": 0},
                                             attn_implementation="sdpa")
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=True,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    m = get_peft_model(m, LoraConfig(r=SEED["lora_r"], lora_alpha=SEED["lora_alpha"], lora_dropout=0,
                                     target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    kwargs = trainer_kwargs(steps)
    kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    return m, AutoTokenizer.from_pretrained(ckpt), kwargs


def lora_weights(m) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in m.named_parameters() if "lora_" in k}


def child(stack: str, scenario: str, ckpt: Path, data: Path, steps: int, warmup: int, profile: bool,
          tokens: int | None, out_dir: Path, fast_set=()) -> dict:
    """Train `steps` steps (or until `tokens` tokens) of one stack and return its figures."""
    import torch

    if stack != HF and torch.cuda.is_available():  # (a CPU runs this only to check the bench itself)
        import unsloth  # noqa: F401  (before transformers)
    from datasets import Dataset
    from transformers import TrainerCallback

    note = ""
    if stack in WORKBOOK:
        overrides = WORKBOOK[stack][1] if WORKBOOK[stack][1] is not None else fast_config(fast_set)
        m, tok, kwargs, differences = build_workbook(ckpt, steps, overrides, out_dir / f"run-{slug(stack, scenario)}")
        note = "; ".join(f"{d[0]}={d[2]} ({d[3]})" for d in differences)
    elif stack == RAW:
        m, tok, kwargs = build_unsloth(ckpt, steps)
    else:
        m, tok, kwargs = build_hf(ckpt, steps)
    per_step = kwargs["per_device_train_batch_size"] * kwargs["gradient_accumulation_steps"]
    # packing needs more rows for the same steps: ~10 OIG rows fill a 2,048-token row
    rows = rows_for(scenario, data, tok, (steps + 1) * per_step * (12 if kwargs.get("packing") else 1))
    before = lora_weights(m)

    from helpers.training.loop import TokenCount

    times, step_tokens, found = [], [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.start, self.tokens = time.perf_counter(), count.tokens

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            step_tokens.append(count.tokens - self.tokens)
            if tokens is not None and count.tokens >= tokens:
                control.should_training_stop = True

    callbacks = [Clock()]
    if profile:
        from bench.step_profile import profiled_step

        # the last step is profiled and left out of the timing; the run (schedule, rows, held-out loss)
        # stays the one an unprofiled run trains
        callbacks.append(profiled_step(steps, found))
    train = Dataset.from_dict({"input_ids": rows})
    from trl import SFTConfig, SFTTrainer  # as 05 builds it (the workbook: with 04's SFTConfig)

    t = SFTTrainer(model=m, args=SFTConfig(**kwargs), train_dataset=train, processing_class=tok, callbacks=callbacks)
    count = TokenCount(t)
    torch.cuda.reset_peak_memory_stats()
    t.train()
    timed_steps = steps - 1 if profile else steps
    measured = slice(warmup, timed_steps) if len(times) > warmup else slice(0, timed_steps)  # or cut short by `tokens`
    result = {"stack": stack, "scenario": scenario, "steps": len(times[:steps]), "note": note,
              "rows_a_pass": kwargs["per_device_train_batch_size"], "passes_a_step": kwargs["gradient_accumulation_steps"],
              "median_step_s": statistics.median(times[measured]),
              "tokens_per_s": sum(step_tokens[measured]) / sum(times[measured]),
              "tokens_per_step": statistics.median(step_tokens[measured]), "train_tokens": count.tokens,
              "losses": [h["loss"] for h in t.state.log_history if "loss" in h][:steps],
              "step_s": times[:steps], "step_tokens": step_tokens[:steps],
              "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "gpu": torch.cuda.get_device_name(0)}
    if scenario == "oig":
        from helpers.evaluation.loss import mean_token_loss

        result["held_out_loss"] = mean_token_loss(m, Dataset.from_dict({"input_ids": oig_rows(data, tok, HELD_OUT)}), 8)
    if "profile" in found:
        result["profile"] = found["profile"]
    after = lora_weights(m)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: after[k] - before[k] for k in after}, out_dir / f"{slug(stack, scenario)}.pt")
    return result


def slug(stack: str, scenario: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in f"{stack}-{scenario}")


def adapter_gap(out_dir: Path, a: dict, b: dict) -> float:
    """|update a - update b| / |update a| over all LoRA weights: how far two trainings' adapters are."""
    import torch

    ua, ub = (torch.load(out_dir / f"{slug(r['stack'], r['scenario'])}.pt") for r in (a, b))
    num = sum(float(torch.linalg.vector_norm(ua[k] - ub[k]) ** 2) for k in ua)
    den = sum(float(torch.linalg.vector_norm(ua[k]) ** 2) for k in ua)
    return (num / den) ** 0.5


def table(results: list[dict], scenario: str, full_rows: dict | None) -> str:
    rows = [r for r in results if r["scenario"] == scenario and not r.get("equal_tokens")]
    post = next((r for r in rows if r["stack"] == POST), None)
    out = ["| stack | rows a pass x passes | tokens/s | median step (s) | peak reserved GiB | vs the post's settings "
           "| vs raw unsloth, full rows |" + (" held-out loss |" if scenario == "oig" else ""),
           "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if scenario == "oig" else "")]
    for r in rows:
        vs_post = f"{r['tokens_per_s'] / post['tokens_per_s']:.2f}x" if post else "-"
        vs_full = f"{r['tokens_per_s'] / full_rows['tokens_per_s']:.2f}x" if full_rows else "-"
        loss = f" {r['held_out_loss']:.4f} |" if "held_out_loss" in r else ""
        out.append(f"| {r['stack']} | {r['rows_a_pass']} x {r['passes_a_step']} | {r['tokens_per_s']:,.0f} | "
                   f"{r['median_step_s']:.3f} | {r['peak_reserved_gib']:.2f} | {vs_post} | {vs_full} |{loss}")
    return "\n".join(out)


def comparisons(results: list[dict], out_dir: Path) -> dict:
    """The post's settings against rows_per_pass 8 on the same rows, and the equal-token held-out losses."""
    found = {}
    by = {(r["stack"], r["scenario"], bool(r.get("equal_tokens"))): r for r in results}
    post, rpp = by.get((POST, "oig", False)), by.get((RPP8, "oig", False))
    if post and rpp:
        diffs = [abs(a - b) / abs(a) for a, b in zip(post["losses"], rpp["losses"])]
        found["same_rows"] = {"steps": len(diffs), "largest_loss_difference": max(diffs),
                              "adapter_gap": adapter_gap(out_dir, post, rpp),
                              "speedup": rpp["tokens_per_s"] / post["tokens_per_s"]}
    post = by.get((RPP8, "oig", True))
    fast = [r for r in results if r["stack"] == FAST and r.get("equal_tokens")]
    if post and fast:
        found["equal_tokens"] = [{"post_steps": post["steps"], "post_tokens": post["train_tokens"],
                                  "post_held_out_loss": post["held_out_loss"], "fast_steps": r["steps"],
                                  "fast_tokens": r["train_tokens"], "fast_held_out_loss": r["held_out_loss"],
                                  "fast_learning_rate": r.get("learning_rate")} for r in fast]
    return found


def save(args, results: list[dict], extra: dict) -> None:
    import torch

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"size": args.size, "steps": args.steps, "warmup": args.warmup,
                                     "fast_set": args.fast_set, "gpu": torch.cuda.get_device_name(0),
                                     "results": results, **extra},
                                    indent=2) + "\n")


def run_child(args, stack: str, scenario: str, *extra: str) -> dict | None:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--size", args.size, "--steps", str(args.steps),
                          "--warmup", str(args.warmup), "--work", str(args.work), "--child", stack, scenario, *extra,
                          *(a for pair in args.fast_set for a in ("--fast-set", *pair))],
                         capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
                              **STACK_ENV.get(stack, {})})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        print(f"{scenario} / {stack}: FAILED\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}", flush=True)
        return None
    r = json.loads(lines[-1][len("RESULT "):])
    print(f"{scenario} / {stack}: {r['rows_a_pass']} x {r['passes_a_step']}, {r['tokens_per_s']:,.0f} tokens/s, "
          f"{r['median_step_s']:.3f} s a step, {r['peak_reserved_gib']:.2f} GiB ({time.perf_counter() - t0:.0f} s) "
          f"{r['note']}", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="8b")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scenario", nargs="+", choices=["seed", "oig"], default=["seed", "oig"])
    ap.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=[s for s in STACKS if s != HF])
    ap.add_argument("--profile", nargs=2, action="append", default=[], metavar=("STACK", "SCENARIO"),
                    help="also profile this stack's last step (left out of its timing)")
    ap.add_argument("--equal-tokens-steps", type=int, default=0,
                    help="held-out loss of the post's settings after N steps, and of the fast config after as many tokens")
    ap.add_argument("--equal-tokens-learning-rates", nargs="+", type=float, default=[], metavar="LR",
                    help="with --equal-tokens-steps: the fast config's run once at each of these learning rates")
    ap.add_argument("--fast-set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="change a parameter of the fast config's stacks (e.g. learning_rate 1.6e-4)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "gpu_training.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-checkpoints"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    fast_config(args.fast_set)  # a misspelt --fast-set or a bad rate stops here, before the fixture is made
    for lr in args.equal_tokens_learning_rates:
        fast_config([*args.fast_set, ("learning_rate", str(lr))], flag="--equal-tokens-learning-rates")

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu_training.py measures GPU kernels (unsloth, bitsandbytes) and needs an NVIDIA GPU; "
                 "none is visible here. On a CPU, bench/cpu_training.py measures the CPU path.")
    ckpt, data = work_files(args.work, args.size)
    adapters = args.work / "adapters"
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], ckpt, data, args.steps, args.warmup,
                                           args.child_profile, args.child_tokens, adapters, args.fast_set)))
        return
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                    "from bench.gpu_training import make_fixture; make_fixture(Path(sys.argv[2]), sys.argv[3])",
                    str(REPO), str(args.work), args.size], cwd=REPO, check=True)  # nothing of it stays on the card
    print(f"fixture {ckpt} and {data.name} ready ({time.perf_counter() - start:.0f} s)", flush=True)
    results, extra = [], {}
    profiles = {tuple(p) for p in args.profile}
    for scenario in args.scenario:
        for stack in args.stacks:
            if scenario in STACKS[stack]:
                r = run_child(args, stack, scenario, *(["--child-profile"] if (stack, scenario) in profiles else []))
                if r:
                    results.append(r)
                    save(args, results, extra)  # after every stack, so a cut-off run keeps what it measured
    for stack, scenario in sorted(profiles - {(s, sc) for s in args.stacks for sc in args.scenario if sc in STACKS[s]}):
        r = run_child(args, stack, scenario, "--child-profile")
        if r:
            results.append(r)
    if args.equal_tokens_steps:
        longer = argparse.Namespace(**{**vars(args), "steps": args.equal_tokens_steps})
        base = run_child(longer, RPP8, "oig")  # the post's results (same rows, same loss), in less time
        if base:
            results.append({**base, "equal_tokens": True})
            save(args, results, extra)
            # a step of the fast config carries ~10x the post's rows, so as many tokens are fewer updates:
            # the learning rates to try for that (the config's own, when none is given)
            for lr in args.equal_tokens_learning_rates or [None]:
                at = longer if lr is None else argparse.Namespace(
                    **{**vars(longer), "fast_set": [*longer.fast_set, ("learning_rate", str(lr))]})
                fast = run_child(at, FAST, "oig", "--child-tokens", str(base["train_tokens"]))
                if fast:
                    results.append({**fast, "equal_tokens": True, "learning_rate": lr})
                    save(args, results, extra)
    extra = comparisons(results, adapters)
    save(args, results, extra)
    full = next((r for r in results if r["stack"] == RAW and r["scenario"] == "seed"), None)
    print(f"\nGPU: {torch.cuda.get_device_name(0)}; shape {args.size}, stored in 4-bit; {args.steps} steps, median "
          f"after {args.warmup} warm-up; post's settings: batch 2 x accum 4, LoRA r16/a32 on 7 projections, adamw_8bit"
          + "".join(f"; fast config with {k}={v}" for k, v in args.fast_set))
    for scenario in args.scenario:
        print(f"\n{scenario}:\n" + table(results, scenario, full))
    if "same_rows" in extra:
        e = extra["same_rows"]
        print(f"\nthe post's settings vs rows_per_pass 8, the same rows in the same order, {e['steps']} steps: "
              f"largest per-step loss difference {e['largest_loss_difference']:.2e} (relative), adapter gap "
              f"{e['adapter_gap']:.2e}; {e['speedup']:.2f}x the tokens/s")
    for e in extra.get("equal_tokens", []):
        lr = "" if e["fast_learning_rate"] is None else f" at learning_rate {e['fast_learning_rate']}"
        print(f"held-out loss after the same tokens: the post's settings {e['post_held_out_loss']:.4f} "
              f"({e['post_steps']} steps, {e['post_tokens']:,} tokens), the fast config{lr} "
              f"{e['fast_held_out_loss']:.4f} ({e['fast_steps']} steps, {e['fast_tokens']:,} tokens)")
    for r in results:
        if "profile" in r:
            from bench.step_profile import table as profile_table

            print(f"\nprofile: {r['stack']}, {r['scenario']}, one step ({r['rows_a_pass']} x {r['passes_a_step']}):\n"
                  + profile_table(r["profile"]))


if __name__ == "__main__":
    main()
